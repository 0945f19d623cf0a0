"""Lift-splat-shoot (LSS) view transform in plain torch: camera feature maps -> a BEV feature map on the LiDAR grid.

Pipeline (:class:`CameraBEV` = :class:`~train.models.camera.CameraBackbone` + :class:`LSSViewTransform`):

1. a 1x1 conv "depth net" on each camera's feature map gives D depth logits and ``LSSConfig.channels`` context
   channels per feature pixel; softmax over depth;
2. lift: the frustum (:func:`frustum`) of every feature pixel and depth bin is mapped to the augmented BEV frame
   (:func:`image_to_bev`); the feature of frustum point (d, pixel) is ``depth[d, pixel] * context[:, pixel]``;
3. splat (:func:`splat`): the features of all frustum points of a scan falling in a BEV cell are summed;
   points outside ``LSSConfig.point_range`` (x, y AND z) and the points of invalid cameras are dropped;
4. a small BEV encoder (two 3x3 conv-BN-ReLU) -> (B, bev_channels, H, W).

Conventions:

* Pixels (that of :mod:`train.data.camera`, of the store's ``uv``, of devkit's ``view_points`` and of OpenCV):
  (u, v) = (column, row) with the CENTRE of pixel (row i, column j) at the integer coordinates (j, i); an image of
  width W covers u in [-0.5, W - 0.5]. ``img_aug`` maps original-image pixels to network-input pixels in this
  convention (e.g. a resize by s is ``u' = s (u + 0.5) - 0.5``). Feature pixel (i, j) at stride s covers input
  pixels j s .. (j + 1) s - 1; the frustum uses its centre ``u = (j + 0.5) s - 0.5``, ``v = (i + 0.5) s - 0.5``
  (the centre an ``align_corners=False`` resize gives it).
* Depth: bin k covers camera z-depth ``[start + k step, start + (k + 1) step)`` and the frustum places its points at
  the bin CENTRE ``start + (k + 0.5) step`` (:func:`depth_bin_centres`). Depth is the camera-frame z (not the range).
* BEV cells follow :mod:`train.models.pointpillars`: row i covers y in ``[y0 + i cell, y0 + (i + 1) cell)``,
  column j covers x in ``[x0 + j cell, x0 + (j + 1) cell)``; the map covers exactly the xy of ``point_range``, so
  :func:`train.bev.sample_bev_batched` reads it at metric xy. :func:`check_grid_matches` asserts that the camera
  grid equals the LiDAR one.

Memory: the (points x channels) outer product is never stored. :func:`splat` is a custom autograd function that
accumulates chunks of frustum points with ``index_add_`` in the forward and recomputes the chunk products in the
backward, so it keeps only the (K,) kept point indices and depth weights besides its inputs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from shared.errors import ConfigError
from train.model_config import CameraConfig, LSSConfig
from train.models.camera import CameraBackbone

__all__ = ["CameraBEV", "LSSViewTransform", "check_grid_matches", "depth_bin_centres", "frustum", "image_to_bev",
           "splat"]

#: Elements (points x channels) of one chunk of the splat's temporary products (16 MiB of float32).
SPLAT_CHUNK_ELEMENTS = 1 << 22


def depth_bin_centres(lss: LSSConfig) -> torch.Tensor:
    """(D,) float64 depth of each bin's frustum points: ``start + (k + 0.5) * step`` (metres, camera z)."""
    d0, _, step = lss.depth_bins
    return d0 + (torch.arange(lss.num_bins, dtype=torch.float64) + 0.5) * step


def frustum(cam: CameraConfig, lss: LSSConfig) -> torch.Tensor:
    """The (u, v, d) of every frustum point in network-input pixel coordinates.

    Returns:
        (D, h, w, 3) float32 with (h, w) = image_size / feature_stride: ``u = (j + 0.5) * stride - 0.5``,
        ``v = (i + 0.5) * stride - 0.5`` (the centre of feature pixel (i, j) in input pixels whose centres are at
        integers, see the module docstring), ``d`` the centre of depth bin k (:func:`depth_bin_centres`).
    """
    s = cam.feature_stride
    h, w = cam.image_size[0] // s, cam.image_size[1] // s
    d = depth_bin_centres(lss)
    v = (torch.arange(h, dtype=torch.float64) + 0.5) * s - 0.5
    u = (torch.arange(w, dtype=torch.float64) + 0.5) * s - 0.5
    dd, vv, uu = torch.meshgrid(d, v, u, indexing="ij")
    return torch.stack([uu, vv, dd], dim=-1).float()


