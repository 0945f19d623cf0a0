"""DBSCAN: agreement with scikit-learn (same core points, same core partition, valid border assignment)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.backend import gpu_status
from shared.errors import BackendUnavailable, ConfigError, InputError
from preprocess import cluster as C
from preprocess.cluster import (ClusterConfig, adjusted_rand_index, cluster_nonground, core_partition_equal, dbscan,
                                dbscan_core, dbscan_reference)


def assert_matches_sklearn(xyz, cfg):
    """Same core points, same core labels (clusters numbered like sklearn), border points labelled with the
    cluster of a core point within eps, noise identical."""
    labels, core = dbscan_core(xyz, cfg)
    ref_labels, ref_core = dbscan_reference(xyz, cfg)
    assert labels.dtype == np.int32 and core.dtype == bool
    np.testing.assert_array_equal(core, ref_core)
    np.testing.assert_array_equal(labels[core], ref_labels[core])
    assert core_partition_equal(labels, core, ref_labels, ref_core)
    np.testing.assert_array_equal(labels == -1, ref_labels == -1)
    k = int(labels.max()) + 1 if len(labels) else 0
    assert set(np.unique(labels[labels >= 0])) == set(range(k))
    pts = np.asarray(xyz, dtype=np.float64)[:, : cfg.ndim]
    border = np.flatnonzero((labels >= 0) & ~core)
    for i in border:
        d2 = ((pts[core] - pts[i]) ** 2).sum(1)
        assert (labels[core][d2 <= cfg.eps ** 2] == labels[i]).any()
    return labels, core


@pytest.mark.parametrize("field,value", [("eps", 0), ("eps", float("inf")), ("min_samples", 0),
                                         ("min_samples", 2.5), ("dims", "xz"), ("eps_range_edges", (20.0, 10.0)),
                                         ("eps_range_edges", "10"), ("eps_range_scale", (1.0, 0.0, 1.0, 1.0)),
                                         ("eps_range_scale", (1.0, 2.0)), ("eps_range_scale", (True, 1, 1, 1)),
                                         ("stack_gap", -1.0), ("stack_max_overlap", float("nan")),
                                         ("stack_max_vgap", "0.5"), ("reattach_radius", float("inf")),
                                         ("reattach_max_gap", True)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError) as exc:
        ClusterConfig(**{field: value})
    assert exc.value.field == field


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dims", ["xy", "xyz"])
def test_random_clouds_match_sklearn(seed, dims):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 800))
    centers = rng.uniform(-20, 20, (int(rng.integers(1, 8)), 3))
    pts = centers[rng.integers(0, len(centers), n)] + rng.normal(0, rng.uniform(0.3, 1.5), (n, 3))
    pts = np.concatenate([pts, rng.uniform(-25, 25, (n // 4, 3))]).astype(np.float32)
    assert_matches_sklearn(pts, ClusterConfig(dims=dims, min_samples=int(rng.integers(2, 8))))


def test_duplicates_count_in_min_samples():
    base = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0]], np.float32)
    pts = np.concatenate([np.repeat(base[:1], 5, 0), np.repeat(base[1:2], 4, 0), base[2:]])
    labels, core = assert_matches_sklearn(pts, ClusterConfig(min_samples=5))
    assert core[:5].all() and not core[5:].any()
    assert (labels[:5] == 0).all() and (labels[5:] == -1).all()


def test_all_noise_and_one_giant_cluster():
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2) * 2.0
    pts = np.concatenate([grid, np.zeros((len(grid), 1))], 1).astype(np.float32)
    labels, core = assert_matches_sklearn(pts, ClusterConfig())
    assert (labels == -1).all()
    rng = np.random.default_rng(1)
    blob = rng.uniform(0, 5, (3000, 3)).astype(np.float32)
    labels, core = assert_matches_sklearn(blob, ClusterConfig())
    assert (labels == 0).all()


@pytest.mark.parametrize("min_samples,dims", [(3, "xy"), (5, "xy"), (6, "xy"), (5, "xyz"), (7, "xyz")])
def test_points_exactly_eps_apart(min_samples, dims):
    """A grid with spacing exactly eps (0.75 is exact in float32): 4 neighbours at distance == eps count."""
    v = np.arange(8, dtype=np.float32) * np.float32(0.75)
    if dims == "xy":
        g = np.stack(np.meshgrid(v, v), -1).reshape(-1, 2)
        pts = np.concatenate([g, np.zeros((len(g), 1), np.float32)], 1)
    else:
        pts = np.stack(np.meshgrid(v[:4], v[:4], v[:4]), -1).reshape(-1, 3)
    labels, core = assert_matches_sklearn(pts, ClusterConfig(min_samples=min_samples, dims=dims))
    if dims == "xy" and min_samples == 5:
        # interior points have exactly 4 neighbours at distance eps (+ itself): core; corners are not
        assert core.reshape(8, 8)[1:-1, 1:-1].all() and not core.reshape(8, 8)[0, 0]
    if dims == "xy" and min_samples == 6:
        assert not core.any()


def test_min_samples_one_makes_every_point_core():
    pts = np.random.default_rng(2).uniform(0, 30, (300, 3)).astype(np.float32)
    labels, core = assert_matches_sklearn(pts, ClusterConfig(min_samples=1))
    assert core.all() and (labels >= 0).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pts=arrays(np.float32, st.tuples(st.integers(0, 120), st.just(3)),
               elements=st.sampled_from(np.arange(-6, 6, 0.375, dtype=np.float32).tolist())
               | st.floats(-5, 5, width=32)),
    min_samples=st.integers(1, 6),
    dims=st.sampled_from(["xy", "xyz"]),
)
def test_property_matches_sklearn(pts, min_samples, dims):
    """Lattice values (many exact-eps distances and duplicates) mixed with arbitrary floats."""
    assert_matches_sklearn(pts, ClusterConfig(min_samples=min_samples, dims=dims))


@pytest.mark.parametrize("dims", ["xy", "xyz"])
def test_sparse_cell_path_matches_dense(dims):
    rng = np.random.default_rng(3)
    pts = np.concatenate([rng.normal(0, 2, (600, 3)), rng.normal(30, 1, (200, 3))])
    d = 2 if dims == "xy" else 3
    a = C._dbscan_kernel(np.ascontiguousarray(pts[:, :d]), 0.75, 5, 1 << 30)
    b = C._dbscan_kernel(np.ascontiguousarray(pts[:, :d]), 0.75, 5, 0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_far_outliers_use_the_sparse_path_and_still_match():
    rng = np.random.default_rng(4)
    pts = np.concatenate([rng.normal(0, 1, (300, 3)), [[5e4, -5e4, 0], [5e4, -5e4, 0.1]]]).astype(np.float32)
    assert_matches_sklearn(pts, ClusterConfig(min_samples=2))


def test_non_finite_points_are_noise_and_isolated():
    rng = np.random.default_rng(5)
    pts = rng.normal(0, 1.5, (500, 3)).astype(np.float32)
    bad = pts.copy()
    rows = [3, 77, 200]
    bad[3, 0] = np.nan
    bad[77, 1] = np.inf
    bad[200, 2] = np.nan  # z is ignored by xy clustering: finite in x, y, so a normal point there
    labels, core = dbscan_core(bad)
    keep = np.ones(len(pts), bool)
    keep[[3, 77]] = False
    ref = dbscan(pts[keep])
    assert labels[3] == -1 and labels[77] == -1 and not core[[3, 77]].any()
    np.testing.assert_array_equal(labels[keep], ref)
    lab3 = dbscan(bad, ClusterConfig(dims="xyz"))
    assert lab3[rows].tolist() == [-1, -1, -1]


def test_empty_and_tiny_inputs():
    for n in (0, 1, 2):
        pts = np.arange(3 * n, dtype=np.float32).reshape(n, 3)
        labels, core = dbscan_core(pts)
        assert labels.shape == (n,) and (labels == -1).all() and not core.any()
    labels, core = dbscan_core(np.zeros((2, 3), np.float32), ClusterConfig(min_samples=2))
    assert labels.tolist() == [0, 0] and core.all()


def test_bad_inputs():
    with pytest.raises(InputError):
        dbscan(np.zeros((5, 1), np.float32))
    with pytest.raises(InputError):
        dbscan(np.zeros((5, 2), np.float32), ClusterConfig(dims="xyz"))
    with pytest.raises(InputError, match="too large"):
        dbscan(np.array([[0, 0, 0], [1e30, 1e30, 0]], np.float32), ClusterConfig(dims="xyz"))
    with pytest.raises(InputError):
        cluster_nonground(np.zeros((5, 3), np.float32), np.zeros(4, bool))
    if not gpu_status()[0]:
        with pytest.raises(BackendUnavailable):
            dbscan(np.zeros((5, 3), np.float32), backend="gpu")


def test_cluster_nonground_keeps_ground_as_noise():
    rng = np.random.default_rng(6)
    pts = rng.normal(0, 1, (400, 3)).astype(np.float32)
    ground = rng.random(400) < 0.3
    labels = cluster_nonground(pts, ground, PLAIN)
    assert (labels[ground] == -1).all()
    np.testing.assert_array_equal(labels[~ground], dbscan(pts[~ground], PLAIN))
    banded = cluster_nonground(pts, ground, NO_STACK)  # all within 10 m: one band, eps 0.375
    assert (banded[ground] == -1).all()
    np.testing.assert_array_equal(banded[~ground], dbscan(pts[~ground], ClusterConfig(eps=0.375)))


#: One eps everywhere and no stacked join: the paper's DBSCAN (the defaults scale eps by range band).
PLAIN = ClusterConfig(eps_range_edges=(), eps_range_scale=(), stack_gap=0.0)


def _ring_blobs(rng, ranges, n=60, spread=0.03):
    """Tight blobs of n points (xy, z = -1) at the given (range, azimuth) pairs."""
    pts = [np.column_stack([r * np.cos(a) + rng.normal(0, spread, n), r * np.sin(a) + rng.normal(0, spread, n),
                            np.full(n, -1.0)]) for r, a in ranges]
    return np.concatenate(pts)


def _disc(rng, n, r_max, r_min=None):
    """n points (float32, z in [-1, 1]) uniform over the disc of radius r_max (about 0.1 r_max inside it empty),
    or uniform in range over the ring [r_min, r_max)."""
    r = rng.uniform(r_min, r_max, n) if r_min is not None else r_max * np.sqrt(rng.uniform(0.01, 1, n))
    a = rng.uniform(-np.pi, np.pi, n)
    return np.column_stack([r * np.cos(a), r * np.sin(a), rng.uniform(-1, 1, n)]).astype(np.float32)


def test_config_bands_and_plain():
    cfg = ClusterConfig()
    assert cfg.band_eps == pytest.approx((0.375, 0.6, 1.125, 1.5))
    assert PLAIN.band_eps == (0.75,)
    assert ClusterConfig(eps_range_edges=[5, 15], eps_range_scale=[1, 2, 3]).eps_range_edges == (5.0, 15.0)
    assert ClusterConfig(eps=0.5).band_eps == pytest.approx((0.25, 0.4, 0.75, 1.0))  # eps scales every band


def test_range_bands_join_far_gaps_and_split_near_ones():
    """Two blobs whose centres are 0.75 m apart at 5 m (about 0.55 m between their edges) are two clusters
    (band eps 0.375), one with the plain eps 0.75; two blobs 1.3 m apart (about 1.1 m) at 35 m are one cluster
    (band eps 1.5), two with the plain eps."""
    rng = np.random.default_rng(0)
    near = _ring_blobs(rng, [(5.0, 0.3), (5.0, 0.3 + 0.75 / 5.0)])
    far = _ring_blobs(rng, [(35.0, -1.0), (35.0, -1.0 + 1.3 / 35.0)])
    pts = np.concatenate([near, far]).astype(np.float32)
    none = np.zeros(len(pts), bool)
    banded = cluster_nonground(pts, none)
    plain = cluster_nonground(pts, none, PLAIN)
    n = len(near) // 2
    assert banded[:n].min() >= 0 and len(set(banded[:n])) == 1 and set(banded[:n]).isdisjoint(banded[n:2 * n])
    assert len(set(plain[: 2 * n])) == 1
    assert len(set(banded[2 * n:])) == 1 and banded[2 * n] >= 0
    assert len(set(plain[2 * n: 3 * n]) & set(plain[3 * n:])) == 0
    assert banded.max() + 1 == 3 and plain.max() + 1 == 3


def test_a_cluster_across_band_edges_stays_one():
    """A radial line of points 0.15 m apart from 5 to 40 m crosses the 10, 20 and 30 m edges: one cluster; the
    clusters are numbered 0..K-1 by their lowest-index point."""
    r = np.arange(5.0, 40.0, 0.15)
    line = np.column_stack([r * np.cos(0.7), r * np.sin(0.7), np.full(len(r), -1.0)])
    blob = _ring_blobs(np.random.default_rng(1), [(25.0, 2.5)])
    pts = np.concatenate([blob, line[::-1]]).astype(np.float32)  # far end first in point order
    labels = cluster_nonground(pts, np.zeros(len(pts), bool))
    assert (labels[: len(blob)] == 0).all() and (labels[len(blob):] == 1).all()


def _box_points(x0, x1, y0, y1, z0, z1, step=0.1):
    """A grid of points filling the box (spacing ``step``), float64 (M, 3)."""
    g = np.mgrid[x0:x1 + 1e-9:step, y0:y1 + 1e-9:step, z0:z1 + 1e-9:step].reshape(3, -1).T
    return g.astype(np.float64)


#: Without the stacked join (the plain and banded DBSCAN tests compare against scikit-learn).
NO_STACK = ClusterConfig(stack_gap=0.0)


def test_stacked_clusters_are_joined():
    """A car seen from behind at 15 m (band eps 0.6): its lower body (z 0.3-0.7) and its cabin (z 0.9-1.5),
    set back 1.0 m and narrower, are two DBSCAN clusters and one after the stacked join; not joined: a block
    at the same heights 1.0 m away (side by side, not stacked), a canopy 1.0 m above (vertical gap above
    stack_max_vgap), a piece shifted sideways (neither box lies within the other's grown by stack_gap) and a
    cabin 2 m back (beyond stack_gap)."""
    body = _box_points(15.0, 15.3, -0.9, 0.9, 0.3, 0.7)
    cabin = _box_points(16.3, 16.6, -0.6, 0.6, 0.9, 1.5)
    none = lambda p: np.zeros(len(p), bool)  # noqa: E731
    pts = np.concatenate([body, cabin])
    assert len(set(cluster_nonground(pts, none(pts), NO_STACK))) == 2
    lab = cluster_nonground(pts, none(pts))
    assert len(set(lab)) == 1 and lab[0] == 0
    cases = {"side by side": _box_points(16.3, 16.6, -0.6, 0.6, 0.3, 0.7),
             "canopy high": _box_points(16.3, 16.6, -0.6, 0.6, 1.8, 2.4),
             "shifted sideways": _box_points(16.3, 16.6, 1.0, 2.6, 0.9, 1.5),
             "set back 2 m": _box_points(17.3, 17.6, -0.6, 0.6, 0.9, 1.5)}
    for name, other in cases.items():
        p = np.concatenate([body, other])
        assert len(set(cluster_nonground(p, none(p)))) == 2, name


def test_join_stacked_is_transitive_and_numbers_by_first_point():
    """Three stacked pieces (a chain: each joins the next) become one cluster; the labels are renumbered
    0..K-1 by the lowest-index point; noise stays noise; no clusters: unchanged."""
    a = _box_points(10.0, 10.2, 0.0, 1.0, 0.2, 0.6)
    b = _box_points(10.8, 11.0, 0.2, 0.8, 0.8, 1.0)
    c = _box_points(11.6, 11.8, 0.3, 0.7, 1.2, 1.5)
    lone = _box_points(30.0, 30.2, 0.0, 0.2, 0.2, 0.6)
    pts = np.concatenate([lone, c, b, a, [[50.0, 50.0, 0.0]]])
    labels = np.concatenate([np.full(len(lone), 3), np.full(len(c), 0), np.full(len(b), 2), np.full(len(a), 1),
                             [-1]]).astype(np.int32)
    out = C.join_stacked(pts, pts[:, 2], labels, ClusterConfig())
    assert out.dtype == np.int32
    assert (out[: len(lone)] == 0).all() and (out[len(lone):-1] == 1).all() and out[-1] == -1
    assert C.join_stacked(pts[:0], pts[:0, 2], labels[:0], ClusterConfig()).shape == (0,)
    np.testing.assert_array_equal(C.join_stacked(pts, pts[:, 2], np.full(len(pts), -1, np.int32),
                                                 ClusterConfig()), -1)


REATTACH = ClusterConfig(reattach_radius=0.15, reattach_max_gap=1.5)


def test_reattach_low_points_gives_an_objects_foot_back():
    """A car side (a vertical face z 0.3-1.5 at x = 10) whose lowest 0.2 m were labelled ground gets them
    back; the road 1 m in front of it, the road under a canopy 3 m up and a far ground point stay ground;
    non-finite points are left alone; radius 0 (the default) returns the inputs."""
    face = _box_points(10.0, 10.0, -2.0, 2.0, 0.3, 1.5)
    foot = _box_points(10.0, 10.0, -2.0, 2.0, 0.0, 0.2)
    road = _box_points(9.0, 9.0, -2.0, 2.0, 0.0, 0.0)
    canopy = _box_points(20.0, 21.0, -1.0, 1.0, 3.0, 3.2)
    under = _box_points(20.0, 21.0, -1.0, 1.0, 0.0, 0.0, step=0.25)
    bad = np.array([[10.0, 0.0, np.nan], [np.inf, 0.0, 0.0]])
    pts = np.concatenate([face, canopy, foot, road, under, [[80.0, 0.0, 0.0]], bad])
    n_obj = len(face) + len(canopy)
    labels = np.full(len(pts), -1, np.int32)
    labels[: len(face)] = 0
    labels[len(face): n_obj] = 1
    ground = np.arange(len(pts)) >= n_obj
    lab, g = C.reattach_low_points(pts, ground, labels, REATTACH)
    assert lab.dtype == np.int32 and g.dtype == bool
    np.testing.assert_array_equal(lab[:n_obj], labels[:n_obj])
    sl = slice(n_obj, n_obj + len(foot))
    assert (lab[sl] == 0).all() and not g[sl].any()
    rest = slice(n_obj + len(foot), None)
    assert (lab[rest] == -1).all() and g[rest][:-2].all()
    np.testing.assert_array_equal(g[-2:], ground[-2:])
    same = C.reattach_low_points(pts, ground, labels, ClusterConfig())  # off by default
    np.testing.assert_array_equal(same[0], labels)
    np.testing.assert_array_equal(same[1], ground)
    # the sorted-cell path (large extents) gives the dense path's answer
    sparse = C._reattach_kernel(pts, ground, labels, 0.15, 1.5, 0)
    np.testing.assert_array_equal(sparse[0], lab)
    np.testing.assert_array_equal(sparse[1], g)
    with pytest.raises(InputError):
        C.reattach_low_points(pts[:, :2], ground, labels, REATTACH)
    with pytest.raises(InputError):
        C.reattach_low_points(pts, ground[:-1], labels, REATTACH)


@pytest.mark.parametrize("seed", range(3))
def test_each_band_is_exact_dbscan(seed):
    """Points spread over one band (here 12-18 m) get exactly DBSCAN's partition at that band's eps; over all
    bands, the clustering of the points of a band that have no neighbour within eps across an edge is DBSCAN's
    at that band's eps."""
    pts = _disc(np.random.default_rng(seed), 3000, 18.0, 12.0)
    labels = cluster_nonground(pts, np.zeros(len(pts), bool), NO_STACK)
    ref, core = dbscan_reference(pts, ClusterConfig(eps=0.6))
    assert core_partition_equal(labels, core, ref, core)
    np.testing.assert_array_equal(labels == -1, ref == -1)
    assert adjusted_rand_index(labels, ref) > 0.99


def test_agreement_measures():
    a = np.array([0, 0, 1, 1, -1])
    assert adjusted_rand_index(a, np.array([1, 1, 0, 0, -1])) == pytest.approx(1.0)
    assert adjusted_rand_index(a, np.array([0, 1, 0, 1, -1])) < 0.5
    core = np.array([True, True, True, True, False])
    assert core_partition_equal(a, core, np.array([5, 5, 2, 2, -1]), core)
    assert not core_partition_equal(a, core, np.array([5, 5, 5, 2, -1]), core)
    assert not core_partition_equal(a, core, a, ~core)


def test_renumber_by_first_core():
    labels = np.array([7, 3, 3, 7, -1, 9])
    core = np.array([False, True, True, True, False, False])
    assert C._renumber_by_first_core(labels, core).tolist() == [1, 0, 0, 1, -1, -1]


@pytest.mark.fixtures
@pytest.mark.slow
@pytest.mark.parametrize("name", ["nuscenes/n008-2018-08-01-15-16-36-0400__LIDAR_TOP__1533151603597909.pcd.bin",
                                  "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin",
                                  "kitti/000000.bin"])
def test_real_scans_match_sklearn_after_ground_removal(fixtures_dir, name):
    from shared.pointcloud import load_points
    from preprocess.ground import fit_ground

    xyz = load_points(fixtures_dir / name)[:, :3]
    ng = xyz[~fit_ground(xyz).mask]
    labels, core = dbscan_core(ng)
    ref_labels, ref_core = dbscan_reference(ng)
    np.testing.assert_array_equal(core, ref_core)
    np.testing.assert_array_equal(labels[core], ref_labels[core])
    assert adjusted_rand_index(labels, ref_labels) > 0.999
    assert labels.max() + 1 == ref_labels.max() + 1 > 10


@pytest.mark.gpu
def test_gpu_matches_cpu():
    ok, why = gpu_status()
    if not ok:
        pytest.skip(why)
    rng = np.random.default_rng(7)
    pts = np.concatenate([rng.normal(0, 2, (3000, 3)), rng.uniform(-30, 30, (1000, 3))]).astype(np.float32)
    for dims in ("xy", "xyz"):
        cfg = ClusterConfig(dims=dims)
        lc, cc = dbscan_core(pts, cfg, backend="cpu")
        lg, cg = dbscan_core(pts, cfg, backend="gpu")
        np.testing.assert_array_equal(cg, cc)
        assert core_partition_equal(lg, cg, lc, cc)
        assert adjusted_rand_index(lg, lc) > 0.999


@pytest.mark.gpu
def test_gpu_banded_matches_cpu():
    ok, why = gpu_status()
    if not ok:
        pytest.skip(why)
    pts = _disc(np.random.default_rng(9), 8000, 50.0)
    none = np.zeros(len(pts), bool)
    for dims in ("xy", "xyz"):
        cfg = ClusterConfig(dims=dims)
        assert adjusted_rand_index(cluster_nonground(pts, none, cfg, backend="gpu"),
                                   cluster_nonground(pts, none, cfg, backend="cpu")) > 0.999


def test_gpu_glue_with_sklearn_standing_in_for_cuml(monkeypatch):
    """The cuML code path (renumbering, core mask) with scikit-learn standing in for cuML and numpy for cupy."""
    import sys
    import types

    from sklearn.cluster import DBSCAN as SkDBSCAN

    class FakeCuDBSCAN:
        def __init__(self, eps, min_samples, metric, calc_core_sample_indices, output_type):
            assert metric == "euclidean" and calc_core_sample_indices
            self._m = SkDBSCAN(eps=eps, min_samples=min_samples)

        def fit_predict(self, x):
            self._m.fit(np.asarray(x))
            # cuML numbers clusters in its own order: scramble the ids to check the renumbering
            lab = self._m.labels_.copy()
            k = lab.max() + 1
            lab[lab >= 0] = (k - 1) - lab[lab >= 0]
            self.core_sample_indices_ = self._m.core_sample_indices_
            return lab

    cuml = types.ModuleType("cuml")
    cuml.cluster = types.ModuleType("cuml.cluster")
    cuml.cluster.DBSCAN = FakeCuDBSCAN
    fake_cp = types.SimpleNamespace(asarray=lambda a, dtype=None: np.asarray(a, dtype=dtype), float64=np.float64,
                                    asnumpy=np.asarray)
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cuml.cluster", cuml.cluster)
    monkeypatch.setitem(sys.modules, "cupy", fake_cp)
    rng = np.random.default_rng(8)
    pts = np.concatenate([rng.normal(0, 2, (800, 2)), rng.uniform(-30, 30, (300, 2))])
    lab_gpu, core_gpu = C._dbscan_gpu(pts, ClusterConfig())
    lab_cpu, core_cpu = C._dbscan_kernel(pts, 0.75, 5, 1 << 22)
    np.testing.assert_array_equal(core_gpu, core_cpu)
    np.testing.assert_array_equal(lab_gpu[core_gpu], lab_cpu[core_cpu])
    assert lab_gpu.dtype == np.int32
    empty = C._dbscan_gpu(np.zeros((0, 2)), ClusterConfig())
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_banded_gpu_path_with_sklearn_standing_in_for_cuml(monkeypatch):
    """The range bands on the GPU path: per band cuML (scikit-learn standing in), joined on the host by the
    same code as the CPU path: the same partition of the core points (the border points may pick another
    neighbouring cluster, as DBSCAN allows)."""
    from sklearn.cluster import DBSCAN as SkDBSCAN

    def fake_gpu(pts, cfg):
        m = SkDBSCAN(eps=cfg.eps, min_samples=cfg.min_samples).fit(pts)
        core = np.zeros(len(pts), bool)
        core[m.core_sample_indices_] = True
        return C._renumber_by_first_core(m.labels_, core), core

    monkeypatch.setattr(C, "_dbscan_gpu", fake_gpu)
    pts = _disc(np.random.default_rng(10), 5000, 45.0)[:, :2].astype(np.float64)
    cfg = ClusterConfig()
    gpu = C.banded_labels(pts, cfg, "gpu")
    cpu = C.banded_labels(pts, cfg, "cpu")
    assert gpu.dtype == cpu.dtype == np.int32
    assert adjusted_rand_index(gpu, cpu) > 0.99
    np.testing.assert_array_equal(gpu == -1, cpu == -1)
    assert C.banded_labels(np.zeros((0, 2)), cfg, "gpu").shape == (0,)
