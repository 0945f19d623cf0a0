"""Region-aware distillation (RAD), the loss of CALICO's second stage (METHOD.md section 3).

Student (camera BEV) embedding c_i and teacher (frozen LiDAR BEV) embedding t_i of the same sampled point i, both
read at the point's (x, y), projected and L2-normalised. Each point's contrastive distillation term, its
candidates the teacher embeddings of the valid sampled points k of the same scan:

    d_i = -log( exp(c_i . t_i / tau) / sum_k exp(c_i . t_k / tau) ).

``weighting="region"`` (CALICO): the terms are weighted ``1 / (|R| N_S)`` as in RAPC (:func:`region_weights`), so
that every region of the scan, and its semantic-less set as one group, counts the same whatever its size:

    L_scan = (1/|R|) sum_{S in R} (1/N_S) sum_{i in S} d_i.

``weighting="uniform"`` (the plain point-wise contrastive distillation baseline, BEVDistill-like): every valid
point counts the same, ``L_scan = (1/N) sum_i d_i``. The batch loss is the mean of ``L_scan`` over the scans with a
valid point (0, still attached to the graph, when there is none). Directional: student anchors, teacher
candidates; gradients reach the teacher embeddings too when they require them (a trainable teacher projector).
"""
from __future__ import annotations

import torch

from .plrc import _check, masked_log_softmax
from .rapc import region_weights

#: The two weightings of :func:`rad_loss`.
WEIGHTINGS: tuple[str, ...] = ("region", "uniform")


def uniform_weights(valid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, K) ``dtype``: ``1 / N_b`` for each of the N_b valid points of scan b, 0 elsewhere.

    Args:
        valid: (B, K) bool.
    """
    v = valid.to(dtype)
    return v / v.sum(-1, keepdim=True).clamp(min=1)


def rad_from_log_probs(logp: torch.Tensor, region: torch.Tensor, valid: torch.Tensor,
                       weighting: str = "region") -> torch.Tensor:
    """RAD from precomputed log-probabilities.

    Args:
        logp: (B, K, K) float, :func:`masked_log_softmax` of student anchors (rows) against teacher candidates.
        region: (B, K) int64 region id, -1 semantic-less; valid: (B, K) bool.
        weighting: ``region`` or ``uniform``.
    Returns:
        () scalar of logp's dtype.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    valid = valid.bool()
    nll = -torch.diagonal(logp, dim1=1, dim2=2)  # (B, K)
    w = region_weights(region, valid, nll.dtype) if weighting == "region" else uniform_weights(valid, nll.dtype)
    per_scan = torch.where(valid, w * nll, torch.zeros_like(nll)).sum(-1)  # (B,)
    has = valid.any(-1)
    if not bool(has.any()):
        return logp.sum() * 0.0
    return per_scan[has].mean()


def rad_loss(student: torch.Tensor, teacher: torch.Tensor, region: torch.Tensor, valid: torch.Tensor,
             tau: float = 0.1, weighting: str = "region") -> torch.Tensor:
    """RAD loss of student embeddings against teacher embeddings of the same points.

    Args:
        student: (B, K, D) float, L2-normalised camera-branch embeddings of the K sampled points.
        teacher: (B, K, D) float, L2-normalised LiDAR-teacher embeddings of the same points (same order).
        region: (B, K) int64 region id of each point, -1 semantic-less (only equality matters).
        valid: (B, K) bool, points that take part (as anchors and as candidates).
        tau: temperature > 0.
        weighting: ``region`` (CALICO) or ``uniform`` (plain contrastive distillation).
    Returns:
        () scalar, float32 (float64 for float64 inputs).
    """
    _check(student, teacher, region, valid, tau)
    valid = valid.bool()
    return rad_from_log_probs(masked_log_softmax(student, teacher, valid, tau), region, valid, weighting)
