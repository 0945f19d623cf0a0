"""What one robustness evaluation applies to every keyframe of the evaluation split: a corruption of the LiDAR
points or of the camera images at one severity, and / or the LiDAR spoofing attack (:mod:`train.eval.spoof`).

:class:`EvalCorruption` is the frozen, validated description (``calico eval det|seg --corrupt NAME --severity S
--corrupt-seed K --spoof-range R``); the fine-tuning evaluation stream (:class:`train.data.finetune.FinetuneStream`
``corruption=``) calls :meth:`EvalCorruption.points` on each keyframe's multi-sweep points (in the keyframe's LiDAR
frame, before anything else) and :meth:`EvalCorruption.image` on each decoded camera image (uint8, before the
resize to the network's input). Each keyframe draws from its own generator, ``keyframe_rng(seed, sample token)``
(the image of camera ``c`` from ``keyframe_rng(seed, token + "/" + channel)``), so the corruption of a keyframe does
not depend on the order the keyframes are read in or on the batch size. Segmentation is scored against the map
rasters, which no LiDAR corruption changes (the ignore labels of :class:`CorruptedPoints` concern per-point labels).

The spoofing attack (``spoof_range`` metres ahead, +y of the LiDAR frame): :func:`train.eval.spoof.spoof_car`
appends ``spoof_points`` fake returns on the sensor-facing faces of a car-sized box; detection then reports, over
the keyframes without a real object within ``spoof_distance`` of the fake box (ground truth through
:func:`train.eval.spoof.near_box`), the share with a detection there (:func:`train.eval.spoof.spoof_false_positive`):
``spoof_fp_rate``. A spoof and a corruption may be combined (the corruption first).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.errors import ConfigError
from train.eval.robustness import CAMERA_CORRUPTIONS, LIDAR_CORRUPTIONS
from train.eval.robustness.common import check_severity, keyframe_rng

#: Every ``--corrupt`` name.
CORRUPTIONS = tuple(LIDAR_CORRUPTIONS) + tuple(CAMERA_CORRUPTIONS)


@dataclass(frozen=True)
class EvalCorruption:
    """One robustness setting (module docstring).

    Fields:
        name: a LiDAR (:data:`LIDAR_CORRUPTIONS`) or camera (:data:`CAMERA_CORRUPTIONS`) corruption, or None.
        severity: 1..5 (the corruption's table, docs/robustness.md).
        seed: the generators' seed (with the sample token).
        spoof_range: horizontal distance (m) straight ahead (+y) of the sensor to the spoofed car's box centre
            (None: no spoofing). spoof_points: the attacker's point budget [ours: 200]. spoof_distance: a detection within
            this BEV centre distance of the fake box counts as spoofed [2 m, nuScenes' middle threshold].
        spoof_score: the score a detection needs to count [ours: 0.3].
    """

    name: str | None = None
    severity: int = 1
    seed: int = 0
    spoof_range: float | None = None
    spoof_points: int = 200
    spoof_distance: float = 2.0
    spoof_score: float = 0.3

    def __post_init__(self):
        if self.name is not None and self.name not in CORRUPTIONS:
            raise ConfigError("--corrupt", self.name, f"must be one of {', '.join(CORRUPTIONS)}")
        object.__setattr__(self, "severity", check_severity(self.severity, "--severity"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("--corrupt-seed", self.seed, "must be an integer >= 0")
        if self.spoof_range is not None:
            r = self.spoof_range
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 3.0 <= r <= 100.0:
                raise ConfigError("--spoof-range", r, "must be a distance in metres, 3..100")
        if isinstance(self.spoof_points, bool) or not isinstance(self.spoof_points, int) or self.spoof_points < 1:
            raise ConfigError("spoof_points", self.spoof_points, "must be an integer >= 1")
        for name in ("spoof_distance", "spoof_score"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(name, v, "must be a finite number >= 0")
        if self.name is None and self.spoof_range is None:
            raise ConfigError("--corrupt", None, "give a corruption (--corrupt NAME) or a spoofing range "
                              "(--spoof-range M), or neither option for the clean evaluation")

    @property
    def lidar(self) -> bool:
        """Whether it changes the LiDAR points (a LiDAR corruption or the spoofing attack)."""
        return self.name in LIDAR_CORRUPTIONS or self.spoof_range is not None

    @property
    def camera(self) -> bool:
        """Whether it changes the camera images."""
        return self.name in CAMERA_CORRUPTIONS

    @property
    def tag(self) -> str:
        """A folder-name tag: ``fog-s3``, ``spoof-10m``, ``fog-s3-spoof-10m`` (with ``-seedK`` when seed != 0)."""
        parts = [f"{self.name}-s{self.severity}"] if self.name else []
        if self.spoof_range is not None:
            parts.append(f"spoof-{self.spoof_range:g}m")
        if self.seed:
            parts.append(f"seed{self.seed}")
        return "-".join(parts)

    def points(self, points: np.ndarray, token: str) -> np.ndarray:
        """The keyframe ``token``'s points (N, C) float32 after the LiDAR corruption and then the spoofing."""
        rng = keyframe_rng(self.seed, token)
        if self.name in LIDAR_CORRUPTIONS:
            points = LIDAR_CORRUPTIONS[self.name](points, self.severity, rng).points
        if self.spoof_range is not None:
            from train.eval.spoof import spoof_car

            points = spoof_car(points, float(self.spoof_range), rng, n_points=self.spoof_points).points
        return np.ascontiguousarray(points, np.float32)

    def image(self, image, token: str, channel: str):
        """Camera ``channel``'s decoded image (3, H, W) uint8 of keyframe ``token``, corrupted (or as given)."""
        if self.name not in CAMERA_CORRUPTIONS:
            return image
        return CAMERA_CORRUPTIONS[self.name](image, self.severity, keyframe_rng(self.seed, f"{token}/{channel}"))

    def spoof_box(self) -> np.ndarray:
        """The fake car's box (9,) in the LiDAR frame (:data:`train.data.boxes.BOX_FIELDS`)."""
        from train.eval.spoof import car_box

        if self.spoof_range is None:
            raise ValueError("no spoofing configured")
        return car_box(float(self.spoof_range))


class SpoofTally:
    """Counts, over keyframes, whether the detector reported the spoofed car (module docstring)."""

    def __init__(self, corruption: EvalCorruption):
        self.c = corruption
        self.box = corruption.spoof_box()
        self.scored = self.fooled = self.skipped = 0

    def add(self, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray) -> None:
        """One keyframe: its detections (LiDAR frame, (M, >= 2) boxes, labels, scores) and its ground truth."""
        from train.eval.spoof import near_box, spoof_false_positive

        if len(gt_boxes) and near_box(gt_boxes, self.box, self.c.spoof_distance).any():
            self.skipped += 1  # a real object there: a detection would not be a false positive
            return
        self.scored += 1
        self.fooled += bool(spoof_false_positive(boxes, labels, scores, self.box, score_threshold=self.c.spoof_score,
                                                 distance_m=self.c.spoof_distance))

    def scores(self) -> dict[str, float]:
        """``spoof_fp_rate`` (NaN with no keyframe scored), ``spoof_keyframes``, ``spoof_skipped``."""
        rate = self.fooled / self.scored if self.scored else float("nan")
        return {"spoof_fp_rate": rate, "spoof_keyframes": float(self.scored), "spoof_skipped": float(self.skipped)}
