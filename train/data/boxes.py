"""3-D box targets of a keyframe, the two-view augmentation applied to them, and boxes back to the global frame.

A box set is an ``(M, 9)`` float64 array of :data:`BOX_FIELDS`::

    x, y, z (centre, m), w, l, h (devkit's wlh: width across, length along the heading, height; m),
    yaw (heading about +z from +x, radians, in [-pi, pi)), vx, vy (m/s)

in the LiDAR frame of the keyframe, with an ``(M,)`` int64 class index into :data:`DETECTION_CLASSES` (devkit's
ten detection classes, in devkit's order).

Augmentation (:mod:`shared.augment_params`, ``p' = s Rz(angle) F p + t``) is applied to a box exactly as to the
points inside it: the centre as a point; w, l, h times ``s``; the heading as a direction through the linear
part ``A = s Rz F`` (a flip mirrors it, the rotation adds ``angle``); the velocity as a displacement per second,
``v' = A v`` (rotated, flipped and scaled by ``s``, as mmdetection3d scales velocities with the scene; the
translation does not move it). :func:`augment_boxes_inverse` undoes it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shared import augment_params
from shared.errors import ConfigError, InputError
from shared.records import transform_from

if TYPE_CHECKING:  # pragma: no cover
    from nuscenes.nuscenes import NuScenes

#: Columns of a box set.
BOX_FIELDS: tuple[str, ...] = ("x", "y", "z", "w", "l", "h", "yaw", "vx", "vy")
NUM_BOX_FIELDS = len(BOX_FIELDS)


def _detection_names() -> tuple[str, ...]:
    from nuscenes.eval.detection.constants import DETECTION_NAMES

    return tuple(DETECTION_NAMES)


#: devkit's ten detection classes (``nuscenes.eval.detection.constants.DETECTION_NAMES``): class index i is
#: ``DETECTION_CLASSES[i]``.
DETECTION_CLASSES: tuple[str, ...] = _detection_names()

__all__ = ["BOX_FIELDS", "DETECTION_CLASSES", "GlobalBoxes", "KeyframeBoxes", "NUM_BOX_FIELDS", "augment_boxes",
           "augment_boxes_inverse", "boxes_to_devkit", "horizontal_in_global", "keyframe_boxes", "to_global",
           "transform_boxes", "wrap_angle"]


@dataclass(frozen=True)
class KeyframeBoxes:
    """The annotated boxes of one keyframe in its LiDAR frame.

    Fields:
        boxes: (M, 9) float64, :data:`BOX_FIELDS`.
        labels: (M,) int64 index into :data:`DETECTION_CLASSES`.
        velocity_valid: (M,) bool, False where devkit could not estimate a velocity (vx = vy = 0 there).
        ann_tokens: the M sample_annotation tokens.
    """

    boxes: np.ndarray
    labels: np.ndarray
    velocity_valid: np.ndarray
    ann_tokens: tuple[str, ...]


@dataclass(frozen=True)
class GlobalBoxes:
    """Boxes in the global frame, as the devkit's result format holds them.

    Fields:
        translation: (N, 3) float64 centre; size: (N, 3) float64 wlh; rotation: (N, 4) float64 quaternion w, x, y, z
        (a rotation about +z); velocity: (N, 2) float64 vx, vy; scores: (N,) float; labels: (N,) int64.
    """

    translation: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    velocity: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (np.asarray(a, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != NUM_BOX_FIELDS:
        raise ConfigError("boxes", b.shape, f"expected an (M, {NUM_BOX_FIELDS}) array of {', '.join(BOX_FIELDS)}")
    return b


def _pose(rec: Mapping[str, Any]) -> np.ndarray:
    return transform_from(rec["rotation"], rec["translation"])


def keyframe_boxes(nusc: "NuScenes", sample_token: str, min_points: int = 1) -> KeyframeBoxes:
    """The annotated boxes of keyframe ``sample_token`` in the frame of its LIDAR_TOP sweep.

    Boxes come from devkit's ``nusc.get_sample_data`` (which moves the annotations from the global frame into the
    sensor frame), velocities from ``nusc.box_velocity`` (global; its vx, vy, the part the devkit scores) rotated
    into the same frame; the heading is the box's length axis projected on the LiDAR xy plane; the class from
    ``category_to_detection_name`` (categories outside the ten detection classes are dropped). ``min_points``:
    drop annotations with fewer LiDAR + radar points (devkit's ``DetectionEval`` drops the ground truth with
    none; mmdetection3d trains on the same filter). A NaN velocity becomes 0 with ``velocity_valid`` False.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    try:
        sample = nusc.get("sample", sample_token)
    except KeyError:
        raise InputError(f"no sample with token {sample_token!r} in {nusc.version}", nusc.dataroot) from None
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    _, devkit_boxes, _ = nusc.get_sample_data(lidar_sd["token"])
    # devkit's boxes carry no velocity: box_velocity is global, rotated here by (global -> ego -> LiDAR)
    lidar2global = (_pose(nusc.get("ego_pose", lidar_sd["ego_pose_token"]))
                    @ _pose(nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])))
    global2lidar_rot = lidar2global[:3, :3].T
    index = {name: i for i, name in enumerate(DETECTION_CLASSES)}
    rows, labels, valid, tokens = [], [], [], []
    for box in devkit_boxes:
        name = category_to_detection_name(box.name)
        if name is None:
            continue
        ann = nusc.get("sample_annotation", box.token)
        if ann["num_lidar_pts"] + ann["num_radar_pts"] < min_points:
            continue
        vel = np.asarray(nusc.box_velocity(box.token), dtype=np.float64)
        vel = (global2lidar_rot @ np.array([vel[0], vel[1], 0.0]))[:2]  # the devkit scores (vx, vy) only
        ok = bool(np.isfinite(vel).all())
        axis = box.orientation.rotation_matrix[:, 0]  # the length axis, projected on the LiDAR xy plane
        yaw = float(np.arctan2(axis[1], axis[0]))
        rows.append([*box.center, *box.wlh, yaw, *(vel if ok else (0.0, 0.0))])
        labels.append(index[name])
        valid.append(ok)
        tokens.append(box.token)
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, NUM_BOX_FIELDS)
    boxes[:, 6] = wrap_angle(boxes[:, 6])
    return KeyframeBoxes(boxes, np.asarray(labels, dtype=np.int64), np.asarray(valid, dtype=bool), tuple(tokens))


