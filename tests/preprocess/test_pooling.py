"""Semantic pooling: cluster filters, region ids and summaries against a slow reference (cv2.minAreaRect)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from shared.errors import ConfigError, InputError
from preprocess.ground import GroundConfig, GroundResult, fit_ground
from preprocess.pooling import REASONS, PoolingConfig, min_area_rect, pool_regions

SENSOR = 1.84
#: The prototype's thresholds (the defaults before issue 13): every filter active, so that each can be tripped.
PROTO = PoolingConfig(max_height=4.84, max_area=20.0, min_area=0.25, min_side_ratio=0.1)


def _box(rng, center, size, n=200, yaw=0.0, z0=None):
    """n points filling a box (center x, y; size l, w, h) standing on the ground z = -SENSOR (+ z0)."""
    l, w, h = size
    local = rng.uniform([-l / 2, -w / 2, 0], [l / 2, w / 2, h], (n, 3))
    c, s = math.cos(yaw), math.sin(yaw)
    xy = local[:, :2] @ np.array([[c, s], [-s, c]]) + center
    z = local[:, 2] - SENSOR + (z0 or 0.0)
    return np.column_stack([xy, z])


def _scene(seed=0):
    """Clusters built to trip exactly one filter each (label = index in the list), on a plain ground mask."""
    rng = np.random.default_rng(seed)
    specs = [
        ("kept", dict(center=(10, 5), size=(4.2, 1.8, 1.5), yaw=0.4)),
        ("ego", dict(center=(0.4, -0.3), size=(1.0, 1.0, 1.0))),
        ("too_low", dict(center=(15, -5), size=(2.0, 2.0, 0.15))),
        ("too_high", dict(center=(-12, 4), size=(1.0, 1.0, 5.0))),
        ("too_large", dict(center=(-20, -20), size=(6.0, 5.0, 2.0))),
        ("too_small", dict(center=(5, -12), size=(0.3, 0.3, 1.0))),
        ("too_thin", dict(center=(25, 0), size=(8.0, 0.3, 1.5), yaw=1.0)),
        ("kept", dict(center=(-8, 15), size=(0.6, 0.6, 1.8))),
    ]
    pts, labels = [], []
    for k, (_, spec) in enumerate(specs):
        b = _box(rng, **spec)
        pts.append(b)
        labels.append(np.full(len(b), k))
    ground = rng.uniform([-40, -40, -SENSOR - 0.05], [40, 40, -SENSOR + 0.05], (2000, 3))
    pts.append(ground)
    labels.append(np.full(len(ground), -1))
    pts = np.concatenate(pts).astype(np.float32)
    labels = np.concatenate(labels).astype(np.int32)
    gmask = labels == -1
    return pts, gmask, labels, [name for name, _ in specs]


def _reference(xyz, height, labels, cfg):
    """Slow per-cluster reference: reason name (or 'kept') per cluster id, with cv2.minAreaRect."""
    out = {}
    for c in np.unique(labels[labels >= 0]):
        m = labels == c
        p = xyz[m].astype(np.float64)
        cx, cy = p[:, 0].mean(), p[:, 1].mean()
        (_, _), (w, h), _ = cv2.minAreaRect(p[:, :2].astype(np.float32))
        area = w * h
        ratio = min(w, h) / max(w, h) if max(w, h) > 0 else 0.0
        top = height[m].max()
        if abs(cx) <= cfg.ego_box and abs(cy) <= cfg.ego_box:
            out[c] = "ego"
        elif top < cfg.min_height_above_ground:
            out[c] = "too_low"
        elif top > cfg.max_height:
            out[c] = "too_high"
        elif area > cfg.max_area or max(w, h) > cfg.max_length:
            out[c] = "too_large"
        elif area < cfg.min_area:
            out[c] = "too_small"
        elif ratio < cfg.min_side_ratio:
            out[c] = "too_thin"
        else:
            out[c] = "kept"
    return out


@pytest.mark.parametrize("field,value", [("max_area", -1), ("min_side_ratio", 1.5), ("ego_box", float("nan")),
                                         ("max_height", 0.1), ("min_area", "x")])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError) as exc:
        PoolingConfig(**{field: value})
    assert exc.value.field == field


def test_each_filter_drops_its_cluster():
    xyz, gmask, labels, names = _scene()
    res = pool_regions(xyz, gmask, labels, PROTO)
    reasons = ["kept" if r == 0 else REASONS[r - 1] for r in res.cluster_reason]
    assert reasons == names
    assert res.dropped.total == 6 and all(getattr(res.dropped, n) == 1 for n in REASONS)
    assert res.n_regions == 2
    assert res.cluster_region.tolist() == [0, -1, -1, -1, -1, -1, -1, 1]
    assert res.region.dtype == np.int16
    np.testing.assert_array_equal(res.region[labels == 0], 0)
    np.testing.assert_array_equal(res.region[labels == 7], 1)
    assert (res.region[(labels != 0) & (labels != 7)] == -1).all()
    s = res.summaries
    car = xyz[labels == 0].astype(np.float64)
    assert s.points.tolist() == [(labels == 0).sum(), (labels == 7).sum()]
    np.testing.assert_allclose(s.centroid[0], car.mean(0), atol=1e-6)
    assert s.z_min[0] == pytest.approx(car[:, 2].min()) and s.z_max[0] == pytest.approx(car[:, 2].max())
    assert s.height_max[0] == pytest.approx(car[:, 2].max() + SENSOR, abs=1e-5)
    # the footprint of the car: about 4.2 x 1.8, yaw 0.4 (sampled points sit inside the true box)
    assert 3.9 < s.box_size[0, 0] <= 4.2 + 1e-6 and 1.6 < s.box_size[0, 1] <= 1.8 + 1e-6
    assert s.box_yaw[0] == pytest.approx(0.4, abs=0.05)
    np.testing.assert_allclose(s.area, s.box_size[:, 0] * s.box_size[:, 1])


@pytest.mark.parametrize("cfg", [PoolingConfig(), PROTO], ids=["defaults", "proto"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_slow_reference_on_random_clusters(seed, cfg):
    rng = np.random.default_rng(seed)
    pts, labels = [], []
    for k in range(40):
        size = rng.uniform([0.1, 0.05, 0.05], [8, 4, 5]) * (5 if k % 8 == 0 else 1)  # some beyond max_length
        b = _box(rng, rng.uniform(-30, 30, 2), size, n=int(rng.integers(5, 150)), yaw=rng.uniform(-3, 3),
                 z0=rng.uniform(-0.3, 0.3))
        pts.append(b)
        labels.append(np.full(len(b), k))
    xyz = np.concatenate(pts).astype(np.float32)
    labels = np.concatenate(labels).astype(np.int32)
    res = pool_regions(xyz, np.zeros(len(xyz), bool), labels, cfg)
    ref = _reference(xyz, xyz[:, 2].astype(np.float64) + cfg.sensor_height, labels, cfg)
    got = {c: ("kept" if r == 0 else REASONS[r - 1]) for c, r in enumerate(res.cluster_reason)}
    # cv2 works in float32: skip clusters whose area/ratio sit within 0.1 % of a threshold
    for c, want in ref.items():
        _, size, _ = min_area_rect(xyz[labels == c, :2])
        area, ratio = size[0] * size[1], (size[1] / size[0] if size[0] else 0)
        near = any(abs(area - t) < 1e-3 * t for t in (cfg.max_area, cfg.min_area)) or \
            abs(ratio - cfg.min_side_ratio) < 1e-3 or abs(size[0] - cfg.max_length) < 1e-3 * cfg.max_length
        if not near:
            assert got[c] == want, (c, got[c], want)
    kept = [c for c, r in enumerate(res.cluster_reason) if r == 0]
    assert res.summaries.cluster.tolist() == kept
    assert res.n_regions == len(kept)


@pytest.mark.parametrize("seed", range(5))
def test_min_area_rect_matches_cv2(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        xy = rng.normal(0, rng.uniform(0.1, 5, 2), (int(rng.integers(3, 200)), 2))
        xy = (xy @ np.array([[1, rng.uniform(-1, 1)], [0, 1]])).astype(np.float32)
        center, size, yaw = min_area_rect(xy)
        _, (w, h), _ = cv2.minAreaRect(xy)
        assert size[0] >= size[1]
        assert size[0] * size[1] == pytest.approx(w * h, rel=1e-3, abs=1e-6)
        assert sorted([w, h]) == pytest.approx([size[1], size[0]], rel=1e-3, abs=1e-5)
        # (centres may differ where two rectangles have almost the same area; containment is checked below)
        assert -math.pi / 2 < yaw <= math.pi / 2
        # all points inside the rectangle
        c, s = math.cos(yaw), math.sin(yaw)
        d = xy - center
        u, v = d @ np.array([c, s]), d @ np.array([-s, c])
        assert np.abs(u).max() <= size[0] / 2 + 1e-4 and np.abs(v).max() <= size[1] / 2 + 1e-4


def test_min_area_rect_degenerate():
    c, s, yaw = min_area_rect(np.array([[1.0, 2.0]] * 5))
    assert c.tolist() == [1.0, 2.0] and s.tolist() == [0.0, 0.0]
    c, s, yaw = min_area_rect(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert s[0] == pytest.approx(3 * math.sqrt(2)) and s[1] == pytest.approx(0.0, abs=1e-12)
    assert yaw == pytest.approx(math.pi / 4)
    with pytest.raises(InputError):
        min_area_rect(np.zeros((0, 2)))


def test_heights_relative_to_local_ground():
    """A 2 m object standing on ground that rises to +2.5 m: too high in the fixed frame, kept with the local
    plane from fit_ground."""
    rng = np.random.default_rng(3)
    r = 40 * np.sqrt(rng.uniform(0.02, 1, 12000))
    phi = rng.uniform(-np.pi, np.pi, len(r))
    x, y = r * np.cos(phi), r * np.sin(phi)
    z = -SENSOR + 0.1 * np.clip(x - 10, 0, None) + rng.normal(0, 0.02, len(r))
    obj = _box(rng, (32.0, 0.0), (1.0, 1.0, 2.0), n=300, z0=2.2)  # ground at x=32 is at +2.2
    xyz = np.concatenate([np.column_stack([x, y, z]), obj]).astype(np.float32)
    labels = np.full(len(xyz), -1, np.int32)
    labels[-300:] = 0
    g = fit_ground(xyz, GroundConfig(max_patch_tilt_deg=8.0))
    assert not g.mask[-300:].any() or g.mask[-300:].mean() < 0.15
    cfg = PoolingConfig(max_height=3.0)  # the object's top is ~4.4 m above the sensor's ground, 2 m above its own
    local = pool_regions(xyz, g, labels, cfg)
    fixed = pool_regions(xyz, g.mask, labels, cfg)
    assert local.n_regions == 1 and local.summaries.height_max[0] < 3.0
    assert fixed.n_regions == 0 and fixed.dropped.too_high == 1


def test_ground_nan_and_noise_points_are_semantic_less():
    xyz, gmask, labels, _ = _scene(1)
    lab = labels.copy()
    lab[gmask] = 0  # ground points claimed by cluster 0 are ignored
    bad = xyz.copy()
    first = np.flatnonzero(labels == 0)[:3]
    bad[first[0], 0] = np.nan
    bad[first[1], 2] = np.inf
    res = pool_regions(bad, gmask, lab)
    assert (res.region[gmask] == -1).all()
    assert (res.region[first[:2]] == -1).all() and res.region[first[2]] == 0
    assert res.summaries.points[0] == (labels == 0).sum() - 2


def test_empty_and_no_clusters():
    res = pool_regions(np.zeros((0, 3), np.float32), np.zeros(0, bool), np.zeros(0, np.int32))
    assert res.region.shape == (0,) and res.n_regions == 0 and res.dropped.total == 0
    xyz = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    res = pool_regions(xyz, np.zeros(50, bool), np.full(50, -1, np.int32))
    assert (res.region == -1).all() and res.n_regions == 0


def test_ground_result_input():
    xyz, gmask, labels, names = _scene(2)
    g = GroundResult(mask=gmask, height=(xyz[:, 2] + SENSOR).astype(np.float32),
                     patch=np.zeros(len(xyz), np.int16), planes=np.array([[0, 0, 1, SENSOR]], float),
                     fitted=np.ones(1, bool), global_plane=np.array([0, 0, 1, SENSOR], float), global_fitted=True)
    a = pool_regions(xyz, g, labels)
    b = pool_regions(xyz, gmask, labels)
    np.testing.assert_array_equal(a.region, b.region)
    np.testing.assert_array_equal(a.cluster_reason, b.cluster_reason)


def test_bad_inputs():
    xyz = np.zeros((10, 3), np.float32)
    with pytest.raises(InputError):
        pool_regions(xyz, np.zeros(10, bool), np.zeros(9, np.int32))
    with pytest.raises(InputError):
        pool_regions(xyz, np.zeros(9, bool), np.zeros(10, np.int32))
    with pytest.raises(InputError):
        pool_regions(xyz, np.zeros(10, bool), np.zeros(10, np.float32))
    with pytest.raises(InputError):
        pool_regions(np.zeros((10, 2)), np.zeros(10, bool), np.zeros(10, np.int32))


def test_cluster_whose_points_are_all_excluded():
    """A label whose points are all ground or non-finite is not a region, not counted as dropped."""
    xyz, gmask, labels, _ = _scene(3)
    lab = labels.copy()
    lab[np.flatnonzero(gmask)[:10]] = 8  # cluster 8: only ground points
    lab[np.flatnonzero(gmask)[10:12]] = 9  # cluster 9: only non-finite points
    bad = xyz.copy()
    bad[np.flatnonzero(gmask)[10:12]] = np.nan
    gm = gmask.copy()
    gm[np.flatnonzero(gmask)[10:12]] = False
    res = pool_regions(bad, gm, lab, PROTO)
    assert res.cluster_region[8] == -1 and res.cluster_region[9] == -1
    assert res.cluster_reason[8] == 0 and res.cluster_reason[9] == 0
    assert res.n_regions == 2 and res.dropped.total == 6


@pytest.mark.parametrize("seed", range(3))
def test_area_bounds_decide_as_the_rectangle_would(seed):
    """Clusters whose octagon of extreme points exceeds max_area (or whose axis-aligned box is under min_area)
    skip the hull: the reason must be the one the minimum-area rectangle gives, for footprints around both
    thresholds, rotated and elongated."""
    rng = np.random.default_rng(100 + seed)
    cfg = PROTO
    pts, labels, areas = [], [], []
    for k in range(60):
        target = cfg.max_area if k % 2 else cfg.min_area
        aspect = rng.uniform(1, 6)
        long_side = math.sqrt(target * rng.uniform(0.6, 1.6) * aspect)
        size = (long_side, long_side / aspect, 1.0)
        center = rng.uniform(5, 30, 2) * rng.choice([-1, 1], 2)  # off the ego box
        b = _box(rng, center, size, n=int(rng.integers(6, 120)), yaw=rng.uniform(-3, 3), z0=0.0)
        pts.append(b)
        labels.append(np.full(len(b), k))
        _, s, _ = min_area_rect(b[:, :2])
        areas.append(s[0] * s[1])
    xyz = np.concatenate(pts).astype(np.float64)
    labels = np.concatenate(labels).astype(np.int32)
    res = pool_regions(xyz, np.zeros(len(xyz), bool), labels, cfg)
    for k, area in enumerate(areas):
        got = "kept" if res.cluster_reason[k] == 0 else REASONS[res.cluster_reason[k] - 1]
        if area > cfg.max_area:
            assert got == "too_large", (k, area, got)
        elif area < cfg.min_area:
            assert got == "too_small", (k, area, got)
        else:
            assert got in ("kept", "too_thin"), (k, area, got)
    assert {"too_large", "too_small"} <= {REASONS[r - 1] for r in res.cluster_reason if r}


@pytest.mark.parametrize("seed", range(3))
def test_length_bound_decides_as_the_rectangle_would(seed):
    """Thin clusters around max_length, rotated: too_large exactly when the rectangle's long side is above it,
    whether the axis-aligned bound skipped the hull or not (defaults: no area, ratio or size floor)."""
    rng = np.random.default_rng(200 + seed)
    cfg = PoolingConfig()
    pts, labels, longs = [], [], []
    for k in range(40):
        size = (cfg.max_length * rng.uniform(0.7, 1.5), rng.uniform(0.05, 0.5), 1.0)
        center = rng.uniform(25, 60, 2) * rng.choice([-1, 1], 2)
        b = _box(rng, center, size, n=int(rng.integers(6, 200)), yaw=rng.uniform(-3, 3), z0=0.0)
        pts.append(b)
        labels.append(np.full(len(b), k))
        longs.append(min_area_rect(b[:, :2])[1][0])
    xyz = np.concatenate(pts).astype(np.float64)
    res = pool_regions(xyz, np.zeros(len(xyz), bool), np.concatenate(labels).astype(np.int32), cfg)
    got = ["kept" if r == 0 else REASONS[r - 1] for r in res.cluster_reason]
    assert got == ["too_large" if ln > cfg.max_length else "kept" for ln in longs]
    assert {"too_large", "kept"} == set(got)


def test_defaults_keep_what_road_objects_look_like():
    """The defaults keep a pedestrian, a traffic cone, a bus seen from one side (a thin 12 m strip), a 4.5 m
    high truck and a crane's 7 m boom -- all dropped by the prototype's thresholds -- and still drop a 30 m wall,
    a 70 m^2 building footprint and a 12 m tree."""
    rng = np.random.default_rng(3)
    specs = [  # (center, size l, w, h, keep)
        ((8, 3), (0.5, 0.4, 1.75), True),  # pedestrian: 0.2 m^2 < 0.25
        ((6, -4), (0.3, 0.3, 0.7), True),  # traffic cone
        ((-15, 6), (12.0, 0.15, 3.2), True),  # bus side: 1.8 m^2, side ratio 0.0125 < 0.1
        ((20, -8), (8.0, 2.5, 4.5), True),  # truck, 4.5 m high: kept by both
        ((-25, -12), (6.0, 2.8, 7.0), True),  # construction vehicle with a raised boom: above 4.84 m
        ((30, 20), (30.0, 0.3, 2.0), False),  # wall: longer than 20 m
        ((-30, 25), (10.0, 7.0, 3.0), False),  # building: 70 m^2
        ((12, 30), (3.0, 3.0, 12.0), False),  # tree: higher than 8 m
    ]
    pts, labels = [], []
    for k, (c, size, _) in enumerate(specs):
        b = _box(rng, c, size, n=300)
        pts.append(b)
        labels.append(np.full(len(b), k))
    xyz = np.concatenate(pts)
    labels = np.concatenate(labels).astype(np.int32)
    new = pool_regions(xyz, np.zeros(len(xyz), bool), labels)
    assert [r == 0 for r in new.cluster_reason] == [keep for *_, keep in specs]
    old = pool_regions(xyz, np.zeros(len(xyz), bool), labels, PROTO)
    assert [r == 0 for r in old.cluster_reason[:5]] == [False, False, False, True, False]
