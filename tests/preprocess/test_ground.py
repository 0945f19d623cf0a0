"""RANSAC ground removal: synthetic planes with known truth, the numpy reference, bad input, CPU/GPU agreement."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.backend import gpu_status
from shared.errors import BackendUnavailable, ConfigError, InputError
from preprocess import ground as G
from preprocess.ground import GroundConfig, fit_ground, fit_plane_reference


def _tilted_scene(seed=0, tilt_deg=3.0, azimuth_deg=30.0, n_ground=6000, n_out=1500, noise=0.02, radius=40.0):
    """Points on a plane through (0, 0, -1.8) whose normal is tilted by tilt_deg, plus outliers 0.5-3 m above."""
    rng = np.random.default_rng(seed)
    t, a = math.radians(tilt_deg), math.radians(azimuth_deg)
    nrm = np.array([math.sin(t) * math.cos(a), math.sin(t) * math.sin(a), math.cos(t)])
    d = 1.8 * nrm[2]
    r = radius * np.sqrt(rng.uniform(0.02, 1, n_ground + n_out))
    phi = rng.uniform(-np.pi, np.pi, n_ground + n_out)
    x, y = r * np.cos(phi), r * np.sin(phi)
    z_plane = -(nrm[0] * x + nrm[1] * y + d) / nrm[2]
    off = np.concatenate([rng.normal(0, noise, n_ground), rng.uniform(0.5, 3.0, n_out)])
    xyz = np.stack([x, y, z_plane + off / nrm[2]], axis=1).astype(np.float32)
    truth = np.arange(n_ground + n_out) < n_ground
    perm = rng.permutation(len(xyz))
    return xyz[perm], truth[perm], np.append(nrm, d)


def _angle_deg(n1, n2):
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(n1[:3], n2[:3]))))))


@pytest.mark.parametrize(
    "field,value",
    [("distance_threshold", 0), ("distance_threshold", float("nan")), ("max_normal_angle_deg", 95),
     ("iterations", 0), ("n_sectors", 1.5), ("ring_edges", (10.0, 5.0)), ("min_patch_points", 2),
     ("patch_low_quantile", 1.0), ("min_fit_range", -1), ("max_patch_tilt_deg", 0), ("seed", "a")],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError) as exc:
        GroundConfig(**{field: value})
    assert exc.value.field == field


def test_config_derived_values():
    cfg = GroundConfig(n_sectors=6, ring_edges=(5.0, 10.0))
    assert cfg.n_rings == 3 and cfg.n_patches == 18
    assert cfg.min_normal_z == pytest.approx(math.cos(math.radians(10)))


@pytest.mark.parametrize("seed,tilt", [(0, 0.0), (1, 3.0), (2, 7.0)])
def test_recovers_synthetic_plane(seed, tilt):
    xyz, truth, plane = _tilted_scene(seed=seed, tilt_deg=tilt)
    res = fit_ground(xyz)
    assert res.global_fitted
    assert _angle_deg(res.global_plane, plane) < 1.0
    assert abs(res.global_plane[3] - plane[3]) < 0.05
    # every fitted patch plane recovers the normal too
    for pl in res.planes[res.fitted]:
        assert _angle_deg(pl, plane) < 1.0
        assert pl[2] > 0 and np.linalg.norm(pl[:3]) == pytest.approx(1.0)
    recall = (res.mask & truth).sum() / truth.sum()
    false_pos = (res.mask & ~truth).sum() / (~truth).sum()
    assert recall > 0.99
    assert false_pos < 0.01
    # height is the signed distance to the point's patch plane
    pl = res.planes[res.patch]
    np.testing.assert_allclose(res.height, (xyz.astype(np.float64) * pl[:, :3]).sum(1) + pl[:, 3], atol=1e-4)


def test_steep_plane_is_not_ground():
    """A wall-like slope of 30 degrees is outside the 10-degree cone: no plane fitted, fallback used."""
    xyz, _, _ = _tilted_scene(tilt_deg=30.0, n_out=0)
    res = fit_ground(xyz)
    assert not res.global_fitted
    np.testing.assert_allclose(res.global_plane, [0, 0, 1, GroundConfig().sensor_height])
    assert not res.fitted.any()


def test_patches_follow_a_slope_change():
    """Flat road to 20 m, then rising at 6 %: one plane cannot hold both, the patches do."""
    rng = np.random.default_rng(5)
    r = 50 * np.sqrt(rng.uniform(0.01, 1, 12000))
    phi = rng.uniform(-np.pi, np.pi, len(r))
    x, y = r * np.cos(phi), r * np.sin(phi)
    z = -1.8 + 0.06 * np.clip(x - 20, 0, None) + rng.normal(0, 0.02, len(r))
    res = fit_ground(np.stack([x, y, z], 1).astype(np.float32))
    assert res.mask.mean() > 0.97
    single = np.abs(z + 1.8) <= 0.2  # what one level plane would take
    assert single.mean() < 0.85


def test_ransac_kernel_matches_numpy_reference():
    xyz, _, _ = _tilted_scene(seed=3, n_ground=800, n_out=300)
    pts = xyz.astype(np.float64)
    u = np.random.default_rng(0).random((60, 3))
    idx = np.arange(len(pts))
    best = np.empty(4)
    sx, sy, sz = (np.ascontiguousarray(pts[:, k]) for k in range(3))
    cnt = G._ransac(pts, idx, len(pts), sx, sy, sz, len(pts), u, 0.2, math.cos(math.radians(10)), np.zeros(4), 0.0,
                    -1.0, 0.0, 0.0, best)
    ref, ref_cnt = fit_plane_reference(pts, u, 0.2, math.cos(math.radians(10)))
    assert cnt == ref_cnt
    np.testing.assert_allclose(best, ref, atol=1e-9)


def test_deterministic_and_seeded():
    xyz, truth, _ = _tilted_scene(seed=4)
    a = fit_ground(xyz, GroundConfig(seed=7))
    b = fit_ground(xyz, GroundConfig(seed=7))
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.planes, b.planes)
    c = fit_ground(xyz, GroundConfig(seed=8))
    assert (c.mask == a.mask).mean() > 0.99


def test_non_finite_points_are_isolated():
    xyz, _, _ = _tilted_scene(seed=6, n_ground=3000, n_out=500)
    bad = xyz.copy()
    rows = [0, 10, 500, 2000]
    bad[rows[0], 0] = np.nan
    bad[rows[1], 2] = np.inf
    bad[rows[2], 1] = -np.inf
    bad[rows[3]] = np.nan
    res = fit_ground(bad)
    keep = np.ones(len(xyz), bool)
    keep[rows] = False
    ref = fit_ground(xyz[keep])
    assert not res.mask[rows].any()
    assert np.isnan(res.height[rows]).all()
    assert (res.patch[rows] == -1).all()
    np.testing.assert_array_equal(res.mask[keep], ref.mask)
    np.testing.assert_array_equal(res.planes, ref.planes)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_sweeps_are_defined(n):
    xyz = np.zeros((n, 3), np.float32) + np.array([5.0, 1.0, -1.8], np.float32) * np.arange(1, n + 1)[:, None]
    res = fit_ground(xyz)
    assert res.mask.shape == (n,) and res.height.shape == (n,) and res.patch.shape == (n,)
    assert not res.global_fitted
    assert res.planes.shape == (GroundConfig().n_patches, 4)


def test_degenerate_point_sets():
    same = np.tile(np.array([[5.0, 5.0, -1.8]], np.float32), (100, 1))
    res = fit_ground(same)
    assert not res.global_fitted
    assert res.mask.all()  # on the fallback plane z = -1.84, within 0.2 m
    line = np.stack([np.linspace(3, 30, 200), np.zeros(200), np.full(200, -1.8)], 1).astype(np.float32)
    res = fit_ground(line)
    assert not res.global_fitted and not res.fitted.any()


def test_all_ground_sweep():
    xyz, truth, _ = _tilted_scene(seed=9, n_out=0, noise=0.01)
    res = fit_ground(xyz)
    assert res.mask.all()


def test_below_ground_points():
    xyz, _, _ = _tilted_scene(seed=10, tilt_deg=0.0, n_out=0)
    low = np.array([[10.0, 3.0, -3.0]], np.float32)
    pts = np.concatenate([xyz, low])
    assert fit_ground(pts).mask[-1]
    assert not fit_ground(pts, GroundConfig(below_is_ground=False)).mask[-1]


def test_bad_shapes_and_backend():
    with pytest.raises(InputError):
        fit_ground(np.zeros((10, 2), np.float32))
    with pytest.raises(InputError):
        fit_ground(np.zeros(10, np.float32))
    with pytest.raises(ConfigError):
        fit_ground(np.zeros((10, 3), np.float32), backend="tpu")
    if not gpu_status()[0]:
        with pytest.raises(BackendUnavailable):
            fit_ground(np.zeros((10, 3), np.float32), backend="gpu")


def test_extra_columns_ignored():
    xyz, _, _ = _tilted_scene(seed=11, n_ground=2000, n_out=300)
    five = np.concatenate([xyz, np.ones((len(xyz), 2), np.float32)], 1)
    np.testing.assert_array_equal(fit_ground(five).mask, fit_ground(xyz).mask)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    ok, why = gpu_status()
    if not ok:
        pytest.skip(why)
    for seed in (0, 1):
        xyz, _, _ = _tilted_scene(seed=seed, tilt_deg=2.0)
        cpu = fit_ground(xyz, backend="cpu")
        gpu = fit_ground(xyz, backend="gpu")
        assert gpu.global_fitted == cpu.global_fitted
        np.testing.assert_allclose(gpu.global_plane, cpu.global_plane, atol=1e-6)
        np.testing.assert_array_equal(gpu.fitted, cpu.fitted)
        np.testing.assert_allclose(gpu.planes, cpu.planes, atol=1e-6)
        assert (gpu.mask == cpu.mask).mean() > 0.999


class _NumpyAsCupy:
    """numpy standing in for cupy (asnumpy = asarray): runs the GPU path's logic on the CPU."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def asnumpy(a):
        return np.asarray(a)

    @staticmethod
    def argsort(a, axis=-1):
        return np.argsort(a, axis=axis, kind="stable")  # cupy's sorts are always stable


