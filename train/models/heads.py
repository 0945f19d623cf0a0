"""A CenterPoint-style 3-D detection head on a BEV map, and its decoding into boxes.

:class:`CenterHead` (Yin et al., CVPR 2021, github.com/tianweiy/CenterPoint ``det3d/models/bbox_heads/center_head.py``):
a shared 3x3 convolution (+ BatchNorm + ReLU), then one branch per output, each a 3x3 convolution (+ BatchNorm +
ReLU) and a 3x3 output convolution: the class heatmap (logits; bias initialised to ``heatmap_bias`` = -2.19, a
prior of 0.1), the centre offset (2), the height z (1), the log size (3), the yaw as sin/cos (2) and the
velocity (2), concatenated into the (B, 10, H, W) regression map in the order of
:data:`train.data.det_targets.REG_FIELDS`.

:func:`decode_boxes`: sigmoid heatmap -> a 3x3 max-pool keeps the local maxima (CenterNet's NMS) -> the top
``top_k`` peaks over all classes -> boxes in the LiDAR frame (:mod:`train.data.boxes` layout) -> scores below
``score_threshold`` dropped -> class-wise ``torchvision.ops.batched_nms`` on the boxes' axis-aligned BEV
envelopes (the smallest x/y-aligned rectangle holding the rotated footprint) at IoU ``nms_iou``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from train.data.det_targets import NUM_REG, REG_SLICES, CenterHeadConfig

__all__ = ["CenterHead", "CenterHeadConfig", "CenterOutput", "Detections", "decode_boxes"]


class CenterOutput(NamedTuple):
    """The head's output: ``heatmap`` (B, C, H, W) logits; ``regression`` (B, 10, H, W) (REG_FIELDS)."""

    heatmap: torch.Tensor
    regression: torch.Tensor


class Detections(NamedTuple):
    """Decoded boxes of one scan: ``boxes`` (N, 9) float LiDAR frame (train.data.boxes.BOX_FIELDS), ``scores``
    (N,) float, ``labels`` (N,) int64; highest score first."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def _branch(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, cout, 3, padding=1, bias=True))


class CenterHead(nn.Module):
    """CenterPoint head: (B, C_in, H, W) BEV features -> :class:`CenterOutput` on the same grid."""

    def __init__(self, cfg: CenterHeadConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else CenterHeadConfig()
        c = self.cfg
        self.shared = nn.Sequential(nn.Conv2d(c.in_channels, c.shared_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(c.shared_channels), nn.ReLU(inplace=True))
        self.heatmap = _branch(c.shared_channels, c.head_channels, c.num_classes)
        nn.init.constant_(self.heatmap[-1].bias, c.heatmap_bias)
        self.branches = nn.ModuleDict({name: _branch(c.shared_channels, c.head_channels, s.stop - s.start)
                                       for name, s in REG_SLICES.items()})

    def forward(self, bev: torch.Tensor) -> CenterOutput:
        """bev (B, C_in, H, W) -> heatmap logits (B, num_classes, H, W), regression (B, 10, H, W)."""
        if bev.ndim != 4 or bev.shape[1] != self.cfg.in_channels or tuple(bev.shape[2:]) != self.cfg.grid_size:
            raise ValueError(f"CenterHead expects (B, {self.cfg.in_channels}, {self.cfg.grid_size[0]}, "
                             f"{self.cfg.grid_size[1]}) BEV features, got {tuple(bev.shape)}")
        x = self.shared(bev)
        reg = torch.cat([self.branches[name](x) for name in REG_SLICES], dim=1)
        return CenterOutput(self.heatmap(x), reg)


def bev_envelopes(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 9) boxes -> (N, 4) x1, y1, x2, y2 of the axis-aligned rectangle holding each rotated w x l footprint."""
    c, s = torch.cos(boxes[:, 6]).abs(), torch.sin(boxes[:, 6]).abs()
    w, l = boxes[:, 3], boxes[:, 4]
    half_x = (l * c + w * s) / 2
    half_y = (l * s + w * c) / 2
    return torch.stack([boxes[:, 0] - half_x, boxes[:, 1] - half_y, boxes[:, 0] + half_x, boxes[:, 1] + half_y], 1)


@torch.no_grad()
def decode_boxes(heatmap: torch.Tensor, regression: torch.Tensor, cfg: CenterHeadConfig) -> list[Detections]:
    """Boxes of each scan from heatmap probabilities (B, C, H, W) (sigmoid of the head's logits, or target
    heatmaps) and the regression map (B, 10, H, W); see the module notes. Returns B :class:`Detections`."""
    from torchvision.ops import batched_nms

    b, c, h, w = heatmap.shape
    if regression.shape != (b, NUM_REG, h, w) or (h, w) != cfg.grid_size:
        raise ValueError(f"expected heatmap (B, C, {cfg.grid_size[0]}, {cfg.grid_size[1]}) and regression "
                         f"(B, {NUM_REG}, H, W), got {tuple(heatmap.shape)} and {tuple(regression.shape)}")
    peaks = heatmap * (F.max_pool2d(heatmap, 3, stride=1, padding=1) == heatmap)
    k = min(cfg.top_k, c * h * w)
    scores, flat = peaks.reshape(b, -1).topk(k, dim=1)
    labels, cell = flat // (h * w), flat % (h * w)
    row, col = cell // w, cell % w
    reg = regression.reshape(b, NUM_REG, h * w).gather(2, cell[:, None, :].expand(-1, NUM_REG, -1))  # (B, 10, k)
    r = cfg.point_range
    x = (col.to(reg.dtype) + reg[:, 0]) * cfg.cell + r[0]
    y = (row.to(reg.dtype) + reg[:, 1]) * cfg.cell + r[1]
    size = reg[:, 3:6].exp()
    yaw = torch.atan2(reg[:, 6], reg[:, 7])
    boxes = torch.cat([x[:, None], y[:, None], reg[:, 2:3], size, yaw[:, None], reg[:, 8:10]], 1).transpose(1, 2)
    out = []
    for i in range(b):
        keep = scores[i] >= max(cfg.score_threshold, torch.finfo(scores.dtype).tiny)
        bx, sc, lb = boxes[i][keep], scores[i][keep], labels[i][keep]
        if cfg.nms_iou > 0 and len(bx):
            order = batched_nms(bev_envelopes(bx).float(), sc.float(), lb, cfg.nms_iou)
            bx, sc, lb = bx[order], sc[order], lb[order]
        out.append(Detections(bx, sc, lb))
    return out