def _check_matrices(cam_intrinsic: torch.Tensor, img_aug: torch.Tensor, lidar2cam: torch.Tensor,
                    bev_aug: torch.Tensor) -> tuple[int, int]:
    if cam_intrinsic.ndim != 4 or cam_intrinsic.shape[2:] != (3, 3):
        raise ValueError(f"cam_intrinsic must be (B, C, 3, 3), got {tuple(cam_intrinsic.shape)}")
    b, c = cam_intrinsic.shape[:2]
    if img_aug.shape != (b, c, 3, 3):
        raise ValueError(f"img_aug must be ({b}, {c}, 3, 3) as cam_intrinsic, got {tuple(img_aug.shape)}")
    if lidar2cam.shape != (b, c, 4, 4):
        raise ValueError(f"lidar2cam must be ({b}, {c}, 4, 4), got {tuple(lidar2cam.shape)}")
    if bev_aug.shape != (b, 4, 4):
        raise ValueError(f"bev_aug must be ({b}, 4, 4), got {tuple(bev_aug.shape)}")
    return b, c


def image_to_bev(uvd: torch.Tensor, cam_intrinsic: torch.Tensor, img_aug: torch.Tensor, lidar2cam: torch.Tensor,
                 bev_aug: torch.Tensor) -> torch.Tensor:
    """Network-input pixels with camera depth -> points in the (augmented) BEV frame, for every camera.

    Per camera: original pixel ``(u0, v0, 1) = img_aug^-1 (u, v, 1)`` (img_aug affine, last row (0, 0, 1));
    camera point ``d * K^-1 (u0, v0, 1)`` (d = camera z-depth); LiDAR point ``lidar2cam^-1 (x, y, z, 1)``;
    BEV point ``bev_aug (LiDAR point)``. The matrices are combined (and inverted) in float64.

    Args:
        uvd: (..., 3) float (u, v, d), the same points for every camera (e.g. the :func:`frustum`).
        cam_intrinsic: (B, C, 3, 3) K of the ORIGINAL image.
        img_aug: (B, C, 3, 3) original-image pixel -> network-input pixel.
        lidar2cam: (B, C, 4, 4) LiDAR frame -> camera frame.
        bev_aug: (B, 4, 4) LiDAR frame -> BEV (augmented) frame.
    Returns:
        (B, C, ..., 3) xyz in the BEV frame, dtype of ``uvd``.
    """
    if uvd.shape[-1:] != (3,):
        raise ValueError(f"uvd must be (..., 3), got {tuple(uvd.shape)}")
    b, c = _check_matrices(cam_intrinsic, img_aug, lidar2cam, bev_aug)
    f64 = torch.float64
    pix2cam = torch.linalg.inv(cam_intrinsic.to(f64)) @ torch.linalg.inv(img_aug.to(f64))  # (B, C, 3, 3)
    cam2bev = bev_aug.to(f64)[:, None] @ torch.linalg.inv(lidar2cam.to(f64))  # (B, C, 4, 4)
    lin = (cam2bev[..., :3, :3] @ pix2cam).to(uvd.dtype)  # (B, C, 3, 3)
    t = cam2bev[..., :3, 3].to(uvd.dtype)  # (B, C, 3)
    flat = uvd.reshape(-1, 3)
    d = flat[:, 2:3]
    rays = torch.cat([flat[:, :2] * d, d], dim=1)  # (P, 3) = d * (u, v, 1)
    out = torch.einsum("bcij,pj->bcpi", lin, rays) + t[:, :, None]
    return out.reshape(b, c, *uvd.shape[:-1], 3)


