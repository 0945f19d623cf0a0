"""Robustness toolkit: seeded corruptions of LiDAR points and camera images (:mod:`.lidar`, :mod:`.camera`),
after nuScenes-C (Dong et al., CVPR 2023), Robo3D (Kong et al., ICCV 2023), RoboBEV (Xie et al., 2023) and
ImageNet-C (Hendrycks & Dietterich, ICLR 2019); the LiDAR spoofing attack is :mod:`train.eval.spoof`.

Every corruption is a pure function ``f(x, severity, rng)`` with ``severity`` in 1..5 and ``rng`` a
``numpy.random.Generator`` (the same generator state gives the same output). :data:`LIDAR_CORRUPTIONS` and
:data:`CAMERA_CORRUPTIONS` are the CLI's ``--corrupt`` choices (a plain name -> function dict). Formulas, tables
and sources: docs/robustness.md.

One call per keyframe::

    rng = keyframe_rng(seed, sample_token)
    out = LIDAR_CORRUPTIONS[name](points, severity, rng)      # CorruptedPoints
    points, labels = out.points, np.where(out.altered, IGNORE, labels[out.source])   # (segmentation)
    images = [CAMERA_CORRUPTIONS[cam_name](img, severity, rng) for img in images]     # (3, H, W) uint8 each
"""
from __future__ import annotations

from train.eval.robustness.camera import (brightness, camera_gaussian_noise, low_light, motion_blur,
                                          occlusion_patches)
from train.eval.robustness.common import SEVERITIES, check_severity, keyframe_rng
from train.eval.robustness.lidar import (CorruptedPoints, beam_missing, crosstalk, fog, hdl32e_beam,
                                         motion_distortion, point_dropping, snow)

#: ``calico eval --corrupt NAME`` choices for the LiDAR: name -> ``f(points, severity, rng) -> CorruptedPoints``.
LIDAR_CORRUPTIONS = {
    "beam_missing": beam_missing,
    "point_dropping": point_dropping,
    "fog": fog,
    "snow": snow,
    "crosstalk": crosstalk,
    "motion_distortion": motion_distortion,
}

#: ``--corrupt NAME`` choices for the cameras: name -> ``f(image (3, H, W) uint8 tensor, severity, rng) -> image``.
CAMERA_CORRUPTIONS = {
    "brightness": brightness,
    "low_light": low_light,
    "gaussian_noise": camera_gaussian_noise,
    "motion_blur": motion_blur,
    "occlusion": occlusion_patches,
}

__all__ = ["CAMERA_CORRUPTIONS", "LIDAR_CORRUPTIONS", "SEVERITIES", "CorruptedPoints", "beam_missing",
           "brightness", "camera_gaussian_noise", "check_severity", "crosstalk", "fog", "hdl32e_beam",
           "keyframe_rng", "low_light", "motion_blur", "motion_distortion", "occlusion_patches", "point_dropping",
           "snow"]
