"""Point-to-region contrast (PLRC), the region-level half of the PRC loss (METHOD.md section 2).

For a semantic-rich anchor i of view 1 with region r_i, the positives are the sampled points of view 2 in the
same region (i itself included), the candidates are all valid sampled points of the same scan in view 2:

    L_scan = -(1/N) sum_i (1/|Pos(i)|) sum_{j in Pos(i)} log( exp(s(i,j)) / sum_k exp(s(i,k)) ),
    s(a, b) = z1_a . z2_b / tau,

N the number of valid semantic-rich anchors of the scan. The batch loss is the mean of L_scan over the scans that
have at least one anchor (0, still attached to the graph, when none has). The loss is directional (view 1
anchors against view 2 candidates); ``PRCModel`` symmetrises it by averaging both directions.
"""
from __future__ import annotations

import torch

#: Logit given to masked (invalid) candidates: finite, so no NaN reaches the gradients of an empty row.
MASKED_LOGIT = -1e9


def masked_log_softmax(z1: torch.Tensor, z2: torch.Tensor, valid: torch.Tensor, tau: float) -> torch.Tensor:
    """(B, K, K) log-probabilities (float32, or float64 for float64 inputs) log softmax_k s(i, k) over the valid candidates k of the scan.

    Args:
        z1, z2: (B, K, D) embeddings of views 1 and 2.
        valid: (B, K) bool, candidates (columns) that take part.
        tau: temperature > 0.
    """
    dtype = torch.promote_types(z1.dtype, torch.float32)  # half precision (AMP) is upcast
    with torch.autocast(device_type=z1.device.type, enabled=False):  # keep the logits in float32 under AMP
        s = torch.bmm(z1.to(dtype) / tau, z2.to(dtype).transpose(1, 2))
        if not bool(valid.all()):
            s = s.masked_fill(~valid[:, None, :], MASKED_LOGIT)
        return torch.log_softmax(s, dim=-1)


def _check(z1, z2, region, valid, tau):
    if z1.ndim != 3 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (B, K, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if region.shape != z1.shape[:2] or valid.shape != z1.shape[:2]:
        raise ValueError(f"region and valid must be {tuple(z1.shape[:2])}, got {tuple(region.shape)} and "
                         f"{tuple(valid.shape)}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")


def plrc_loss(z1: torch.Tensor, z2: torch.Tensor, region: torch.Tensor, valid: torch.Tensor,
              tau: float = 0.1) -> torch.Tensor:
    """PLRC loss, view 1 anchors against view 2 candidates.

    Args:
        z1: (B, K, D) float, L2-normalised embeddings of the K sampled points in view 1.
        z2: (B, K, D) float, the same points (same order) in view 2.
        region: (B, K) int64 region id of each sampled point, -1 for semantic-less (only equality matters).
        valid: (B, K) bool, sampled points that take part (padding and out-of-range points are False).
        tau: temperature.
    Returns:
        () scalar, float32 (float64 for float64 inputs).
    """
    _check(z1, z2, region, valid, tau)
    valid = valid.bool()
    return plrc_from_log_probs(masked_log_softmax(z1, z2, valid, tau), region, valid)


def plrc_from_log_probs(logp: torch.Tensor, region: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """PLRC from precomputed log-probabilities (lets PRCModel share them with RAPC).

    Args:
        logp: (B, K, K) float, :func:`masked_log_softmax` of view 1 anchors (rows) against view 2 candidates.
        region: (B, K) int64; valid: (B, K) bool (as in :func:`plrc_loss`).
    Returns:
        () scalar of logp's dtype.
    """
    valid = valid.bool()
    anchor = valid & (region >= 0)  # (B, K)
    pos = (region[:, :, None] == region[:, None, :]) & valid[:, None, :] & anchor[:, :, None]  # (B, K, K)
    n_pos = pos.sum(-1)  # (B, K), >= 1 for every anchor (itself)
    term = -torch.where(pos, logp, torch.zeros_like(logp)).sum(-1) / n_pos.clamp(min=1)  # (B, K)
    n_anchor = anchor.sum(-1)  # (B,)
    per_scan = torch.where(anchor, term, torch.zeros_like(term)).sum(-1) / n_anchor.clamp(min=1)
    has = n_anchor > 0
    if not bool(has.any()):
        return logp.sum() * 0.0
    return per_scan[has].mean()
