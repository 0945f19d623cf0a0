"""shared.region_quality: object-recovery metrics on hand-made sweeps, the devkit's box membership, real data."""
from __future__ import annotations

import numpy as np
import pytest

from shared.errors import ConfigError, InputError
from shared.region_quality import (Boxes, RecoveryRule, boxes_from_devkit, boxes_from_kitti, boxes_from_nuscenes,
                                   classify_misses, evaluate_sweep, points_in_boxes, summarize)

RULE = RecoveryRule()


def box_points(center, size, yaw=0.0, n=100, z_range=(0.0, 1.0), seed=0) -> np.ndarray:
    """n points uniform in the box (size w, l, h) between heights z_range (shares of h from its bottom)."""
    rng = np.random.default_rng(seed)
    w, l, h = size
    loc = np.c_[rng.uniform(-l / 2, l / 2, n) * 0.98, rng.uniform(-w / 2, w / 2, n) * 0.98,
                -h / 2 + h * rng.uniform(*z_range, n)]
    c, s = np.cos(yaw), np.sin(yaw)
    return loc @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + np.asarray(center, dtype=float)


def make_boxes(centers, sizes, yaws=None, cls=None) -> Boxes:
    m = len(centers)
    return Boxes(center=np.array(centers, dtype=float), size=np.array(sizes, dtype=float),
                 yaw=np.zeros(m) if yaws is None else np.array(yaws, dtype=float),
                 cls=np.array(cls or ["car"] * m, dtype=object))


CAR = (2.0, 4.5, 1.6)


def test_one_region_in_its_box_is_recovered():
    pts = box_points((10, 0, -1), CAR, yaw=0.7)
    q = evaluate_sweep(pts, np.full(100, 3), make_boxes([(10, 0, -1)], [CAR], [0.7]))
    o = q.objects
    assert o.counted[0] and o.recovered[0] and o.best_region[0] == 3
    assert o.best_share[0] == 1.0 and o.inside_share[0] == 1.0 and o.n_cover[0] == 1
    assert q.regions.purity.tolist() == [1.0] and q.regions.majority_box.tolist() == [0]
    assert not q.regions.background[0] and q.regions.n_boxes.tolist() == [1]
    s = summarize(q.objects, q.regions)
    assert (s.objects, s.recovered, s.recall, s.over_segmentation, s.under_segmentation) == (1, 1, 1.0, 0.0, 0.0)


def test_split_half_and_half_is_over_segmented_not_recovered():
    pts = box_points((10, 0, -1), CAR)
    region = np.where(pts[:, 0] < 10, 0, 1)  # front and back halves
    q = evaluate_sweep(pts, region, make_boxes([(10, 0, -1)], [CAR]))
    o = q.objects
    assert not o.recovered[0] and o.over_segmented[0] and o.n_cover[0] == 2
    assert 0.3 < o.best_share[0] < 0.7
    assert classify_misses(o).tolist() == ["split"]
    assert summarize(q.objects, q.regions).over_segmentation == 1.0


def test_region_over_two_boxes_is_under_segmented_and_recovers_neither():
    a = box_points((10, 0, -1), CAR, seed=1)
    b = box_points((10, 3, -1), CAR, seed=2)
    wall = np.c_[np.full(30, 10.0), np.linspace(6, 8, 30), np.full(30, -0.5)]  # in no box
    pts = np.vstack([a, b, wall])
    q = evaluate_sweep(pts, np.zeros(len(pts), dtype=int), make_boxes([(10, 0, -1), (10, 3, -1)], [CAR, CAR]))
    o, r = q.objects, q.regions
    assert (o.best_share == 1.0).all() and (o.inside_share < 0.5).all() and not o.recovered.any()
    assert classify_misses(o).tolist() == ["merged", "merged"]
    assert r.n_boxes.tolist() == [2] and r.under_segmented.tolist() == [True]
    assert r.purity[0] == pytest.approx(100 / 230) and r.n_background[0] == 30 and not r.background[0]
    s = summarize(o, r)
    assert s.recall == 0.0 and s.under_segmentation == 1.0 and s.misses == {"merged": 2}


