"""Reading raw LiDAR point files: nuScenes ``.pcd.bin`` (5 float32) and KITTI ``.bin`` (4 float32).

These readers validate what nuscenes-devkit's ``LidarPointCloud.from_file`` does not: a file whose size is
not a whole number of points (truncated), an empty file, non-finite coordinates. They return ``(N, C)``
float32 arrays in the file's point order (devkit returns ``(4, N)`` and drops the ring index).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from shared.errors import InputError

PointFormat = Literal["nuscenes", "kitti"]

#: float32 values per point for each on-disk format.
POINT_DIMS: dict[str, int] = {"nuscenes": 5, "kitti": 4}


def guess_format(path: str | Path) -> PointFormat:
    """``nuscenes`` for ``*.pcd.bin``, else ``kitti`` for ``*.bin``; anything else is an error."""
    name = Path(path).name
    if name.endswith(".pcd.bin"):
        return "nuscenes"
    if name.endswith(".bin"):
        return "kitti"
    raise InputError("unknown point-file format (expected *.pcd.bin or *.bin); pass --format", path)


def load_points(path: str | Path, fmt: PointFormat | None = None) -> np.ndarray:
    """Load a point file as an ``(N, C)`` float32 array (C = 5 for nuScenes, 4 for KITTI).

    Raises :class:`InputError` naming the file when it is missing or truncated (its size is not a multiple of
    ``C * 4`` bytes). An empty file gives a ``(0, C)`` array (an empty sweep, which the stages handle).
    Non-finite values are returned as they are: see :func:`finite_mask`.
    """
    path = Path(path)
    fmt = fmt or guess_format(path)
    if fmt not in POINT_DIMS:
        raise InputError(f"unknown point format {fmt!r} (expected one of {sorted(POINT_DIMS)})", path)
    dims = POINT_DIMS[fmt]
    if not path.is_file():
        raise InputError("point file not found", path)
    size = path.stat().st_size
    if size % (4 * dims):
        raise InputError(
            f"truncated or not a {fmt} point file: {size} bytes is not a multiple of {4 * dims} "
            f"({dims} float32 per point)",
            path,
        )
    data = np.fromfile(path, dtype="<f4")
    return data.reshape(-1, dims).astype(np.float32, copy=False)


def finite_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the points whose x, y, z are all finite."""
    return np.isfinite(points[:, :3]).all(axis=1)


def save_points(path: str | Path, points: np.ndarray) -> None:
    """Write ``(N, C)`` points as little-endian float32, the nuScenes/KITTI layout."""
    np.ascontiguousarray(points, dtype="<f4").tofile(path)
