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

import math
from dataclasses import dataclass

import torch
from torch import nn

from shared.errors import ConfigError

#: Per-point input channels of the PFN: x, y, z, intensity, offsets to the pillar's point mean (3) and to the
#: pillar's xy centre (2).
PFN_IN_CHANNELS = 9


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class PointPillarsConfig:
    """PointPillars configuration (defaults: nuScenes, +-51.2 m, pillar 0.2 m, grid 512x512, output 128x128).

    Fields:
        point_range: (x0, y0, z0, x1, y1, z1) metres; points outside are dropped.
        pillar_size: xy side of a pillar (m); a pillar spans the whole z range.
        pfn_channels: channels of the PFN layers (each Linear + BatchNorm + ReLU, scatter-max to pillars; layer
            k > 0 sees the point's features concatenated with its pillar's max of the previous layer).
        layer_nums: extra 3x3 convolutions in each SECOND block (after its strided one).
        layer_strides: stride of each SECOND block's first convolution.
        layer_channels: channels of each SECOND block.
        upsample_strides: FPN scale factor of each block's output (>= 1: transposed conv; < 1: strided conv by
            1/factor); all blocks must land on the same output stride.
        upsample_channels: FPN channels of each block; the outputs are concatenated.
    """

    point_range: tuple[float, float, float, float, float, float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    pillar_size: float = 0.2
    pfn_channels: tuple[int, ...] = (64, 64)
    layer_nums: tuple[int, ...] = (3, 5, 5)
    layer_strides: tuple[int, ...] = (2, 2, 2)
    layer_channels: tuple[int, ...] = (64, 128, 256)
    upsample_strides: tuple[float, ...] = (0.5, 1.0, 2.0)
    upsample_channels: tuple[int, ...] = (128, 128, 128)

    def __post_init__(self):
        for name in ("point_range", "pfn_channels", "layer_nums", "layer_strides", "layer_channels",
                     "upsample_strides", "upsample_channels"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)):
                raise ConfigError(name, v, "must be a tuple (or list) of numbers")
            object.__setattr__(self, name, tuple(v))  # lists from JSON configs become (hashable) tuples
        r = self.point_range
        if len(r) != 6 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in r):
            raise ConfigError("point_range", r, "must be 6 finite numbers (x0, y0, z0, x1, y1, z1)")
        if not (r[3] > r[0] and r[4] > r[1] and r[5] > r[2]):
            raise ConfigError("point_range", r, "each maximum must exceed its minimum")
        ps = self.pillar_size
        if not (isinstance(ps, (int, float)) and math.isfinite(ps) and ps > 0):
            raise ConfigError("pillar_size", ps, "must be a finite number > 0 (metres)")
        for i, extent in enumerate((r[3] - r[0], r[4] - r[1])):
            n = extent / ps
            if abs(n - round(n)) > 1e-6 * max(1.0, n):
                raise ConfigError("pillar_size", ps, f"must divide the {'xy'[i]} extent {extent} m into whole pillars")
        if not self.pfn_channels or not all(_is_int(c) and c > 0 for c in self.pfn_channels):
            raise ConfigError("pfn_channels", self.pfn_channels, "must be a non-empty tuple of integers > 0")
        n = len(self.layer_nums)
        if n == 0:
            raise ConfigError("layer_nums", self.layer_nums, "must be non-empty")
        for name in ("layer_strides", "layer_channels", "upsample_strides", "upsample_channels"):
            if len(getattr(self, name)) != n:
                raise ConfigError(name, getattr(self, name), f"must have {n} entries, one per block (layer_nums)")
        if not all(_is_int(v) and v >= 0 for v in self.layer_nums):
            raise ConfigError("layer_nums", self.layer_nums, "must be integers >= 0")
        if not all(_is_int(v) and v >= 1 for v in self.layer_strides):
            raise ConfigError("layer_strides", self.layer_strides, "must be integers >= 1")
        for name in ("layer_channels", "upsample_channels"):
            if not all(_is_int(v) and v > 0 for v in getattr(self, name)):
                raise ConfigError(name, getattr(self, name), "must be integers > 0")
        for u in self.upsample_strides:
            if not (isinstance(u, (int, float)) and u > 0 and (u >= 1 and float(u).is_integer()
                                                              or u < 1 and (1 / u).is_integer())):
                raise ConfigError("upsample_strides", self.upsample_strides,
                                  "each must be an integer >= 1 or 1/k for an integer k")
        strides = {self._block_stride(i) / self.upsample_strides[i] for i in range(n)}
        if len(strides) != 1:
            raise ConfigError("upsample_strides", self.upsample_strides,
                              "must bring every block to the same output stride")
        s = strides.pop()
        if not (float(s).is_integer() and s >= 1):
            raise ConfigError("upsample_strides", self.upsample_strides,
                              f"output stride {s} (map cell / pillar) must be an integer >= 1")
        total = 1
        for st in self.layer_strides:
            total *= st
        ny, nx = self.grid_size
        for extent, name in ((nx, "x"), (ny, "y")):
            if extent % total:
                raise ConfigError("layer_strides", self.layer_strides,
                                  f"their product {total} must divide the {name} grid size {extent}")

    def _block_stride(self, i: int) -> int:
        s = 1
        for st in self.layer_strides[: i + 1]:
            s *= st
        return s

    @classmethod
    def small(cls) -> PointPillarsConfig:
        """CPU preset: +-25.6 m, pillar 0.4 m (128x128 pillars), thin channels, output 64x64 x 96 channels."""
        return cls(point_range=(-25.6, -25.6, -5.0, 25.6, 25.6, 3.0), pillar_size=0.4, pfn_channels=(32, 32),
                   layer_nums=(1, 2, 2), layer_strides=(2, 2, 2), layer_channels=(32, 64, 128),
                   upsample_strides=(1.0, 2.0, 4.0), upsample_channels=(32, 32, 32))

    @property
    def grid_size(self) -> tuple[int, int]:
        """(ny, nx) pillars of the BEV canvas."""
        r = self.point_range
        return round((r[4] - r[1]) / self.pillar_size), round((r[3] - r[0]) / self.pillar_size)

    @property
    def out_stride(self) -> int:
        """Output map cell / pillar size."""
        return round(self._block_stride(0) / self.upsample_strides[0])

    @property
    def out_size(self) -> tuple[int, int]:
        """(H_out, W_out) of the output BEV map."""
        ny, nx = self.grid_size
        return ny // self.out_stride, nx // self.out_stride

    @property
    def out_cell(self) -> float:
        """Side of an output map cell (m)."""
        return self.pillar_size * self.out_stride

    @property
    def out_channels(self) -> int:
        """C_out of the output BEV map."""
        return sum(self.upsample_channels)


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