def test_low_points_are_not_scored():
    upper = box_points((10, 0, -1), CAR, n=100, z_range=(0.25, 1.0), seed=3)  # above 0.4 m from the bottom
    low = box_points((10, 0, -1), CAR, n=60, z_range=(0.0, 0.15), seed=4)  # within 0.24 m of the bottom
    pts = np.vstack([upper, low])
    region = np.r_[np.full(100, 0), np.full(60, -1)]
    ground = np.r_[np.zeros(100, bool), np.ones(60, bool)]
    boxes = make_boxes([(10, 0, -1)], [CAR])
    q = evaluate_sweep(pts, region, boxes, ground=ground)
    assert q.objects.n_points[0] == 160 and q.objects.n_scored[0] == 100 and q.objects.recovered[0]
    assert q.objects.n_ground[0] == 60 and q.objects.n_scored_ground[0] == 0
    assert summarize(q.objects, q.regions).ground_share == pytest.approx(60 / 160)
    strict = evaluate_sweep(pts, region, boxes, ground=ground, rule=RecoveryRule(bottom_margin=0.0))
    assert strict.objects.n_scored[0] == 160 and not strict.objects.recovered[0]
    assert classify_misses(strict.objects).tolist() == ["ground"]


@pytest.mark.parametrize("n, counted", [(19, False), (20, True)])
def test_min_points_threshold(n, counted):
    pts = box_points((10, 0, -1), CAR, n=n)
    q = evaluate_sweep(pts, np.zeros(n, dtype=int), make_boxes([(10, 0, -1)], [CAR]))
    assert q.objects.counted[0] == counted and q.objects.recovered[0] == counted
    assert summarize(q.objects, q.regions).objects == int(counted)
    q5 = evaluate_sweep(pts, np.zeros(n, dtype=int), make_boxes([(10, 0, -1)], [CAR]), rule=RecoveryRule(min_points=5))
    assert q5.objects.counted[0]


def test_distance_bands_and_classes():
    centers = [(10, 5, -1), (0, -30, -1), (45, 20, -1), (3, 1, -1)]
    pts = np.vstack([box_points(c, CAR, seed=i) for i, c in enumerate(centers)])
    region = np.repeat([0, 1, 2, -1], 100)  # the last object is missed
    boxes = make_boxes(centers, [CAR] * 4, cls=["car", "bus", "car", "pedestrian"])
    s = summarize(*_tables(evaluate_sweep(pts, region, boxes)))
    assert s.by_distance == {"0-20": (2, 1, 0.5), "20-40": (1, 1, 1.0), "40+": (1, 1, 1.0)}
    assert list(s.by_class) == ["car", "bus", "pedestrian"]  # detection-class order
    assert s.by_class["pedestrian"] == (1, 0, 0.0) and s.recall == 0.75
    assert s.misses_by_class == {"pedestrian": {"unlabelled": 1}}


def _tables(q):
    return q.objects, q.regions


def _random_sweep(seed: int, n_boxes: int):
    """A sweep of cars in a row, each one region, split, merged or unlabelled at random, plus a background wall."""
    rng = np.random.default_rng(seed)
    centers = [(5.0 + 6 * i, rng.uniform(-20, 20), -1.0) for i in range(n_boxes)]
    pts, region, ground = [], [], []
    for i, c in enumerate(centers):
        p = box_points(c, CAR, n=int(rng.integers(10, 200)), seed=seed * 100 + i)
        r = np.full(len(p), i)
        r[rng.random(len(p)) < rng.uniform(0, 0.6)] = 1000 + i  # part in a second region
        g = rng.random(len(p)) < rng.uniform(0, 0.3)
        r[g] = -1
        pts.append(p), region.append(r), ground.append(g)
    wall = np.c_[rng.uniform(0, 60, 300), np.full(300, 25.0), rng.uniform(-1.5, 2, 300)]
    pts.append(wall), region.append(np.full(300, 5000)), ground.append(np.zeros(300, bool))
    return (np.vstack(pts), np.concatenate(region), np.concatenate(ground),
            make_boxes(centers, [CAR] * n_boxes, rng.uniform(-1, 1, n_boxes)))


def test_summary_of_sweeps_is_the_summary_of_their_concatenation():
    sweeps = [_random_sweep(s, n) for s, n in ((1, 3), (2, 8), (3, 5))]
    per = [evaluate_sweep(p, r, b, ground=g) for p, r, g, b in sweeps]
    agg = summarize([q.objects for q in per], [q.regions for q in per])
    # one sweep holding all three, stacked 100 m apart in z (same xy distances), region ids made distinct
    pts = np.vstack([p + [0, 0, 100 * k] for k, (p, _, _, _) in enumerate(sweeps)])
    region = np.concatenate([np.where(r >= 0, r + 10_000 * k, -1) for k, (_, r, _, _) in enumerate(sweeps)])
    ground = np.concatenate([g for _, _, g, _ in sweeps])
    boxes = Boxes(center=np.vstack([b.center + [0, 0, 100 * k] for k, (_, _, _, b) in enumerate(sweeps)]),
                  size=np.vstack([b.size for *_, b in sweeps]), yaw=np.concatenate([b.yaw for *_, b in sweeps]),
                  cls=np.concatenate([b.cls for *_, b in sweeps]))
    whole = summarize(*_tables(evaluate_sweep(pts, region, boxes, ground=ground)))
    _assert_same(agg.to_dict(), whole.to_dict())
    per_recall = [summarize(q.objects, q.regions).recall for q in per]
    assert agg.recall == pytest.approx(agg.recovered / agg.objects)
    assert agg.recall != pytest.approx(np.mean(per_recall))  # a ratio of sums, not a mean of means