def transform_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Boxes under a 4x4 similarity ``m`` whose linear part is ``s * Q`` (``Q`` orthogonal, keeping the z axis):
    centre ``m @ c``, sizes times ``s``, heading and velocity through the xy linear part (see the module notes).
    (M, 9) -> (M, 9) float64."""
    b = _check_boxes(boxes)
    m = np.asarray(m, dtype=np.float64)
    a = m[:3, :3]
    s = abs(np.linalg.det(a)) ** (1.0 / 3.0)
    out = b.copy()
    out[:, :3] = b[:, :3] @ a.T + m[:3, 3]
    out[:, 3:6] = b[:, 3:6] * s
    heading = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6])], axis=1) @ a[:2, :2].T
    out[:, 6] = wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
    out[:, 7:9] = b[:, 7:9] @ a[:2, :2].T
    return out


def augment_boxes(boxes: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Boxes (M, 9) of one augmented view (``params``: the view's (7,) record of :mod:`shared.augment_params`)."""
    return transform_boxes(boxes, augment_params.as_matrix(params))


def augment_boxes_inverse(boxes: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Undo :func:`augment_boxes`: (M, 9) back in the original LiDAR frame."""
    return transform_boxes(boxes, augment_params.inverse_matrix(params))


def horizontal_in_global(rot: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Global xy of the horizontal (global z = 0) vectors whose LiDAR-frame xy is ``xy`` (N, 2), for the LiDAR ->
    global rotation ``rot`` (3, 3): the LiDAR-frame vector is ``(x, y, z)`` with z chosen so that ``rot @ v`` has
    no z. Exact for the devkit's boxes, which turn about the global +z only, also when the ego vehicle pitches or
    rolls (dropping z instead errs by the tilt, 2e-3 rad on the generated data)."""
    xy = np.asarray(xy, dtype=np.float64)
    z = -(xy @ rot[2, :2]) / rot[2, 2]
    return (np.concatenate([xy, z[:, None]], axis=1) @ rot.T)[:, :2]


def to_global(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, lidar2ego: np.ndarray,
              ego2global: np.ndarray) -> GlobalBoxes:
    """LiDAR-frame boxes (M, 9) of a keyframe in the global frame through its poses (4x4 float64 each, as
    :class:`shared.records.SweepInfo` holds them): centre ``ego2global @ lidar2ego @ c``; heading and velocity
    through :func:`horizontal_in_global`; the rotation as a quaternion (w, x, y, z) about +z."""
    b = _check_boxes(boxes)
    t = np.asarray(ego2global, dtype=np.float64) @ np.asarray(lidar2ego, dtype=np.float64)
    r = t[:3, :3]
    centre = b[:, :3] @ r.T + t[:3, 3]
    heading = horizontal_in_global(r, np.stack([np.cos(b[:, 6]), np.sin(b[:, 6])], axis=1))
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    zero = np.zeros(len(b))
    quat = np.stack([np.cos(yaw / 2), zero, zero, np.sin(yaw / 2)], axis=1)
    return GlobalBoxes(centre, b[:, 3:6].copy(), quat, horizontal_in_global(r, b[:, 7:9]),
                       np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64))


def boxes_to_devkit(boxes: np.ndarray, labels: np.ndarray | None = None) -> list[Any]:
    """devkit ``Box`` objects of a box set (for devkit's geometry helpers, e.g. ``points_in_box``)."""
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    b = _check_boxes(boxes)
    names: Mapping[int, str] = dict(enumerate(DETECTION_CLASSES))
    return [Box(row[:3], row[3:6], Quaternion(axis=[0.0, 0.0, 1.0], angle=row[6]), velocity=(row[7], row[8], 0.0),
                name=names[int(labels[i])] if labels is not None else None) for i, row in enumerate(b)]
