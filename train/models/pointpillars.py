"""PointPillars LiDAR backbone in plain torch: scatter-based pillarisation, a pillar feature net (PFN), scatter to a
dense BEV canvas, a SECOND-style 2-D backbone and a SECOND-FPN neck.

The module is shared by the three training stages (PRC pre-training, RAD teacher, fine-tuning): they all call
``PointPillars.forward(points, batch_idx, batch_size) -> (B, C_out, H_out, W_out)`` and map metric xy to the
output map with :meth:`PointPillars.xy_to_grid` (or :func:`train.bev.sample_bev`).

Geometry (both for the pillar canvas and the output map): column j covers x in
``[x0 + j * cell, x0 + (j + 1) * cell)``, row i covers y in ``[y0 + i * cell, y0 + (i + 1) * cell)``; the map
covers exactly the configured xy range, so a pixel's centre is at ``x0 + (j + 0.5) * cell``.
"""
from __future__ import annotations

import torch
from torch import nn

from train.model_config import PFN_IN_CHANNELS, PointPillarsConfig

__all__ = ["PFN_IN_CHANNELS", "PillarFeatureNet", "PointPillars", "PointPillarsConfig", "SECONDBackbone"]

class PillarFeatureNet(nn.Module):
    """Scatter-based pillarisation + PFN + scatter to the dense canvas (no per-pillar point cap)."""

    def __init__(self, cfg: PointPillarsConfig):
        super().__init__()
        self.cfg = cfg
        layers = []
        cin = PFN_IN_CHANNELS
        for k, c in enumerate(cfg.pfn_channels):
            layers.append(nn.Sequential(nn.Linear(cin if k == 0 else 2 * cin, c, bias=False),
                                        nn.BatchNorm1d(c, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)))
            cin = c
        self.layers = nn.ModuleList(layers)

    def pillarise(self, points: torch.Tensor, batch_idx: torch.Tensor, batch_size: int):
        """Pillar index of each in-range point.

        Args:
            points: (P, >=4) float, x, y, z, intensity, ...
            batch_idx: (P,) int64 scan index in [0, batch_size).
        Returns:
            keep: (P,) bool, points inside point_range (non-finite points are dropped);
            keys: (U,) int64 sorted flat canvas index ``b * ny * nx + iy * nx + ix`` of each non-empty pillar;
            inverse: (P_keep,) int64 pillar (row of ``keys``) of each kept point;
            ix, iy: (P_keep,) int64 pillar column and row of each kept point.
        """
        r = self.cfg.point_range
        ps = self.cfg.pillar_size
        ny, nx = self.cfg.grid_size
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        keep = ((x >= r[0]) & (x < r[3]) & (y >= r[1]) & (y < r[4]) & (z >= r[2]) & (z < r[5])
                & torch.isfinite(points[:, 3]) & (batch_idx >= 0) & (batch_idx < batch_size))
        p = points[keep]
        ix = torch.floor((p[:, 0] - r[0]) / ps).long().clamp_(0, nx - 1)
        iy = torch.floor((p[:, 1] - r[1]) / ps).long().clamp_(0, ny - 1)
        flat = batch_idx[keep] * (ny * nx) + iy * nx + ix
        keys, inverse = torch.unique(flat, sorted=True, return_inverse=True)
        return keep, keys, inverse, ix, iy

    def decorate(self, p: torch.Tensor, inverse: torch.Tensor, n_pillars: int, ix: torch.Tensor,
                 iy: torch.Tensor) -> torch.Tensor:
        """(P_keep, 9) PFN input: x, y, z, intensity, offsets to the pillar mean xyz, offsets to the pillar centre."""
        r = self.cfg.point_range
        ps = self.cfg.pillar_size
        xyz = p[:, :3]
        sums = xyz.new_zeros(n_pillars, 3).index_add_(0, inverse, xyz)
        counts = torch.bincount(inverse, minlength=n_pillars).clamp_(min=1).to(xyz.dtype)
        mean = sums / counts[:, None]
        cx = r[0] + (ix.to(xyz.dtype) + 0.5) * ps
        cy = r[1] + (iy.to(xyz.dtype) + 0.5) * ps
        return torch.cat([p[:, :4], xyz - mean[inverse], (p[:, 0] - cx)[:, None], (p[:, 1] - cy)[:, None]], dim=1)

    def forward(self, points: torch.Tensor, batch_idx: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Dense pillar canvas.

        Args:
            points: (P, >=4) float32 x, y, z, intensity.
            batch_idx: (P,) int64.
        Returns:
            (B, C_pfn, ny, nx) float, zero where a pillar holds no point.
        """
        ny, nx = self.cfg.grid_size
        c_out = self.cfg.pfn_channels[-1]
        keep, keys, inverse, ix, iy = self.pillarise(points, batch_idx, batch_size)
        canvas = points.new_zeros(batch_size * ny * nx, c_out)
        if keys.numel():
            h = self.decorate(points[keep], inverse, keys.numel(), ix, iy)
            pooled = None
            for k, layer in enumerate(self.layers):
                if k:
                    h = torch.cat([h, pooled[inverse]], dim=1)
                h = layer(h)
                pooled = h.new_zeros(keys.numel(), h.shape[1]).scatter_reduce(
                    0, inverse[:, None].expand(-1, h.shape[1]), h, reduce="amax", include_self=False)
            canvas = canvas.index_put((keys,), pooled)
        return canvas.view(batch_size, ny, nx, c_out).permute(0, 3, 1, 2).contiguous()


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]


class SECONDBackbone(nn.Module):
    """SECOND-style 2-D backbone (blocks of strided + plain 3x3 convolutions) with a SECOND-FPN neck."""

    def __init__(self, cfg: PointPillarsConfig, in_channels: int):
        super().__init__()
        blocks, deblocks = [], []
        cin = in_channels
        for n, s, c, u, uc in zip(cfg.layer_nums, cfg.layer_strides, cfg.layer_channels, cfg.upsample_strides,
                                  cfg.upsample_channels):
            layers = _conv_bn_relu(cin, c, s)
            for _ in range(n):
                layers += _conv_bn_relu(c, c)
            blocks.append(nn.Sequential(*layers))
            if u >= 1:
                k = round(u)
                up = nn.ConvTranspose2d(c, uc, k, stride=k, bias=False)
            else:
                k = round(1 / u)
                up = nn.Conv2d(c, uc, k, stride=k, bias=False)
            deblocks.append(nn.Sequential(up, nn.BatchNorm2d(uc, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.deblocks = nn.ModuleList(deblocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, ny, nx) -> (B, sum(upsample_channels), ny / out_stride, nx / out_stride)."""
        outs = []
        for block, deblock in zip(self.blocks, self.deblocks):
            x = block(x)
            outs.append(deblock(x))
        return torch.cat(outs, dim=1)


class PointPillars(nn.Module):
    """PointPillars backbone: points -> BEV feature map (see the module docstring for the geometry)."""

    def __init__(self, cfg: PointPillarsConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else PointPillarsConfig()
        self.pfn = PillarFeatureNet(self.cfg)
        self.backbone = SECONDBackbone(self.cfg, self.cfg.pfn_channels[-1])

    @property
    def out_channels(self) -> int:
        return self.cfg.out_channels

    def forward(self, points: torch.Tensor, batch_idx: torch.Tensor, batch_size: int) -> torch.Tensor:
        """BEV features.

        Args:
            points: (P, >=4) float32 x, y, z, intensity of all scans concatenated.
            batch_idx: (P,) int64 scan index of each point in [0, batch_size).
            batch_size: B.
        Returns:
            (B, C_out, H_out, W_out) float32 (``cfg.out_channels``, ``cfg.out_size``).
        """
        if points.ndim != 2 or points.shape[1] < 4:
            raise ValueError(f"points must be (P, >=4), got {tuple(points.shape)}")
        if batch_idx.shape != points.shape[:1]:
            raise ValueError(f"batch_idx must be ({points.shape[0]},), got {tuple(batch_idx.shape)}")
        return self.backbone(self.pfn(points, batch_idx.long(), int(batch_size)))

    def xy_to_grid(self, xy: torch.Tensor) -> torch.Tensor:
        """Continuous output-map coordinates (column u, row v) of metric xy: (..., 2) -> (..., 2); pixel (i, j)
        has its centre at integer coordinates (u, v) = (j, i), the map's outer edges at -0.5 and W_out - 0.5."""
        r = self.cfg.point_range
        cell = self.cfg.out_cell
        origin = xy.new_tensor([r[0], r[1]])
        return (xy - origin) / cell - 0.5