def _assert_same(a, b, where="summary"):
    """Equal nested dicts / tuples, floats to rounding (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, nan_ok=True), where
    else:
        assert a == b, where


def test_miss_kinds_dropped_noise_unlabelled_no_scored():
    car = box_points((10, 0, -1), CAR, seed=5)
    flat = box_points((20, 0, -1.7), (1.0, 1.0, 0.2), n=40, seed=6)  # all within 0.3 m of its bottom
    pts = np.vstack([car, flat])
    region = np.full(len(pts), -1)
    boxes = make_boxes([(10, 0, -1), (20, 0, -1.7)], [CAR, (1.0, 1.0, 0.2)])
    reason = np.r_[np.full(100, 4), np.zeros(40, int)]  # the car's cluster dropped by filter 4
    q = evaluate_sweep(pts, region, boxes, ground=np.zeros(len(pts), bool), dropped_reason=reason)
    assert classify_misses(q.objects).tolist() == ["dropped", "no_scored"]
    assert q.objects.dropped_reason.tolist() == [4, 0]
    assert q.objects.n_scored_dropped[0] == q.objects.n_scored[0] == q.objects.n_scored_unlabelled[0] > 0
    s = summarize(q.objects, q.regions, reason_names=("ego", "too_low", "too_high", "too_large"))
    assert s.dropped_reasons == {"too_large": 1} and s.misses == {"no_scored": 1, "dropped": 1}
    assert s.dropped_by_class == {"car": {"too_large": 1}}
    q0 = evaluate_sweep(pts, region, boxes, dropped_reason=np.zeros(len(pts), int))
    assert classify_misses(q0.objects)[0] == "noise"
    assert classify_misses(evaluate_sweep(pts, region, boxes).objects)[0] == "unlabelled"


def test_background_regions_are_left_out_of_purity():
    car = box_points((10, 0, -1), CAR, n=100, seed=7)
    spill = np.c_[np.full(10, 10.0), np.full(10, 1.6), np.full(10, -1.0)]  # 0.6 m beside the car: background
    wall = np.c_[np.linspace(0, 30, 200), np.full(200, 12.0), np.zeros(200)]
    pts = np.vstack([car, spill, wall])
    region = np.r_[np.zeros(110, int), np.ones(200, int)]
    q = evaluate_sweep(pts, region, make_boxes([(10, 0, -1)], [CAR]))
    assert q.regions.background.tolist() == [False, True] and q.regions.majority_box.tolist() == [0, -1]
    s = summarize(q.objects, q.regions)
    assert s.purity == pytest.approx(100 / 110) and s.purity_region_mean == pytest.approx(100 / 110)
    assert s.background_regions == 1 and s.recovered == 1


def test_enlarged_box_counts_for_inside_share():
    car = box_points((10, 0, -1), CAR, n=100, seed=8)
    near = np.c_[np.full(120, 10.0), np.full(120, 1.2), np.linspace(-1.5, -0.5, 120)]  # 0.2 m beside the box
    pts = np.vstack([car, near])
    boxes = make_boxes([(10, 0, -1)], [CAR])
    region = np.zeros(len(pts), int)
    assert evaluate_sweep(pts, region, boxes).objects.recovered[0]
    tight = evaluate_sweep(pts, region, boxes, rule=RecoveryRule(enlarge=0.1)).objects
    assert not tight.recovered[0] and tight.inside_share[0] == pytest.approx(100 / 220)


def test_membership_equals_devkit_points_in_box_on_random_boxes():
    from nuscenes.utils.data_classes import Box
    from nuscenes.utils.geometry_utils import points_in_box
    from pyquaternion import Quaternion

    rng = np.random.default_rng(0)
    dk = []
    for i in range(40):
        q = Quaternion(axis=[0, 0, 1], angle=rng.uniform(-np.pi, np.pi))
        if i % 4 == 0:  # a slightly tilted box too
            q = q * Quaternion(axis=rng.normal(size=3), angle=rng.uniform(0, 0.1))
        dk.append(Box(rng.uniform(-5, 5, 3), rng.uniform(0.3, 6, 3), q, name="vehicle.car"))
    pts = rng.uniform(-9, 9, (20000, 3))
    ours = points_in_boxes(pts, boxes_from_devkit(dk))
    ref = np.stack([points_in_box(b, pts.T) for b in dk], axis=1)
    assert ref.any(axis=0).all() and (ours == ref).all()
    grown = points_in_boxes(pts, boxes_from_devkit(dk), enlarge=0.25)
    assert (grown >= ours).all() and grown.sum() > ours.sum()


def test_devkit_classes():
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    dk = [Box([0, 0, 0], [1, 1, 1], Quaternion(), name=n)
          for n in ("vehicle.car", "animal", "human.pedestrian.adult", "vehicle.bus.rigid")]
    assert boxes_from_devkit(dk).cls.tolist() == ["car", "other", "pedestrian", "bus"]
    assert boxes_from_devkit(dk, other=None).cls.tolist() == ["car", "pedestrian", "bus"]


def test_real_boxes_of_generated_keyframes_match_devkit(synth_nusc):
    from nuscenes.utils.geometry_utils import points_in_box

    from shared.nuscenes_io import iter_lidar_tokens, iter_scenes
    from shared.pointcloud import load_points

    checked = 0
    for scene in list(iter_scenes(synth_nusc))[:2]:
        for tok in list(iter_lidar_tokens(synth_nusc, scene))[:2]:
            path, dk, _ = synth_nusc.get_sample_data(tok)
            pts = load_points(path)[:, :3]
            boxes = boxes_from_nuscenes(synth_nusc, tok)
            assert len(boxes) == len(dk)
            ref = np.stack([points_in_box(b, pts.T) for b in dk], axis=1)
            assert (points_in_boxes(pts, boxes) == ref).all()
            checked += int(ref.sum())
    assert checked > 0
    with pytest.raises(InputError, match="no sample_data"):
        boxes_from_nuscenes(synth_nusc, "not-a-token")


def test_bad_inputs():
    boxes = make_boxes([(10, 0, -1)], [CAR])
    with pytest.raises(InputError, match="region must be"):
        evaluate_sweep(np.zeros((5, 3)), np.zeros(4, int), boxes)
    with pytest.raises(InputError, match="ground must be"):
        evaluate_sweep(np.zeros((5, 3)), np.zeros(5, int), boxes, ground=np.zeros(5))
    with pytest.raises(InputError, match="points must be"):
        evaluate_sweep(np.zeros((5, 2)), np.zeros(5, int), boxes)
    with pytest.raises(InputError, match="same 2 boxes"):
        Boxes(center=np.zeros((2, 3)), size=np.ones((1, 3)), yaw=np.zeros(2), cls=["car", "car"])
    with pytest.raises(ConfigError, match="min_share"):
        RecoveryRule(min_share=1.5)
    with pytest.raises(InputError, match="no ObjectTable"):
        summarize([], [])


def test_no_boxes_and_no_regions():
    q = evaluate_sweep(np.zeros((5, 3)), np.full(5, -1), make_boxes(np.zeros((0, 3)), np.zeros((0, 3))))
    s = summarize(q.objects, q.regions)
    assert len(q.objects) == 0 and len(q.regions) == 0 and s.objects == 0 and np.isnan(s.recall)


@pytest.mark.fixtures
def test_kitti_fixture_scan(fixtures_dir):
    from sklearn.cluster import DBSCAN

    from shared.fixtures import load_kitti_labels
    from shared.pointcloud import load_points

    kitti = fixtures_dir / "kitti"
    label, calib = kitti / "000000.label_2.txt", kitti / "000000.calib.txt"
    boxes = boxes_from_kitti(label, calib)
    raw = load_kitti_labels(label, calib)
    pts = load_points(kitti / "000000.bin")[:, :3]
    assert boxes.cls.tolist() == ["pedestrian"] and len(raw) == 1
    assert (points_in_boxes(pts, boxes)[:, 0] == raw[0].contains(pts)).all()
    near = np.flatnonzero((np.abs(pts[:, :2]) < 25).all(axis=1))  # a crop keeps DBSCAN fast
    pts = pts[near]
    ground = pts[:, 2] < -1.5  # ground lies at about -1.73 m in this scan
    region = np.full(len(pts), -1)
    region[~ground] = DBSCAN(eps=0.75, min_samples=5).fit(pts[~ground, :2]).labels_
    q = evaluate_sweep(pts, region, boxes, ground=ground)
    s = summarize(q.objects, q.regions)
    assert q.objects.counted[0] and s.objects == 1
    for v in (s.recall, s.purity, s.purity_region_mean, s.over_segmentation, s.ground_share, s.unlabelled_share,
              q.objects.best_share[0], q.objects.inside_share[0]):
        assert 0.0 <= v <= 1.0
    assert s.regions == len(np.unique(region[region >= 0]))
