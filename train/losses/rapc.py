"""Region-aware point contrast (RAPC), the scene-level half of the PRC loss (METHOD.md section 2).

The positive of sampled point i of view 1 is point i of view 2; its InfoNCE term over the valid sampled points k of
the scan in view 2 is

    l_i = -log( exp(s(i,i)) / sum_k exp(s(i,k)) ),   s(a, b) = z1_a . z2_b / tau,

and the terms are weighted so that every region of the scan, and the scan's semantic-less set as one group,
counts equally:

    L_scan = (1/|R|) sum_{S in R} (1/N_S) sum_{i in S} l_i       (weights: :func:`region_weights`).

The batch loss is the mean of L_scan over the scans with at least one valid point. Directional like PLRC;
``PRCModel`` symmetrises it.
"""
from __future__ import annotations

import torch

from .plrc import _check, masked_log_softmax


def region_weights(region: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-point RAPC weights.

    Args:
        region: (B, K) int64 region id, -1 semantic-less (the -1 points of a scan form one group).
        valid: (B, K) bool.
    Returns:
        (B, K) ``dtype``, ``1 / (|R_b| * N_S)`` for a valid point of group S in scan b, 0 for invalid points: each
        group of a scan sums to ``1 / |R_b|``, each scan with a valid point to 1.
    """
    w = torch.zeros(region.shape, dtype=dtype, device=region.device)
    for b in range(region.shape[0]):
        sel = valid[b].bool()
        if not bool(sel.any()):
            continue
        _, inverse, counts = torch.unique(region[b][sel], return_inverse=True, return_counts=True)
        w[b, sel] = 1.0 / (counts[inverse].to(dtype) * counts.numel())
    return w


def rapc_loss(z1: torch.Tensor, z2: torch.Tensor, region: torch.Tensor, valid: torch.Tensor,
              tau: float = 0.1) -> torch.Tensor:
    """RAPC loss, view 1 points against view 2 candidates.

    Args:
        z1: (B, K, D) float, L2-normalised embeddings of the K sampled points in view 1.
        z2: (B, K, D) float, the same points (same order) in view 2.
        region: (B, K) int64 region id, -1 for semantic-less.
        valid: (B, K) bool, sampled points that take part.
        tau: temperature.
    Returns:
        () scalar, float32 (float64 for float64 inputs).
    """
    _check(z1, z2, region, valid, tau)
    valid = valid.bool()
    return rapc_from_log_probs(masked_log_softmax(z1, z2, valid, tau), region, valid)


def rapc_from_log_probs(logp: torch.Tensor, region: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """RAPC from precomputed log-probabilities (lets PRCModel share them with PLRC).

    Args:
        logp: (B, K, K) float, :func:`masked_log_softmax` of view 1 points (rows) against view 2 candidates.
        region: (B, K) int64; valid: (B, K) bool (as in :func:`rapc_loss`).
    Returns:
        () scalar of logp's dtype.
    """
    valid = valid.bool()
    nll = -torch.diagonal(logp, dim1=1, dim2=2)  # (B, K)
    w = region_weights(region, valid, nll.dtype)
    per_scan = torch.where(valid, w * nll, torch.zeros_like(nll)).sum(-1)  # (B,)
    has = valid.any(-1)
    if not bool(has.any()):
        return logp.sum() * 0.0
    return per_scan[has].mean()
