"""Plain typed records shared by the readers and the preprocessing stages.

Frozen dataclasses of numpy arrays. Conventions (as nuScenes): 4x4 homogeneous transforms named
``a2b`` map points in frame ``a`` to frame ``b`` (``p_b = a2b @ p_a``); timestamps in microseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The six nuScenes cameras, in the order calico uses for camera indices 0..5.
CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)


@dataclass(frozen=True, eq=False)
class CameraCalib:
    """One camera image and its calibration relative to one LiDAR sweep.

    ``lidar2cam`` is the whole chain LiDAR -> ego (LiDAR time) -> global -> ego (camera time) -> camera,
    so it includes the ego motion between the LiDAR and the camera timestamps.
    """

    channel: str
    intrinsic: np.ndarray  # (3, 3) float64
    lidar2cam: np.ndarray  # (4, 4) float64, full chain
    cam2ego: np.ndarray  # (4, 4) float64 (calibrated_sensor of the camera)
    ego2global: np.ndarray  # (4, 4) float64 (ego pose at the camera timestamp)
    width: int
    height: int
    timestamp: int = 0
    image_path: Path | None = None
    token: str = ""


@dataclass(frozen=True, eq=False)
class SweepInfo:
    """One LiDAR sweep (keyframe or not): where its points are and how its frames relate."""

    token: str  # sample_data token ('' for fixture files)
    path: Path
    timestamp: int
    is_key_frame: bool
    lidar2ego: np.ndarray  # (4, 4) float64
    ego2global: np.ndarray  # (4, 4) float64, ego pose at the LiDAR timestamp
    cameras: tuple[CameraCalib, ...] = field(default_factory=tuple)
    scene_token: str = ""
    scene_name: str = ""
    sample_token: str = ""  # the keyframe sample nearest in time (devkit's own sweep.sample_token is the next one)


def transform_from(rotation_wxyz, translation) -> np.ndarray:
    """4x4 transform from a nuScenes quaternion (w, x, y, z) and translation (as in the tables)."""
    from pyquaternion import Quaternion

    m = np.eye(4)
    m[:3, :3] = Quaternion(rotation_wxyz).rotation_matrix
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m
