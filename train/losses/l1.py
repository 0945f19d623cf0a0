"""CenterPoint's L1 regression loss (``RegLoss`` in ``det3d/models/losses/centernet_loss.py``): the regression map
read at each object's centre cell against its target, per channel, summed over objects and divided by their
number."""
from __future__ import annotations

import torch


def gather_at(maps: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) maps read at flat cells ``ind`` (B, K) -> (B, K, D)."""
    b, d = maps.shape[:2]
    return maps.reshape(b, d, -1).gather(2, ind[:, None, :].expand(-1, d, -1)).transpose(1, 2)


def center_l1_loss(regression: torch.Tensor, ind: torch.Tensor, target: torch.Tensor,
                   weight: torch.Tensor) -> torch.Tensor:
    """Per-channel L1 loss at the objects' centre cells.

    Args:
        regression: (B, D, H, W) float predicted maps.
        ind: (B, K) int64 flat centre cell of each slot.
        target: (B, K, D) float targets.
        weight: (B, K, D) float, 1 where a target counts (0 for empty slots, invalid velocities).
    Returns:
        (D,) float: ``sum_k weight * |pred - target| / (number of objects + 1e-4)`` per channel, the number of
        objects being the slots with any weight (CenterPoint's normalisation). Weight the channels and sum to get
        the loss.
    """
    if target.shape != weight.shape or target.shape[:2] != ind.shape or target.shape[2] != regression.shape[1]:
        raise ValueError(f"expected regression (B, D, H, W), ind (B, K), target and weight (B, K, D); got "
                         f"{tuple(regression.shape)}, {tuple(ind.shape)}, {tuple(target.shape)}, {tuple(weight.shape)}")
    pred = gather_at(regression.float(), ind)
    w = weight.float()
    n = (w.amax(dim=2) > 0).sum().to(pred.dtype)
    return ((pred - target.float()).abs() * w).sum(dim=(0, 1)) / (n + 1e-4)
