"""CenterPoint's Gaussian focal loss on class heatmaps (CornerNet's variant of the focal loss, as CenterPoint's
``FastFocalLoss`` in ``det3d/models/losses/centernet_loss.py``).

With ``p = sigmoid(logit)`` and the Gaussian target heatmap ``g``::

    L = -( sum_objects (1 - p_c)^2 log p_c  +  sum_cells (1 - g)^4 p^2 log(1 - p) ) / max(1, number of objects)

where ``p_c`` is the prediction at each object's centre cell in its class channel (from the targets' ``ind``,
``cat`` and ``mask``). The logs are computed from the logits (``logsigmoid``), which CenterPoint approximates by
clamping ``p`` to [1e-4, 1 - 1e-4].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_focal_loss(logits: torch.Tensor, target: torch.Tensor, ind: torch.Tensor, cat: torch.Tensor,
                        mask: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """Gaussian focal loss, normalised by the number of objects.

    Args:
        logits: (B, C, H, W) float heatmap logits.
        target: (B, C, H, W) float Gaussian heatmaps in [0, 1].
        ind: (B, K) int64 flat centre cell ``row * W + col`` of each object slot.
        cat: (B, K) int64 class of each slot.
        mask: (B, K) bool, True for slots holding an object.
    Returns:
        () float.
    """
    b, c, h, w = logits.shape
    if target.shape != logits.shape or ind.shape != cat.shape or ind.shape != mask.shape or ind.shape[0] != b:
        raise ValueError(f"expected logits and target (B, C, H, W) and ind/cat/mask (B, K), got {tuple(logits.shape)}, "
                         f"{tuple(target.shape)}, {tuple(ind.shape)}, {tuple(cat.shape)}, {tuple(mask.shape)}")
    x = logits.float()
    p = torch.sigmoid(x)
    neg = (F.logsigmoid(-x) * p.pow(alpha) * (1 - target.float()).pow(beta)).sum()
    pos_logit = x.reshape(b, c * h * w).gather(1, cat * (h * w) + ind)  # (B, K)
    m = mask.to(x.dtype)
    pos = (F.logsigmoid(pos_logit) * (1 - torch.sigmoid(pos_logit)).pow(alpha) * m).sum()
    return -(pos + neg) / m.sum().clamp(min=1.0)