@pytest.mark.parametrize("seed,tilt", [(0, 2.0), (1, 6.0)])
def test_gpu_path_logic_matches_cpu_with_numpy_standin(monkeypatch, seed, tilt):
    """The CuPy code path, run with numpy in place of cupy, gives the CPU result (same hypotheses)."""
    import sys

    monkeypatch.setitem(sys.modules, "cupy", _NumpyAsCupy())
    xyz, _, _ = _tilted_scene(seed=seed, tilt_deg=tilt)
    cfg = GroundConfig()
    cpu = fit_ground(xyz, cfg)
    edges = np.asarray(cfg.ring_edges, dtype=np.float64)
    pts, _, patch = G._finite_patches(xyz.astype(np.float64), G._sector_bounds(cfg.n_sectors), edges * edges)
    ug, up = G._hypotheses(cfg, cfg.n_patches)
    gplane, gfit, planes, fitted, height, mask = G._fit_ground_gpu(
        pts, patch, cfg, ug, up, np.array([0.0, 0.0, 1.0, cfg.sensor_height]))
    assert gfit == cpu.global_fitted
    np.testing.assert_allclose(gplane, cpu.global_plane, atol=1e-9)
    np.testing.assert_array_equal(patch, cpu.patch)
    np.testing.assert_array_equal(fitted, cpu.fitted)
    np.testing.assert_allclose(planes, cpu.planes, atol=1e-9)
    np.testing.assert_array_equal(mask, cpu.mask)


