"""Bilinear reading of BEV feature maps at metric xy points.

The map is assumed to cover exactly the xy part of ``point_range`` (see :mod:`train.models.pointpillars`): pixel (i, j)
has its centre at ``(x0 + (j + 0.5) * cell, y0 + (i + 0.5) * cell)``. With ``align_corners=False`` the
normalised ``grid_sample`` coordinate is then simply ``2 * (x - x0) / (x1 - x0) - 1``, consistent with
``PointPillars.xy_to_grid``. Points outside the map read zero-padded values (``padding_mode='zeros'``): callers
should mark them invalid (:func:`in_range`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def normalised_grid(xy: torch.Tensor, point_range: Sequence[float]) -> torch.Tensor:
    """(..., 2) metric xy -> (..., 2) grid_sample coordinates in [-1, 1] over the map (align_corners=False)."""
    lo = xy.new_tensor([point_range[0], point_range[1]])
    hi = xy.new_tensor([point_range[3], point_range[4]])
    return 2.0 * (xy - lo) / (hi - lo) - 1.0


def in_range(xy: torch.Tensor, point_range: Sequence[float]) -> torch.Tensor:
    """(..., 2) metric xy -> (...,) bool: inside the map's xy range (finite, x0 <= x < x1, y0 <= y < y1)."""
    x, y = xy[..., 0], xy[..., 1]
    return (x >= point_range[0]) & (x < point_range[3]) & (y >= point_range[1]) & (y < point_range[4])


def sample_bev_batched(features: torch.Tensor, xy: torch.Tensor, point_range: Sequence[float]) -> torch.Tensor:
    """Bilinear features at K points per scan.

    Args:
        features: (B, C, H, W) float BEV map.
        xy: (B, K, 2) float metric x, y of the points of scan b.
        point_range: (x0, y0, z0, x1, y1, z1) covered by the map.
    Returns:
        (B, K, C) float.
    """
    if features.ndim != 4 or xy.ndim != 3 or xy.shape[0] != features.shape[0] or xy.shape[2] != 2:
        raise ValueError(f"expected features (B, C, H, W) and xy (B, K, 2), got {tuple(features.shape)} "
                         f"and {tuple(xy.shape)}")
    grid = normalised_grid(xy.to(features.dtype), point_range)[:, None]  # (B, 1, K, 2)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :, 0].transpose(1, 2)  # (B, K, C)


def sample_bev(features: torch.Tensor, xy: torch.Tensor, batch_idx: torch.Tensor,
               point_range: Sequence[float]) -> torch.Tensor:
    """Bilinear features at K points of any scans.

    Args:
        features: (B, C, H, W) float BEV map.
        xy: (K, 2) float metric x, y.
        batch_idx: (K,) int64 scan of each point.
        point_range: (x0, y0, z0, x1, y1, z1) covered by the map.
    Returns:
        (K, C) float.
    """
    if xy.ndim != 2 or xy.shape[1] != 2 or batch_idx.shape != xy.shape[:1]:
        raise ValueError(f"expected xy (K, 2) and batch_idx (K,), got {tuple(xy.shape)} and {tuple(batch_idx.shape)}")
    out = features.new_zeros(xy.shape[0], features.shape[1])
    for b in range(features.shape[0]):
        sel = torch.nonzero(batch_idx == b, as_tuple=True)[0]
        if sel.numel():
            out = out.index_put((sel,), sample_bev_batched(features[b:b + 1], xy[sel][None], point_range)[0])
    return out
