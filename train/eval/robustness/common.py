"""Validation and seeding shared by the corruptions and the spoofing attack."""
from __future__ import annotations

import zlib

import numpy as np

from shared.errors import ConfigError, InputError

#: The allowed severities.
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def check_severity(severity, field: str = "severity") -> int:
    """``severity`` as an int in :data:`SEVERITIES`, else :class:`ConfigError` naming ``field`` and the choices."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise ConfigError(field, severity, f"must be one of {', '.join(map(str, SEVERITIES))}")
    return int(severity)


def check_rng(rng, field: str = "rng") -> np.random.Generator:
    """``rng`` itself when it is a ``numpy.random.Generator``, else :class:`ConfigError` (no hidden global seed)."""
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(field, type(rng).__name__, "must be a numpy.random.Generator (np.random.default_rng(seed))")
    return rng


def check_points(points, where: str = "points") -> np.ndarray:
    """``points`` as a C-contiguous float32 (N, C >= 4) array (x, y, z, intensity, extra columns...).

    :class:`InputError` when the shape is wrong or a value is not finite (the store and the multi-sweep loader drop
    non-finite points, so a NaN here is a caller's bug; we refuse it rather than guess).
    """
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise InputError(f"{where}: expected an (N, C>=4) array of x, y, z, intensity[, ...], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{where}: expected floating-point points, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise InputError(f"{where}: {int(bad.sum())} of {len(arr)} points have a non-finite value "
                         f"(first at row {int(np.flatnonzero(bad)[0])})")
    return arr


def keyframe_rng(seed: int, key: int | str) -> np.random.Generator:
    """The generator of one keyframe: ``default_rng([seed, k])`` with ``k`` the int ``key`` or the CRC-32 of the
    str ``key`` (e.g. a sample token), so a keyframe's corruption does not depend on the order keyframes are read."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", seed, "must be an integer >= 0")
    k = zlib.crc32(key.encode()) if isinstance(key, str) else int(key)
    if k < 0:
        raise ConfigError("key", key, "must be a str or an integer >= 0")
    return np.random.default_rng([int(seed), k])