class _SplatSum(torch.autograd.Function):
    """``out[cell[k]] += weight[k] * rows[row[k]]`` for k in 0..K-1, chunked; differentiable in weight and rows."""

    @staticmethod
    def forward(ctx, weight, rows, row_idx, cell_idx, n_cells):  # noqa: D102 (documented on the class)
        out = rows.new_zeros(n_cells, rows.shape[1])
        chunk = max(1, SPLAT_CHUNK_ELEMENTS // max(1, rows.shape[1]))
        for s in range(0, weight.shape[0], chunk):
            e = s + chunk
            out.index_add_(0, cell_idx[s:e], rows[row_idx[s:e]] * weight[s:e, None])
        ctx.save_for_backward(weight, rows, row_idx, cell_idx)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        weight, rows, row_idx, cell_idx = ctx.saved_tensors
        need_w, need_rows = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_w = torch.empty_like(weight) if need_w else None
        grad_rows = torch.zeros_like(rows) if need_rows else None
        chunk = max(1, SPLAT_CHUNK_ELEMENTS // max(1, rows.shape[1]))
        for s in range(0, weight.shape[0], chunk):
            e = s + chunk
            g = grad_out[cell_idx[s:e]]  # (k, Cc)
            if need_w:
                grad_w[s:e] = (g * rows[row_idx[s:e]]).sum(1)
            if need_rows:
                grad_rows.index_add_(0, row_idx[s:e], g * weight[s:e, None])
        return grad_w, grad_rows, None, None, None


def splat(depth: torch.Tensor, context: torch.Tensor, xyz: torch.Tensor, cam_valid: torch.Tensor | None,
          lss: LSSConfig) -> torch.Tensor:
    """Sum-pool the lifted features ``depth[b, c, d, i, j] * context[b, c, :, i, j]`` into the BEV cells of their
    frustum points ``xyz[b, c, d, i, j]``.

    A point is kept when ``x0 <= x < x1``, ``y0 <= y < y1``, ``z0 <= z < z1`` of ``lss.point_range`` (finite) and
    its camera is valid; it lands in row ``floor((y - y0) / cell)``, column ``floor((x - x0) / cell)`` of scan b.
    Differentiable w.r.t. ``depth`` and ``context`` (not ``xyz``).

    Args:
        depth: (B, C, D, h, w) float depth weights (e.g. a softmax over D).
        context: (B, C, Cc, h, w) float context features.
        xyz: (B, C, D, h, w, 3) float frustum points in the BEV frame (:func:`image_to_bev`).
        cam_valid: (B, C) bool, or None for all valid.
        lss: the grid (``point_range``, ``cell``, ``grid_size``).
    Returns:
        (B, Cc, H, W) float, (H, W) = ``lss.grid_size``.
    """
    if depth.ndim != 5 or context.ndim != 5 or context.shape[:2] != depth.shape[:2] \
            or context.shape[3:] != depth.shape[3:] or xyz.shape != (*depth.shape, 3):
        raise ValueError(f"expected depth (B, C, D, h, w), context (B, C, Cc, h, w) and xyz (B, C, D, h, w, 3), got "
                         f"{tuple(depth.shape)}, {tuple(context.shape)} and {tuple(xyz.shape)}")
    b, c, d, h, w = depth.shape
    cc = context.shape[2]
    if cam_valid is not None and cam_valid.shape != (b, c):
        raise ValueError(f"cam_valid must be ({b}, {c}), got {tuple(cam_valid.shape)}")
    ny, nx = lss.grid_size
    x0, y0, z0, x1, y1, z1 = lss.point_range
    # Pixel-major order (B, C, h, w, D): consecutive kept points share a context row and mostly a cell, which makes
    # the gathers and index_add_ of the splat about 3x faster on CPU than the (B, C, D, h, w) order.
    with torch.no_grad():
        x, y, z = xyz.permute(0, 1, 3, 4, 2, 5).reshape(-1, 3).unbind(1)
        keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1) & (z >= z0) & (z < z1)
        if cam_valid is not None:
            keep &= cam_valid.to(torch.bool)[:, :, None].expand(b, c, h * w * d).reshape(-1)
        p = torch.nonzero(keep, as_tuple=True)[0]  # flat index into (B, C, h, w, D)
        ix = torch.floor((x[p] - x0) / lss.cell).long().clamp_(0, nx - 1)
        iy = torch.floor((y[p] - y0) / lss.cell).long().clamp_(0, ny - 1)
        cell_idx = (p // (c * h * w * d)) * (ny * nx) + iy * nx + ix
        row_idx = p // d  # (b * C + c) * h * w + pixel
    weight = depth.permute(0, 1, 3, 4, 2).reshape(-1)[p]
    rows = context.permute(0, 1, 3, 4, 2).reshape(b * c * h * w, cc)
    out = _SplatSum.apply(weight, rows, row_idx, cell_idx, b * ny * nx)
    return out.view(b, ny, nx, cc).permute(0, 3, 1, 2).contiguous()


def check_grid_matches(lss: LSSConfig, point_range: Sequence[float], cell: float) -> None:
    """Raise :class:`ConfigError` (naming ``model.lss.point_range`` or ``model.lss.cell``) unless the camera BEV grid
    has the xy range of ``point_range`` (x0, y0, z0, x1, y1, z1) and the cell ``cell`` of the LiDAR BEV map (e.g.
    ``PointPillarsConfig.point_range`` and ``.out_cell``). The z ranges may differ."""
    r = lss.point_range
    mine = (r[0], r[1], r[3], r[4])
    theirs = (float(point_range[0]), float(point_range[1]), float(point_range[3]), float(point_range[4]))
    if any(abs(a - b_) > 1e-6 for a, b_ in zip(mine, theirs)):
        raise ConfigError("model.lss.point_range", lss.point_range,
                          f"its xy range (x0, y0, x1, y1) = {mine} differs from the LiDAR BEV map's {theirs} "
                          f"(LSSConfig.matching builds a matching one)")
    if abs(lss.cell - float(cell)) > 1e-9:
        raise ConfigError("model.lss.cell", lss.cell, f"differs from the LiDAR BEV map's cell {float(cell)} m "
                                                      f"(LSSConfig.matching builds a matching one)")


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class LSSViewTransform(nn.Module):
    """Depth net + lift + splat + BEV encoder (see the module docstring).

    Args:
        cam: the camera configuration (input size and feature stride give the frustum).
        lss: the LSS configuration.
        in_channels: channels of the camera feature maps (the neck's).
    """

    def __init__(self, cam: CameraConfig, lss: LSSConfig, in_channels: int):
        super().__init__()
        self.cam, self.lss = cam, lss
        self.depth_net = nn.Conv2d(in_channels, lss.num_bins + lss.channels, 1)
        self.register_buffer("frustum", frustum(cam, lss), persistent=False)  # (D, h, w, 3)
        self.bev_encoder = nn.Sequential(*_conv_bn_relu(lss.channels, lss.bev_channels),
                                         *_conv_bn_relu(lss.bev_channels, lss.bev_channels))

    def lift_splat(self, features: torch.Tensor, cam_intrinsic: torch.Tensor, img_aug: torch.Tensor,
                   lidar2cam: torch.Tensor, bev_aug: torch.Tensor, cam_valid: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """The pooled BEV map before the encoder.

        Args:
            features: (B, C, in_channels, h, w) float camera feature maps, (h, w) = image_size / feature_stride.
            cam_intrinsic, img_aug, lidar2cam, bev_aug: as :func:`image_to_bev`.
            cam_valid: (B, C) bool or None (all valid).
        Returns:
            (B, lss.channels, H, W) float.
        """
        _, h, w, _ = self.frustum.shape
        if features.ndim != 5 or features.shape[3:] != (h, w):
            raise ValueError(f"features must be (B, C, channels, {h}, {w}), got {tuple(features.shape)}")
        b, c = features.shape[:2]
        dn = self.depth_net(features.flatten(0, 1))  # (B * C, D + Cc, h, w)
        nd = self.lss.num_bins
        depth = dn[:, :nd].softmax(dim=1).view(b, c, nd, h, w)
        context = dn[:, nd:].reshape(b, c, self.lss.channels, h, w)
        with torch.no_grad():
            xyz = image_to_bev(self.frustum, cam_intrinsic, img_aug, lidar2cam, bev_aug)  # (B, C, D, h, w, 3)
        return splat(depth, context, xyz, cam_valid, self.lss)

    def forward(self, features: torch.Tensor, cam_intrinsic: torch.Tensor, img_aug: torch.Tensor,
                lidar2cam: torch.Tensor, bev_aug: torch.Tensor, cam_valid: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Arguments as :meth:`lift_splat`; returns (B, lss.bev_channels, H, W) float."""
        return self.bev_encoder(self.lift_splat(features, cam_intrinsic, img_aug, lidar2cam, bev_aug, cam_valid))


class CameraBEV(nn.Module):
    """The camera BEV branch: :class:`~train.models.camera.CameraBackbone` + :class:`LSSViewTransform`."""

    def __init__(self, cam: CameraConfig | None = None, lss: LSSConfig | None = None):
        super().__init__()
        self.cam = cam if cam is not None else CameraConfig()
        self.lss = lss if lss is not None else LSSConfig()
        self.backbone = CameraBackbone(self.cam)
        self.view_transform = LSSViewTransform(self.cam, self.lss, self.backbone.out_channels)

    @property
    def out_channels(self) -> int:
        """C of the camera BEV map (``lss.bev_channels``)."""
        return self.lss.bev_channels

    @property
    def grid_size(self) -> tuple[int, int]:
        """(H, W) = (ny, nx) of the camera BEV map."""
        return self.lss.grid_size

    def forward(self, batch: dict) -> torch.Tensor:
        """Camera BEV features.

        Args:
            batch: ``images`` (B, C, 3, H_in, W_in) float32 normalised, (H_in, W_in) = ``cam.image_size``;
                ``cam_intrinsic`` (B, C, 3, 3) float32 of the original image; ``img_aug`` (B, C, 3, 3) float32
                original pixel -> input pixel; ``lidar2cam`` (B, C, 4, 4) float32; ``bev_aug`` (B, 4, 4) float32
                LiDAR -> BEV frame; ``cam_valid`` (B, C) bool (optional; absent = all valid).
        Returns:
            (B, out_channels, H, W) float32, (H, W) = :attr:`grid_size`.
        """
        images = batch["images"]
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"batch['images'] must be (B, C, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != tuple(self.cam.image_size):
            raise ValueError(f"batch['images'] are {tuple(images.shape[-2:])} (H, W) but the camera branch was built "
                             f"for model.camera.image_size {tuple(self.cam.image_size)}")
        b, c = images.shape[:2]
        feats = self.backbone(images.flatten(0, 1))
        feats = feats.reshape(b, c, *feats.shape[1:])
        return self.view_transform(feats, batch["cam_intrinsic"], batch["img_aug"], batch["lidar2cam"],
                                   batch["bev_aug"], batch.get("cam_valid"))
