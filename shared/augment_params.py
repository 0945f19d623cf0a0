"""The stored two-view augmentation record and its pure functions (METHOD.md section 2).

Shared by ``preprocess/`` (which samples and stores the records) and ``train/`` (which applies the stored
records to build the two views), so neither imports the other.

A view is a similarity transform of the LiDAR points about the sensor origin::

    p' = s * Rz(angle) @ F @ p + t,     F = diag(-1 if flip_x else 1, -1 if flip_y else 1, 1)

stored as a float32 record of :data:`PARAM_FIELDS`::

    [angle (radians), scale, flip_x (0/1), flip_y (0/1), tx, ty, tz (metres)]

one row per view, ``(num_views, 7)`` float32. Everything here reads the float32 values of the record, so a
stored record reproduces the views exactly.
"""
from __future__ import annotations

import numpy as np

from shared.errors import ConfigError

#: Columns of the per-view parameter record.
PARAM_FIELDS: tuple[str, ...] = ("angle", "scale", "flip_x", "flip_y", "tx", "ty", "tz")
NUM_PARAMS = len(PARAM_FIELDS)

__all__ = ["NUM_PARAMS", "PARAM_FIELDS", "apply", "apply_inverse", "as_matrix", "inverse_matrix", "records_from_draws"]


def records_from_draws(u: np.ndarray, normal: np.ndarray, rotation_rad: tuple[float, float],
                       scale: tuple[float, float], flip_x_prob: float, flip_y_prob: float,
                       translation_std) -> np.ndarray:
    """Records of :data:`PARAM_FIELDS` from uniform and normal draws: (V, 7) float32.

    u: (V, 4) uniform [0, 1) draws (angle, scale, flip x, flip y); normal: (V, 3) standard normal draws
    (translation). The angle is uniform in ``rotation_rad``, the scale uniform in ``scale``, a flip is on where its
    draw is below its probability, the translation is ``normal * translation_std``. Used by the preprocessing's
    two-view sampler and by the fine-tuning stream's per-epoch augmentation, so both draw records alike.
    """
    u = np.asarray(u, dtype=np.float64)
    normal = np.asarray(normal, dtype=np.float64)
    lo, hi = rotation_rad
    out = np.empty((len(u), NUM_PARAMS), dtype=np.float64)
    out[:, 0] = lo + (hi - lo) * u[:, 0]
    out[:, 1] = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    out[:, 2] = u[:, 2] < flip_x_prob
    out[:, 3] = u[:, 3] < flip_y_prob
    out[:, 4:7] = normal * np.asarray(translation_std, dtype=np.float64) + 0.0  # + 0.0: no -0.0
    return out.astype(np.float32)


def _check_params(params: np.ndarray) -> np.ndarray:
    p = np.asarray(params)
    if p.shape != (NUM_PARAMS,):
        raise ConfigError("augment params", p.shape, f"expected one view's record of shape ({NUM_PARAMS},)")
    p = p.astype(np.float32).astype(np.float64)  # always the stored float32 values
    if not np.isfinite(p).all() or p[1] <= 0 or p[2] not in (0.0, 1.0) or p[3] not in (0.0, 1.0):
        raise ConfigError("augment params", p.tolist(), "need finite values, scale > 0 and flips 0 or 1")
    return p


def _linear(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(p[0]), np.sin(p[0])
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    flip = np.diag([-1.0 if p[2] else 1.0, -1.0 if p[3] else 1.0, 1.0])
    return p[1] * rot @ flip, p[4:7].copy()


def as_matrix(params: np.ndarray) -> np.ndarray:
    """The 4x4 float64 homogeneous matrix of one view's record ``params`` (7,)."""
    a, t = _linear(_check_params(params))
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t
    return m


def inverse_matrix(params: np.ndarray) -> np.ndarray:
    """The inverse of :func:`as_matrix` (4x4 float64), in closed form: ``F Rz(-angle) (p' - t) / s``."""
    p = _check_params(params)
    a, t = _linear(p)
    a_inv = a.T / (p[1] * p[1])  # a = s R F with R F orthogonal, so a^-1 = a^T / s^2
    m = np.eye(4)
    m[:3, :3] = a_inv
    m[:3, 3] = -a_inv @ t
    return m


def _transform(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ConfigError("points", points.shape, "expected an (N, >=3) array")
    out = np.array(points, dtype=np.float32, copy=True)
    xyz = points[:, :3].astype(np.float64)
    out[:, :3] = xyz @ m[:3, :3].T + m[:3, 3]
    return out


def apply(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """One augmented view: ``points`` (N, C) -> new (N, C) float32 with x, y, z transformed, other columns kept."""
    return _transform(points, as_matrix(params))


def apply_inverse(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Undo :func:`apply`: (N, C) -> (N, C) float32 back in the original LiDAR frame."""
    return _transform(points, inverse_matrix(params))
