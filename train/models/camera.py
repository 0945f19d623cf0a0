"""Camera image branch: a timm backbone (``features_only``) and an FPN neck that merges its levels into ONE map at
``CameraConfig.feature_stride`` with ``CameraConfig.neck_channels`` channels.

The backbone is built with ``pretrained=False`` (never any download). Transformer backbones (Swin, ViT) take the
network input size as ``img_size``; CNNs do not, and are built without it. Some timm feature extractors (Swin)
return channels-last maps (``output_fmt == 'NHWC'``): :class:`CameraBackbone` permutes them to NCHW.

Neck: a 1x1 lateral convolution per level, a top-down pass (each coarser map resized to the next finer one and
added), then a 3x3 conv-BN-ReLU on the finest merged map; when the finest level is coarser than
``feature_stride`` the merged map is bilinearly upsampled to the stride-``feature_stride`` size.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import ConfigError
from train.model_config import CameraConfig

__all__ = ["CameraBackbone", "CameraConfig", "FPNNeck", "build_timm_features"]


def build_timm_features(cfg: CameraConfig) -> nn.Module:
    """``timm.create_model(cfg.backbone, pretrained=False, features_only=True, out_indices=...)``, with
    ``img_size=cfg.image_size`` for models that accept it (Swin, ViT); a model that rejects it (a TypeError, e.g.
    ResNet) is built without it."""
    if not timm.is_model(cfg.backbone):
        raise ConfigError("model.camera.backbone", cfg.backbone, "is not a timm model name (timm.list_models())")
    kw = {"pretrained": False, "features_only": True, "out_indices": cfg.out_indices}
    try:
        return timm.create_model(cfg.backbone, img_size=cfg.image_size, **kw)
    except TypeError:  # a model without an img_size argument (CNNs)
        return timm.create_model(cfg.backbone, **kw)


class FPNNeck(nn.Module):
    """Lateral 1x1 convs, top-down resize + add, 3x3 conv-BN-ReLU output at one stride.

    Args:
        in_channels: channels of each input level, finest first.
        reductions: stride (input pixels per map pixel) of each level, finest first, increasing.
        out_channels: channels of the output map.
        out_stride: stride of the output map; every level must be at or coarser than it.
    """

    def __init__(self, in_channels: list[int], reductions: list[int], out_channels: int, out_stride: int):
        super().__init__()
        if len(in_channels) != len(reductions) or not in_channels:
            raise ValueError(f"need one reduction per level, got {in_channels} and {reductions}")
        if any(r < out_stride for r in reductions):
            raise ConfigError("model.camera.out_indices", tuple(reductions),
                              f"the backbone levels have strides {list(reductions)}; every level fed to the neck "
                              f"must be at or coarser than feature_stride {out_stride} (drop the finer ones)")
        if list(reductions) != sorted(reductions):
            raise ConfigError("model.camera.out_indices", tuple(reductions), "levels must go from fine to coarse")
        self.out_stride = out_stride
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.out_conv = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, feats: list[torch.Tensor], out_hw: tuple[int, int]) -> torch.Tensor:
        """Levels [(N, C_i, H_i, W_i)] finest first -> (N, out_channels, out_hw[0], out_hw[1])."""
        x = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            y = lat(f)
            x = y + F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
        if tuple(x.shape[-2:]) != tuple(out_hw):
            x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class CameraBackbone(nn.Module):
    """timm backbone + FPN neck: images -> one feature map at ``cfg.feature_stride``."""

    def __init__(self, cfg: CameraConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else CameraConfig()
        self.body = build_timm_features(self.cfg)
        info = self.body.feature_info
        self.channels_last = str(getattr(self.body, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC")
        self.reductions = list(info.reduction())
        self.neck = FPNNeck(list(info.channels()), self.reductions, self.cfg.neck_channels, self.cfg.feature_stride)

    @property
    def out_channels(self) -> int:
        return self.cfg.neck_channels

    @property
    def out_size(self) -> tuple[int, int]:
        """(h, w) = image_size / feature_stride of the output map."""
        s = self.cfg.feature_stride
        return self.cfg.image_size[0] // s, self.cfg.image_size[1] // s

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) float32 normalised, (H, W) = cfg.image_size ->
        (N, neck_channels, H / feature_stride, W / feature_stride) float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != tuple(self.cfg.image_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])} (H, W) but the camera branch was built for "
                             f"model.camera.image_size {tuple(self.cfg.image_size)}")
        feats = self.body(images)
        if self.channels_last:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return self.neck(list(feats), self.out_size)