def test_a_raised_surface_filling_a_patch_is_not_ground():
    """A flat surface 0.8 m above the road filling a whole patch (a car roof or a truck bed next to the sensor,
    the road under it unseen) is not ground: the patch's reference may follow the terrain by at most
    max_patch_step (0.3 m) and its hypotheses stay within patch_band (0.3 m) of it. With the earlier 2.0 m /
    0.5 m the patch plane jumped onto the surface."""
    rng = np.random.default_rng(4)
    r = 40 * np.sqrt(rng.uniform(0.01, 1, 20000))
    phi = rng.uniform(-np.pi, np.pi, len(r))
    cfg = GroundConfig()
    sector = 2 * np.pi / cfg.n_sectors
    in_patch = (r >= cfg.ring_edges[0]) & (r < cfg.ring_edges[1]) & (phi >= -np.pi + 3 * sector) \
        & (phi < -np.pi + 4 * sector)
    z = -1.8 + np.where(in_patch, 0.8, 0.0) + rng.normal(0, 0.02, len(r))
    xyz = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1).astype(np.float32)
    res = fit_ground(xyz, cfg)
    assert res.mask[~in_patch].mean() > 0.99
    assert res.mask[in_patch].mean() < 0.01
    old = fit_ground(xyz, GroundConfig(patch_band=0.5, max_patch_step=2.0))
    assert old.mask[in_patch].mean() > 0.9
