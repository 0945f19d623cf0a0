"""The per-sweep pipeline: config overrides, composition of the stages, bad input, real fixtures."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from preprocess.augment import AugmentConfig, sample_views
from preprocess.cluster import ClusterConfig, cluster_nonground, reattach_low_points
from preprocess.ground import fit_ground
from preprocess.pooling import pool_regions
from preprocess.project import ProjectConfig, project_points
from preprocess.sweep import STAGES, SweepConfig, parse_assignments, process_sweep
from shared.errors import ConfigError, InputError

N015 = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951"


# ---------------------------------------------------------------------------------------------------------
# configuration


def test_from_overrides_parses_and_converts():
    cfg = SweepConfig.from_overrides([
        "cluster.eps=0.5", "cluster.min_samples=7", "cluster.dims=xyz", "ground.below_is_ground=false",
        "augment.scale=[0.8, 1.2]", "augment.rotation_deg=-45,45", "project.min_depth=2",
        "ground.ring_edges=[10, 20]",
    ])
    assert cfg.cluster == ClusterConfig(eps=0.5, min_samples=7, dims="xyz")
    assert cfg.ground.below_is_ground is False
    assert cfg.augment.scale == (0.8, 1.2) and cfg.augment.rotation_deg == (-45.0, 45.0)
    assert cfg.project == ProjectConfig(min_depth=2.0) and isinstance(cfg.project.min_depth, float)
    assert cfg.ground.ring_edges == (10.0, 20.0)
    # untouched sections keep their defaults; typed values work too
    assert cfg.pooling == SweepConfig().pooling
    assert SweepConfig.from_overrides({"cluster.eps": 1.0}).cluster.eps == 1.0
    # overriding on top of a base
    again = SweepConfig.from_overrides(["cluster.min_samples=3"], base=cfg)
    assert again.cluster == ClusterConfig(eps=0.5, min_samples=3, dims="xyz")


@pytest.mark.parametrize("item,field,why", [
    ("foo.bar=1", "foo.bar", "unknown key"),
    ("eps=1", "eps", "unknown key"),
    ("cluster.epss=1", "cluster.epss", "unknown field of cluster"),
    ("cluster.eps=-1", "cluster.eps", "> 0"),
    ("cluster.eps=abc", "cluster.eps", "expected a number"),
    ("cluster.min_samples=2.5", "cluster.min_samples", "expected an integer"),
    ("cluster.dims=xz", "cluster.dims", "xy"),
    ("ground.below_is_ground=maybe", "ground.below_is_ground", "boolean"),
    ("augment.scale=[1.2, 0.8]", "augment.scale", "low must be <= high"),
    ("augment.scale=[a, b]", "augment.scale", "list"),
    ("project.min_depth=-3", "project.min_depth", ">= 0"),
    ("cluster.eps", "--set", "expected section.field=value"),
])
def test_from_overrides_errors_name_the_key(item, field, why):
    with pytest.raises(ConfigError) as info:
        SweepConfig.from_overrides([item])
    assert info.value.field == field
    assert why in str(info.value)


def test_to_dict_round_trip_and_json():
    cfg = SweepConfig.from_overrides(["cluster.eps=0.6", "augment.flip_x_prob=0.5", "ground.ring_edges=[5,9]"])
    d = cfg.to_dict()
    assert set(d) == {"validate", "ground", "cluster", "pooling", "project", "augment"}
    assert d["cluster"]["eps"] == 0.6 and d["augment"]["scale"] == [0.9, 1.1]
    back = SweepConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg
    assert SweepConfig.from_dict({}) == SweepConfig()


def test_parse_assignments():
    assert parse_assignments(["a.b=1", " c.d = x=y "]) == {"a.b": "1", "c.d": "x=y"}
    with pytest.raises(ConfigError):
        parse_assignments(["=3"])


# ---------------------------------------------------------------------------------------------------------
# the pipeline on a synthetic scene


def _scene(seed=0):
    """Ground plane at z = -1.8 (x, y in [-30, 30]) and three box-shaped objects; (N, 5) float32, labels."""
    rng = np.random.default_rng(seed)
    n_ground = 12000
    g = np.c_[rng.uniform(-30, 30, (n_ground, 2)), -1.8 + rng.normal(0, 0.02, n_ground)]
    objs = []
    for cx, cy in ((8.0, 3.0), (-10.0, -6.0), (4.0, -12.0)):  # car-size boxes 4 x 1.8 x 1.5 m
        k = 600
        p = np.c_[rng.uniform(-2, 2, k) + cx, rng.uniform(-0.9, 0.9, k) + cy, rng.uniform(-1.4, -0.3, k)]
        objs.append(p)
    xyz = np.vstack([g, *objs])
    kind = np.r_[np.zeros(n_ground, int), np.repeat([1, 2, 3], 600)]
    pts = np.c_[xyz, rng.uniform(0, 255, len(xyz)), rng.integers(0, 32, len(xyz))].astype(np.float32)
    return pts, kind


def test_synthetic_scene_composes_the_stages():
    pts, kind = _scene()
    cfg = SweepConfig()
    res = process_sweep(pts, None, cfg, seed=3, token="tok")
    n = len(pts)
    assert res.ground.shape == (n,) and res.ground.dtype == bool
    assert res.region.shape == (n,) and res.labels.dtype == np.int32
    # the composition equals the stages run by hand
    xyz = pts[:, :3]
    gr = fit_ground(xyz, cfg.ground)
    lab = cluster_nonground(xyz, gr.mask, cfg.cluster)
    lab, mask = reattach_low_points(xyz, gr.mask, lab, cfg.cluster)
    gr = dataclasses.replace(gr, mask=mask)
    pooled = pool_regions(xyz, gr, lab, cfg.pooling)
    np.testing.assert_array_equal(res.ground, gr.mask)
    np.testing.assert_array_equal(res.labels, lab)
    np.testing.assert_array_equal(res.region, pooled.region)
    np.testing.assert_array_equal(res.aug_params, sample_views(cfg.augment, 3, "tok"))
    # and it finds the scene: ground is ground, each box is one region
    assert res.ground[kind == 0].mean() > 0.97 and res.ground[kind > 0].mean() < 0.1
    assert np.all(res.region[res.ground] == -1)
    for k in (1, 2, 3):
        r = res.region[(kind == k) & ~res.ground]
        assert (r >= 0).mean() > 0.9 and len(np.unique(r[r >= 0])) == 1
    s = res.stats
    assert s.points == n and s.nonfinite_points == 0 and s.regions_kept == 3
    assert s.ground_points == res.ground.sum() and s.ground_fraction == pytest.approx(res.ground.mean())
    assert s.clusters >= 3 and s.region_points == (res.region >= 0).sum()
    assert 0 <= s.noise_fraction <= 1
    assert set(res.timings_ms) == set(STAGES) | {"total"}
    assert all(v >= 0 for v in res.timings_ms.values())
    assert res.projection is None and s.projected_pairs == 0


def test_nonfinite_points_are_masked_and_counted():
    pts, _ = _scene(1)
    clean = process_sweep(pts)
    rng = np.random.default_rng(0)
    bad_at = np.sort(rng.choice(len(pts) + 30, 30, replace=False))
    dirty = np.insert(pts, bad_at - np.arange(30), np.nan, axis=0)
    dirty[bad_at[::3], 0] = np.inf
    dirty[bad_at[1::3], :] = pts[0]
    dirty[bad_at[1::3], 2] = -np.inf
    ok = np.ones(len(dirty), bool)
    ok[bad_at] = False
    res = process_sweep(dirty)
    assert res.stats.nonfinite_points == 30 and res.stats.points == len(dirty)
    assert res.stats.out_of_range_points == 0
    np.testing.assert_array_equal(res.valid, ok)
    assert not res.ground[~ok].any() and np.all(res.region[~ok] == -1) and np.all(res.labels[~ok] == -1)
    # the finite points get exactly the results of the clean sweep
    np.testing.assert_array_equal(res.ground[ok], clean.ground)
    np.testing.assert_array_equal(res.region[ok], clean.region)


def test_out_of_range_points_are_masked_and_never_projected():
    """A corrupt far point must not break the grid kernels (DBSCAN refuses a 1e30 m span) nor be projected."""
    pts, kind = _scene(3)
    pts[kind == 1, 2] = 0.0
    clean = process_sweep(pts)
    far = np.vstack([pts, [[1e30, 0.0, 0.0, 0, 0], [-3e38, 5.0, 5.0, 0, 0], [20.0, 0.0, 2e4, 0, 0]]])
    far = far.astype(np.float32)
    cam = _front_camera()
    assert len(pts) in project_points(far, [cam]).point  # the 1e30 m point lands mid-image when not masked
    res = process_sweep(far, [cam])
    assert res.stats.out_of_range_points == 3 and res.stats.nonfinite_points == 0
    np.testing.assert_array_equal(res.valid, np.r_[np.ones(len(pts), bool), False, False, False])
    np.testing.assert_array_equal(res.region[: len(pts)], clean.region)
    assert np.all(res.region[-3:] == -1) and not res.ground[-3:].any()
    assert res.projection.point.max() < len(pts)
    # a looser limit lets the 20 km point through (a finite result, no crash)
    loose = process_sweep(far[:-3].tolist() + [far[-1].tolist()],
                          cfg=SweepConfig.from_overrides(["validate.max_abs_coord=1e5"]))
    assert loose.stats.out_of_range_points == 0
    with pytest.raises(ConfigError, match="validate.max_abs_coord"):
        SweepConfig.from_overrides(["validate.max_abs_coord=0"])


def _front_camera():
    from shared.records import CameraCalib

    l2c = np.eye(4)
    l2c[:3, :3] = [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]  # x forward -> camera z
    k = np.array([[500.0, 0, 400], [0, 500, 225], [0, 0, 1]])
    return CameraCalib(channel="CAM", intrinsic=k, lidar2cam=l2c, cam2ego=np.linalg.inv(l2c),
                       ego2global=np.eye(4), width=800, height=450)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_and_empty_sweeps(n):
    pts = np.zeros((n, 4), np.float32)
    res = process_sweep(pts)
    assert res.ground.shape == (n,) and res.region.shape == (n,)
    assert not res.ground.any() and np.all(res.region == -1)
    assert res.stats.points == n and res.stats.regions_kept == 0 and res.stats.ground_fraction == 0.0
    assert res.aug_params.shape == (2, 7)


def test_all_nan_sweep_and_few_points():
    res = process_sweep(np.full((100, 5), np.nan, np.float32))
    assert res.stats.nonfinite_points == 100 and not res.ground.any() and np.all(res.region == -1)
    pts = np.array([[1, 0, -1.8], [0, 1, -1.8], [1, 1, -1.8], [5, 5, 0]], np.float32)
    res = process_sweep(pts)  # four points: the kernels run and return defined results
    assert res.ground.shape == (4,) and res.stats.points == 4


def test_bad_points_shape():
    with pytest.raises(InputError, match="shape"):
        process_sweep(np.zeros((10, 2), np.float32))
    with pytest.raises(InputError, match="shape"):
        process_sweep(np.zeros(10, np.float32))


def test_config_changes_reach_the_stages():
    pts, kind = _scene(2)
    base = process_sweep(pts)
    coarse = process_sweep(pts, cfg=SweepConfig.from_overrides(["cluster.min_samples=100000"]))
    assert base.stats.regions_kept > 0 and coarse.stats.regions_kept == 0 and coarse.stats.clusters == 0
    aug = process_sweep(pts, cfg=SweepConfig(augment=AugmentConfig(num_views=3)), seed=1, token=5)
    assert aug.aug_params.shape == (3, 7)


# ---------------------------------------------------------------------------------------------------------
# real fixtures


@pytest.mark.fixtures
def test_nuscenes_fixture_with_cameras(fixtures_dir):
    from shared.fixtures import load_nuscenes_fixture
    from shared.pointcloud import load_points

    info = load_nuscenes_fixture(fixtures_dir / f"{N015}.calib.json")
    pts = load_points(fixtures_dir / f"{N015}.pcd.bin")
    res = process_sweep(pts, info.cameras, seed=0, token="n015")
    s = res.stats
    assert s.points == 34688 and s.nonfinite_points == 0
    assert 0.3 < s.ground_fraction < 0.8  # a city street: much of the scan is road
    assert s.regions_kept >= 10 and s.clusters >= s.regions_kept
    assert np.all(res.region[res.ground] == -1)
    # each region lies inside one DBSCAN cluster
    for r in np.unique(res.region[res.region >= 0]):
        assert len(np.unique(res.labels[res.region == r])) == 1
    direct = project_points(pts, info.cameras)
    np.testing.assert_array_equal(res.projection.point, direct.point)
    np.testing.assert_array_equal(res.projection.uv, direct.uv)
    assert s.projected_pairs == len(direct) and s.visible_points == direct.visible().sum()
    # ground lies at about z = -1.77 m in this scan (fixtures README)
    assert abs(np.median(pts[res.ground, 2]) + 1.77) < 0.15


@pytest.mark.fixtures
def test_kitti_fixture(fixtures_dir):
    from shared.fixtures import load_cameras
    from shared.pointcloud import load_points

    pts = load_points(fixtures_dir / "kitti/000000.bin")
    res = process_sweep(pts, load_cameras(fixtures_dir / "kitti/000000.calib.txt"))
    assert res.stats.points == len(pts) and res.stats.regions_kept >= 5
    assert abs(np.median(pts[res.ground, 2]) + 1.73) < 0.15  # KITTI ground: -1.67 .. -1.79 m
    assert res.projection.channels == ("CAM2",) and res.stats.projected_pairs > 5000


def test_sweep_config_is_frozen():
    cfg = SweepConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cluster = ClusterConfig()  # type: ignore[misc]
    with pytest.raises(ConfigError):
        SweepConfig(cluster=AugmentConfig())  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.fixtures
def test_gpu_backend_agrees_with_cpu(fixtures_dir):
    from shared.backend import gpu_status
    from shared.pointcloud import load_points

    ok, why = gpu_status()
    if not ok:
        pytest.skip(f"no GPU backend: {why}")
    pts = load_points(fixtures_dir / f"{N015}.pcd.bin")
    cpu = process_sweep(pts, backend="cpu")
    gpu = process_sweep(pts, backend="gpu")
    assert (cpu.ground != gpu.ground).mean() < 1e-3
    assert abs(cpu.stats.regions_kept - gpu.stats.regions_kept) <= 1
    np.testing.assert_array_equal(cpu.aug_params, gpu.aug_params)


def test_gpu_backend_missing_is_an_error():
    from shared.backend import gpu_status
    from shared.errors import BackendUnavailable

    if gpu_status()[0]:
        pytest.skip("a GPU is available here")
    with pytest.raises(BackendUnavailable):
        process_sweep(np.zeros((10, 3), np.float32), backend="gpu")
