"""The LiDAR spoofing attack (train.eval.spoof): the fake car's points and the false-positive scorer."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shared.errors import ConfigError, InputError
from train.eval.spoof import CAR_SIZE_LWH, GROUND_Z, car_box, near_box, spoof_car, spoof_false_positive

N15 = "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951"


def scene(n=5000, seed=0) -> np.ndarray:
    """Ground points around the sensor plus a wall 40 m ahead (y = 40), columns x, y, z, intensity, time lag."""
    rng = np.random.default_rng(seed)
    ground = np.stack([rng.uniform(-40, 40, n), rng.uniform(-40, 40, n), np.full(n, GROUND_Z)], 1)
    wall = np.stack([rng.uniform(-10, 10, n), np.full(n, 40.0), rng.uniform(-1.8, 3, n)], 1)
    xyz = np.concatenate([ground, wall])
    extra = np.stack([rng.integers(0, 100, 2 * n), rng.uniform(0, 0.5, 2 * n)], 1)
    return np.concatenate([xyz, extra], 1).astype(np.float32)


def surface_distance(p: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each point to the box surface, outward normal (sensor frame) of the nearest face)."""
    c, s = math.cos(box[6]), math.sin(box[6])
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])
    q = (p[:, :3] - box[:3]) @ rot.T
    half = np.array([box[4], box[3], box[5]]) / 2
    gap = np.abs(np.abs(q) - half)  # distance to each face's plane
    inside_face = np.abs(q) <= half + 1e-3
    gap = np.where(np.roll(inside_face, 1, 1) & np.roll(inside_face, 2, 1), gap, np.inf)
    axis = gap.argmin(1)
    normal = np.zeros_like(q)
    normal[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
    return gap.min(1), normal @ rot


@pytest.mark.fixtures
def test_forward_is_plus_y_in_the_lidar_frame(fixtures_dir):
    calib = json.loads((fixtures_dir / "nuscenes" / f"{N15}.calib.json").read_text())
    rot = np.array(calib["lidar2ego"])[:3, :3]
    np.testing.assert_allclose(rot @ [0, 1, 0], [1, 0, 0], atol=0.03)  # LiDAR +y = ego +x (forward)
    np.testing.assert_allclose(rot @ [1, 0, 0], [0, -1, 0], atol=0.03)  # LiDAR +x = ego -y (right)


def test_car_box_in_box_fields_order():
    np.testing.assert_allclose(car_box(12.0), [0, 12, GROUND_Z + 0.8, 1.9, 4.5, 1.6, math.pi / 2, 0, 0], atol=1e-12)
    b = car_box(10.0, bearing_deg=90)  # to the left = -x
    assert b[0] == pytest.approx(-10) and b[1] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("range_m, bearing", [(8.0, 0.0), (15.0, 20.0), (25.0, -35.0)])
def test_spoofed_points_lie_on_the_faces_that_face_the_sensor(range_m, bearing):
    x = scene()
    out = spoof_car(x, range_m, np.random.default_rng(1), n_points=10000, bearing_deg=bearing, range_noise=0.0)
    fake = out.points[out.spoofed]
    assert len(fake) > 10
    dist, normal = surface_distance(fake, out.box)
    assert dist.max() < 1e-3  # on the surface
    assert ((normal * (0 - fake[:, :3])).sum(1) > 0).all()  # on faces whose outside is towards the sensor
    horiz = np.hypot(fake[:, 0], fake[:, 1])
    half_diag = math.hypot(*CAR_SIZE_LWH[:2]) / 2
    assert (np.abs(horiz - range_m) <= half_diag + 1e-3).all()  # within the chosen range, +- the car
    assert np.median(horiz) < range_m  # mostly the near side
    assert (fake[:, 2] >= GROUND_Z - 1e-3).all() and (fake[:, 2] <= GROUND_Z + 1.6 + 1e-3).all()
    # the returns lie on the HDL-32E's beams
    el = np.degrees(np.arctan2(fake[:, 2], horiz))
    assert np.abs((el + 30.67) / (41.34 / 31) - np.rint((el + 30.67) / (41.34 / 31))).max() < 1e-3


def test_budget_layout_and_determinism():
    x = scene()
    a = spoof_car(x, 10.0, np.random.default_rng(5), n_points=60)
    b = spoof_car(x, 10.0, np.random.default_rng(5), n_points=60)
    np.testing.assert_array_equal(a.points, b.points)
    assert a.spoofed.sum() == 60 and a.points.dtype == np.float32 and a.points.shape[1] == 5
    np.testing.assert_array_equal(a.points[~a.spoofed], x)  # the real points first, unchanged
    fake = a.points[a.spoofed]
    assert (fake[:, 3] == np.median(x[:, 3])).all() and (fake[:, 4] == 0).all()
    dist, _ = surface_distance(fake, a.box)
    assert dist.max() < 0.1  # 2 cm range noise: within 5 standard deviations
    everything = spoof_car(x, 40.0 - 5, np.random.default_rng(5), n_points=100000)
    assert 0 < everything.spoofed.sum() < 100000  # fewer hits than the budget: all of them


def test_remove_occluded_drops_what_the_car_hides():
    x = scene()
    out = spoof_car(x, 10.0, np.random.default_rng(0), remove_occluded=True)
    assert out.removed > 0 and len(out.points) == len(x) - out.removed + out.spoofed.sum()
    real = out.points[~out.spoofed]
    # no remaining real point is behind the car on a ray through it: its azimuth/elevation is outside the shadow
    # of the car, or it is in front of the car
    from train.eval.spoof import ray_box_hits

    r = np.linalg.norm(real[:, :3], axis=1)
    assert (ray_box_hits(real[:, :3] / r[:, None], out.box) >= r - 1e-6).all()
    assert spoof_car(x, 10.0, np.random.default_rng(0)).removed == 0


@pytest.mark.fixtures
def test_spoof_on_a_real_scan(fixtures_dir):
    x = np.fromfile(fixtures_dir / "nuscenes" / f"{N15}.pcd.bin", dtype=np.float32).reshape(-1, 5)
    out = spoof_car(x, 10.0, np.random.default_rng(0))
    assert out.spoofed.sum() == 200 and len(out.points) == len(x) + 200
    assert (out.points[out.spoofed, 1] > 7).all()  # ahead (+y)


@pytest.mark.parametrize("kw, field", [({"range_m": 0.0}, "range_m"), ({"range_m": -3.0}, "range_m"),
                                       ({"n_points": 0}, "n_points"), ({"range_noise": -1.0}, "range_noise")])
def test_bad_spoof_settings_are_config_errors(kw, field):
    args = {"range_m": 10.0, **kw}
    with pytest.raises(ConfigError) as e:
        spoof_car(scene(10), args.pop("range_m"), np.random.default_rng(0), **args)
    assert e.value.field == field


def test_fp_scorer_counts_a_detection_at_the_box_not_10m_away():
    box = car_box(10.0)
    at = np.array([[0.3, 10.5, -1.0, 1.9, 4.5, 1.6, 1.5, 0, 0]])
    away = np.array([[0.0, 20.0, -1.0, 1.9, 4.5, 1.6, 1.5, 0, 0]])
    assert spoof_false_positive(at, [0], [0.9], box)
    assert not spoof_false_positive(away, [0], [0.9], box)
    assert not spoof_false_positive(at, [0], [0.1], box)  # below the score threshold
    assert spoof_false_positive(at, [0], [0.1], box, score_threshold=0.05)
    assert not spoof_false_positive(at, [8], [0.9], box, classes=[0])  # only cars counted
    assert spoof_false_positive(np.concatenate([away, at]), [0, 0], [0.9, 0.5], box)
    assert not spoof_false_positive(np.zeros((0, 9)), [], [], box)
    edge = np.array([[0.0, 12.0, 0, 1, 1, 1, 0, 0, 0]])  # exactly 2 m: counted; 2.01 m: not
    assert spoof_false_positive(edge, [0], [1.0], box)
    assert not spoof_false_positive(edge + [0, 0.01, 0, 0, 0, 0, 0, 0, 0], [0], [1.0], box)
    np.testing.assert_array_equal(near_box(np.concatenate([away, at]), box), [False, True])
    with pytest.raises(InputError, match="differ in length"):
        spoof_false_positive(at, [0, 1], [0.9], box)
    with pytest.raises(ConfigError):
        spoof_false_positive(at, [0], [0.9], box, distance_m=0)
