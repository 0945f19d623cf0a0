"""Fusing the camera and LiDAR BEV maps for fine-tuning (METHOD.md section 4): BEVFusion's ``ConvFuser``.

:class:`ConvFuser` (mit-han-lab/bevfusion ``mmdet3d/models/fusers/conv.py``): the maps, on one grid, are
concatenated along the channels (camera first, then LiDAR, BEVFusion's order) and a 3x3 conv (no bias) + BatchNorm
+ ReLU maps them to ``out_channels`` (here the LiDAR backbone's, so that the heads built for the LiDAR map take
the fused one unchanged).

:class:`BevEncoder` gives the fine-tuning heads ONE BEV map per modality::

    lidar    PointPillars(points)                                   (B, C_l, H, W)
    camera   CameraBEV(images, matrices)                            (B, C_c, H, W)   C_c = lss.bev_channels
    fusion   ConvFuser([CameraBEV(...), PointPillars(...)])         (B, C_l, H, W)

(H, W) is the LiDAR backbone's output map; the camera map is on the same grid (:func:`check_grid_matches` at
build time). The fine-tuning models subclass it, so the checkpoint keys are ``backbone.`` (PointPillars, absent
for camera; the LiDAR-only models' keys unchanged), ``camera.`` (CameraBEV: ``camera.backbone.`` the timm model
and FPN, ``camera.view_transform.`` the depth net and BEV encoder; absent for lidar), ``fuser.`` (fusion only).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from shared.errors import ConfigError


class ConvFuser(nn.Sequential):
    """concat(maps, dim=1) -> Conv2d(sum(in_channels), out_channels, 3, padding=1, bias=False) -> BN -> ReLU."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = int(out_channels)
        super().__init__(nn.Conv2d(sum(self.in_channels), self.out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(self.out_channels), nn.ReLU(inplace=True))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """inputs: (B, C_i, H, W) maps with ``C_i = in_channels[i]``, one grid -> (B, out_channels, H, W)."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"ConvFuser takes {len(self.in_channels)} maps, got {len(inputs)}")
        shapes = [tuple(x.shape) for x in inputs]
        if any(s[0] != shapes[0][0] or s[2:] != shapes[0][2:] for s in shapes) or \
                tuple(s[1] for s in shapes) != self.in_channels:
            raise ValueError(f"ConvFuser needs maps of {self.in_channels} channels on one grid, got {shapes}")
        return super().forward(torch.cat(list(inputs), dim=1))


class BevEncoder(nn.Module):
    """The fine-tuning models' BEV input for ``cfg.finetune.modality`` (module docstring); ``cfg`` a
    :class:`train.config.TrainConfig` of task det or seg."""

    def __init__(self, cfg):
        super().__init__()
        from train.models.lss import CameraBEV, check_grid_matches
        from train.models.pointpillars import PointPillars

        bb, ft = cfg.backbone, cfg.finetune
        self.modality = ft.modality
        self.backbone = PointPillars(bb) if ft.uses_lidar else None
        self.camera = None
        if ft.uses_camera:
            lss = cfg.lss
            check_grid_matches(lss, bb.point_range, bb.out_cell)
            if tuple(cfg.images.size) != tuple(cfg.camera.image_size):
                raise ConfigError("images.size", cfg.images.size,
                                  f"must equal model.camera.image_size {cfg.camera.image_size}")
            self.camera = CameraBEV(cfg.camera, lss)
        self.fuser = ConvFuser((self.camera.out_channels, self.backbone.out_channels), self.backbone.out_channels) \
            if self.modality == "fusion" else None
        #: Channels of the map the head reads.
        self.out_channels = self.camera.out_channels if self.modality == "camera" else bb.out_channels

    def forward(self, batch: dict) -> torch.Tensor:
        return self.bev(batch)

    def bev(self, batch: dict) -> torch.Tensor:
        """batch: ``points``, ``batch_idx``, ``batch_size`` (lidar, fusion) and ``images``, ``cam_intrinsic``,
        ``img_aug``, ``lidar2cam``, ``bev_aug``, ``cam_valid`` (camera, fusion; :func:`train.data.finetune.
        collate_finetune`) -> (B, out_channels, H, W) on the LiDAR output grid."""
        lidar = cam = None
        if self.backbone is not None:
            lidar = self.backbone(batch["points"], batch["batch_idx"].long(), int(batch["batch_size"]))
        if self.camera is not None:
            cam = self.camera(batch)
        if self.fuser is not None:
            return self.fuser([cam, lidar])
        return lidar if lidar is not None else cam
