"""LiDAR spoofing: a fake car's visible surface injected in front of the ego vehicle, and the false-positive test.

The attack model of Cao et al. ("Adversarial sensor attack on LiDAR-based perception in autonomous driving",
CCS 2019) and Sun et al. ("Towards robust LiDAR-based perception in autonomous driving: general black-box
adversarial sensor attack and countermeasures", USENIX Security 2020): an attacker fires laser pulses into the
victim's LiDAR so that it records a few hundred extra returns shaped like the near surface of a vehicle; a detector
that reports a car there has been spoofed. See docs/robustness.md.

Frame: nuScenes' LIDAR_TOP frame has x to the right, y forward and z up (the fixture calibration's lidar2ego
rotation maps LiDAR +y to ego +x, the driving direction; the fixtures README says the same), so "in front" is +y.
Boxes are in :data:`train.data.boxes.BOX_FIELDS` order ``x, y, z, w, l, h, yaw, vx, vy`` (yaw about +z from +x).

* :func:`spoof_car`: ray-cast the HDL-32E's beams (32 elevations, 0.33 degree azimuth steps, as the nuScenes scans
  have 1084 returns per ring) against a car-sized box at ``range_m`` and bearing ``bearing_deg``; the first hits are
  the visible faces; ``n_points`` of them (drawn uniformly when there are more) become the spoofed returns.
* :func:`spoof_false_positive`: is there a detection with ``score >= score_threshold`` whose centre is within
  ``distance_m`` (2 m, BEV centre distance as nuScenes' matching, its middle threshold) of the spoofed box?
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.errors import ConfigError, InputError
from train.eval.robustness.common import check_points, check_rng
from train.eval.robustness.lidar import HDL32E_ELEVATIONS_DEG

#: A mid-size car (l, w, h), m.
CAR_SIZE_LWH = (4.5, 1.9, 1.6)
#: Ground height in the LiDAR frame, m (the LiDAR is 1.84 m above the ground on nuScenes; the fixture scans' ground
#: lies at -1.77 and -1.81 m).
GROUND_Z = -1.8
#: Azimuth step of the ray casting, degrees (360 / 1084, the returns per ring of a nuScenes scan).
AZIMUTH_STEP_DEG = 360.0 / 1084


@dataclass(frozen=True)
class SpoofedScan:
    """Fields: points (M, C) float32, the input's layout, the spoofed returns appended last; box (9,) float64 the
    spoofed car in BOX_FIELDS order (velocity 0); spoofed (M,) bool, True on the injected rows; removed (int) real
    points dropped as occluded by the car (0 unless ``remove_occluded``)."""

    points: np.ndarray
    box: np.ndarray
    spoofed: np.ndarray
    removed: int


def _positive(name: str, v, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v) \
            or (v < 0 if allow_zero else v <= 0):
        raise ConfigError(name, v, "must be a finite number " + (">= 0" if allow_zero else "> 0"))
    return float(v)


def car_box(range_m: float, bearing_deg: float = 0.0, yaw: float = math.pi / 2, size_lwh=CAR_SIZE_LWH,
            ground_z: float = GROUND_Z) -> np.ndarray:
    """(9,) BOX_FIELDS box of a car standing on ``ground_z`` with its centre ``range_m`` m (horizontal) from the
    sensor at bearing ``bearing_deg`` (0: straight ahead, +y; positive to the left, towards -x); heading ``yaw``
    (default pi/2: along +y, the ego vehicle's direction)."""
    r = _positive("range_m", range_m)
    if not math.isfinite(bearing_deg) or not math.isfinite(yaw) or not math.isfinite(ground_z):
        raise ConfigError("bearing_deg/yaw/ground_z", (bearing_deg, yaw, ground_z), "must be finite")
    length, width, height = (_positive(f"size_lwh[{i}]", v) for i, v in enumerate(size_lwh))
    b = math.radians(bearing_deg)
    return np.array([-r * math.sin(b), r * math.cos(b), ground_z + height / 2, width, length, height, yaw, 0.0, 0.0])


def ray_box_hits(directions: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(R,) distance along each unit ray from the origin to its first intersection with ``box`` (BOX_FIELDS, a
    rotation about z), ``inf`` where it misses (slab method in the box frame)."""
    c, s = math.cos(box[6]), math.sin(box[6])
    rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # sensor -> box frame (x along the length)
    origin = rot @ (-np.asarray(box[:3], dtype=np.float64))
    d = directions @ rot.T
    half = np.array([box[4], box[3], box[5]]) / 2  # l, w, h halves along box x, y, z
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - origin) / d
        t2 = (half - origin) / d
    t1 = np.where(d == 0, np.where(np.abs(origin) <= half, -np.inf, np.inf), t1)
    t2 = np.where(d == 0, np.where(np.abs(origin) <= half, np.inf, -np.inf), t2)
    near = np.minimum(t1, t2).max(axis=1)
    far = np.maximum(t1, t2).min(axis=1)
    hit = (near <= far) & (far > 0)
    return np.where(hit, np.maximum(near, 0.0), np.inf)


def spoof_car(points, range_m: float, rng: np.random.Generator, *, n_points: int = 200, bearing_deg: float = 0.0,
              yaw: float = math.pi / 2, size_lwh=CAR_SIZE_LWH, ground_z: float = GROUND_Z,
              range_noise: float = 0.02, intensity: float | None = None, remove_occluded: bool = False) -> SpoofedScan:
    """Inject a spoofed car into ``points`` ((N, C >= 4) float32, LiDAR frame) at ``range_m`` m ahead.

    The spoofed returns are the first hits of the HDL-32E rays (:data:`HDL32E_ELEVATIONS_DEG` x
    :data:`AZIMUTH_STEP_DEG` steps) on :func:`car_box`, so they lie on the faces that face the sensor (the rear, a
    side when off-axis, the roof seen from above); ``n_points`` of them drawn uniformly without replacement when
    there are more (the attacker's budget; all of them when fewer), each moved along its ray by ``N(0,
    range_noise^2)`` (the HDL-32E's ~2 cm range accuracy). New rows: intensity ``intensity`` (default the median
    intensity of ``points``), extra columns 0 (part of the current sweep: time lag 0).

    ``remove_occluded``: also drop the real points whose ray passes through the car before reaching them (a
    consistent physical scene). Off by default: the attack adds returns, it cannot remove the real ones behind the
    fake car, which is the missing-shadow pattern Sun et al.'s defence looks for.
    """
    pts, rng = check_points(points), check_rng(rng)
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ConfigError("n_points", n_points, "must be an integer >= 1")
    noise = _positive("range_noise", range_noise, allow_zero=True)
    box = car_box(range_m, bearing_deg, yaw, size_lwh, ground_z)
    # rays over the azimuths the box can subtend (its circumscribed circle), all 32 elevations
    centre_az = math.atan2(box[1], box[0])
    half_diag = math.hypot(box[3], box[4]) / 2
    reach = math.asin(min(1.0, half_diag / max(math.hypot(box[0], box[1]), 1e-9)))
    step = math.radians(AZIMUTH_STEP_DEG)
    az = centre_az + np.arange(-math.ceil(reach / step) - 1, math.ceil(reach / step) + 2) * step
    el = np.radians(HDL32E_ELEVATIONS_DEG)
    a, e = np.meshgrid(az, el, indexing="ij")
    dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
    t = ray_box_hits(dirs, box)
    hit = np.flatnonzero(np.isfinite(t))
    if len(hit) == 0:
        raise InputError(f"no HDL-32E beam reaches a car at range {range_m} m (ground_z {ground_z})")
    if len(hit) > n_points:
        hit = np.sort(rng.choice(hit, size=int(n_points), replace=False))
    rng_t = t[hit] + (rng.normal(0.0, noise, size=len(hit)) if noise > 0 else 0.0)
    fake = np.zeros((len(hit), pts.shape[1]), dtype=np.float32)
    fake[:, :3] = dirs[hit] * rng_t[:, None]
    fake[:, 3] = float(np.median(pts[:, 3])) if intensity is None and len(pts) else (intensity or 0.0)
    removed = 0
    if remove_occluded and len(pts):
        r = np.linalg.norm(pts[:, :3].astype(np.float64), axis=1)
        u = pts[:, :3].astype(np.float64) / np.where(r > 0, r, 1.0)[:, None]
        occluded = ray_box_hits(u, box) < r
        removed = int(occluded.sum())
        pts = pts[~occluded]
    out = np.concatenate([pts, fake], axis=0)
    spoofed = np.zeros(len(out), dtype=bool)
    spoofed[len(pts):] = True
    return SpoofedScan(out, box, spoofed, removed)


def _boxes(boxes, n: int | None = None) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0 and (n is None or n == 0):
        return np.zeros((0, 9))
    if b.ndim != 2 or b.shape[1] < 2 or (n is not None and len(b) != n):
        raise InputError(f"boxes: expected an (M, >= 2) array of x, y, ...{'' if n is None else f' with M = {n}'}"
                         f", got shape {b.shape}")
    return b


def near_box(boxes, box, distance_m: float = 2.0) -> np.ndarray:
    """(M,) bool: the BEV centre distance of each of ``boxes`` ((M, >= 2) x, y, ...) to ``box`` is <= ``distance_m``."""
    d = _positive("distance_m", distance_m)
    b = _boxes(boxes)
    return np.hypot(b[:, 0] - box[0], b[:, 1] - box[1]) <= d


def spoof_false_positive(boxes, labels, scores, spoof_box, *, score_threshold: float = 0.3,
                         distance_m: float = 2.0, classes=None) -> bool:
    """Whether the detector fell for the spoof: a detection with ``score >= score_threshold`` whose BEV centre is
    within ``distance_m`` of ``spoof_box`` (and whose label is in ``classes``, default any class: a phantom obstacle
    of any class is a false positive). ``boxes`` (M, >= 2) in the same (LiDAR) frame as ``spoof_box``, ``labels``
    (M,), ``scores`` (M,). The false-positive rate is the mean of this over keyframes; count a keyframe only where
    :func:`near_box` finds no ground-truth box at the spoofed location (else a hit may be a true positive)."""
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1)
    if len(lab) != len(sc):
        raise InputError(f"labels {lab.shape} and scores {sc.shape} differ in length")
    b = _boxes(boxes, len(sc))
    if isinstance(score_threshold, bool) or not math.isfinite(score_threshold):
        raise ConfigError("score_threshold", score_threshold, "must be a finite number")
    ok = near_box(b, spoof_box, distance_m) & (sc >= score_threshold)
    if classes is not None:
        ok &= np.isin(lab, np.asarray(list(classes)))
    return bool(ok.any())
