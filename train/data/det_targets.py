"""CenterPoint targets of a box set on a BEV grid, and the dense maps a perfect head would output.

Follows CenterPoint (Yin, Zhou, Kraehenbuehl, "Center-based 3D Object Detection and Tracking", CVPR 2021;
github.com/tianweiy/CenterPoint, ``det3d/datasets/pipelines/preprocess.py`` ``AssignLabel`` and
``det3d/core/utils/center_utils.py``): one heatmap channel per class with a Gaussian at each box centre (radius
:func:`gaussian_radius` of the box footprint in cells, ``min_overlap`` 0.1, at least ``min_radius`` 2), and at
each centre cell the regression target :data:`REG_FIELDS`::

    dx, dy (centre minus the cell's corner, in cells), z (m), log w, log l, log h, sin yaw, cos yaw, vx, vy

One task holds all ten classes (CenterPoint groups them into six heads; a single head shares the regression
maps). Grid (as :mod:`train.models.pointpillars`): column j covers x in ``[x0 + j cell, x0 + (j + 1) cell)``,
row i covers y likewise; the flat index of cell (i, j) is ``i * W + j``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.errors import ConfigError
from train.data.boxes import DETECTION_CLASSES, NUM_BOX_FIELDS

#: Regression channels of the head and of the targets, in order.
REG_FIELDS: tuple[str, ...] = ("dx", "dy", "z", "log_w", "log_l", "log_h", "sin_yaw", "cos_yaw", "vx", "vy")
NUM_REG = len(REG_FIELDS)
#: Slices of :data:`REG_FIELDS` by head branch.
REG_SLICES: dict[str, slice] = {"offset": slice(0, 2), "height": slice(2, 3), "size": slice(3, 6),
                                "rot": slice(6, 8), "vel": slice(8, 10)}

__all__ = ["CenterHeadConfig", "CenterTargets", "NUM_REG", "REG_FIELDS", "REG_SLICES", "center_targets",
           "draw_gaussian", "gaussian_radius", "regression_maps"]


@dataclass(frozen=True)
class CenterHeadConfig:
    """The CenterPoint head and its targets on a BEV grid (defaults: the nuScenes PointPillars output grid).

    Fields:
        point_range: (x0, y0, z0, x1, y1, z1) covered by the BEV map (the LiDAR backbone's point range).
        cell: side of a map cell (m; the backbone's ``out_cell``).
        in_channels: channels of the BEV map the head reads.
        shared_channels: channels of the shared 3x3 convolution.
        head_channels: channels of the hidden 3x3 convolution of each branch.
        num_classes: heatmap channels (the first ``num_classes`` of :data:`DETECTION_CLASSES`).
        max_objects: objects kept per scan in the targets (CenterPoint: 500).
        min_overlap: ``gaussian_radius``'s overlap (CenterPoint: 0.1).
        min_radius: smallest Gaussian radius in cells (CenterPoint: 2).
        top_k: peaks decoded per scan (at most 500, the devkit's limit per sample).
        score_threshold: decoded boxes below it are dropped (CenterPoint: 0.1).
        nms_iou: IoU above which ``torchvision.ops.batched_nms`` drops the lower-scored of two boxes of one class
            (axis-aligned BEV envelopes; 0 or less: no NMS after the heatmap max-pool).
        heatmap_bias: initial bias of the heatmap logits (CenterPoint: -2.19, a prior of 0.1).
    """

    point_range: tuple[float, float, float, float, float, float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    cell: float = 0.8
    in_channels: int = 384
    shared_channels: int = 64
    head_channels: int = 64
    num_classes: int = len(DETECTION_CLASSES)
    max_objects: int = 500
    min_overlap: float = 0.1
    min_radius: int = 2
    top_k: int = 500
    score_threshold: float = 0.1
    nms_iou: float = 0.2
    heatmap_bias: float = -2.19

    def __post_init__(self):
        r = tuple(float(v) for v in self.point_range)
        object.__setattr__(self, "point_range", r)
        if len(r) != 6 or not all(math.isfinite(v) for v in r) or not (r[3] > r[0] and r[4] > r[1]):
            raise ConfigError("head.point_range", self.point_range, "must be (x0, y0, z0, x1, y1, z1), min < max")
        if not (math.isfinite(self.cell) and self.cell > 0):
            raise ConfigError("head.cell", self.cell, "must be a finite number > 0 (metres)")
        for i, extent in enumerate((r[3] - r[0], r[4] - r[1])):
            n = extent / self.cell
            if abs(n - round(n)) > 1e-6 * max(1.0, n):
                raise ConfigError("head.cell", self.cell, f"must divide the {'xy'[i]} extent {extent} m")
        for name in ("in_channels", "shared_channels", "head_channels", "max_objects", "top_k"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v > 0):
                raise ConfigError(f"head.{name}", v, "must be an integer > 0")
        if not (isinstance(self.num_classes, int) and 1 <= self.num_classes <= len(DETECTION_CLASSES)):
            raise ConfigError("head.num_classes", self.num_classes, f"must be in 1..{len(DETECTION_CLASSES)}")
        if self.top_k > 500:
            raise ConfigError("head.top_k", self.top_k, "must be at most 500 (the devkit's boxes per sample)")
        if not 0 < self.min_overlap < 1:
            raise ConfigError("head.min_overlap", self.min_overlap, "must be in (0, 1)")
        if not (isinstance(self.min_radius, int) and self.min_radius >= 0):
            raise ConfigError("head.min_radius", self.min_radius, "must be an integer >= 0")
        if not 0 <= self.score_threshold < 1:
            raise ConfigError("head.score_threshold", self.score_threshold, "must be in [0, 1)")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(H, W) cells of the map (row = y, column = x)."""
        r = self.point_range
        return round((r[4] - r[1]) / self.cell), round((r[3] - r[0]) / self.cell)

    @classmethod
    def of_backbone(cls, backbone, **kw) -> CenterHeadConfig:
        """The head on a LiDAR backbone's output grid (a :class:`train.model_config.PointPillarsConfig`)."""
        return cls(point_range=backbone.point_range, cell=backbone.out_cell, in_channels=backbone.out_channels, **kw)


@dataclass(frozen=True)
class CenterTargets:
    """The targets of one scan (K = ``max_objects``).

    Fields:
        heatmap: (C, H, W) float32 in [0, 1], 1 at each box's centre cell.
        ind: (K,) int64 flat centre cell ``row * W + col`` (0 where unused).
        mask: (K,) bool, True for the first ``n`` slots holding a box.
        cat: (K,) int64 class of each slot.
        reg: (K, 10) float32 :data:`REG_FIELDS` of each slot.
        reg_weight: (K, 10) float32, 1 where the slot's target counts (0 for unused slots and invalid velocities).
    """

    heatmap: np.ndarray
    ind: np.ndarray
    mask: np.ndarray
    cat: np.ndarray
    reg: np.ndarray
    reg_weight: np.ndarray


def gaussian_radius(height: float, width: float, min_overlap: float = 0.1) -> float:
    """CenterPoint's (after CornerNet's) Gaussian radius, in cells, of a box of ``height`` x ``width`` cells: the
    smallest of the three radii at which a corner displaced by it still gives IoU ``min_overlap``
    (``det3d/core/utils/center_utils.py`` ``gaussian_radius``)."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, row: int, col: int, radius: int) -> None:
    """Draw a Gaussian of ``radius`` cells (sigma = (2 radius + 1) / 6, peak 1) at (row, col) into the (H, W)
    ``heatmap`` in place, keeping the maximum where Gaussians overlap (CenterPoint's ``draw_umich_gaussian``)."""
    sigma = (2 * radius + 1) / 6.0
    h, w = heatmap.shape
    r0, r1 = max(0, row - radius), min(h, row + radius + 1)
    c0, c1 = max(0, col - radius), min(w, col + radius + 1)
    dy = np.arange(r0, r1)[:, None] - row
    dx = np.arange(c0, c1)[None, :] - col
    g = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    np.maximum(heatmap[r0:r1, c0:c1], g.astype(heatmap.dtype), out=heatmap[r0:r1, c0:c1])


def center_targets(boxes: np.ndarray, labels: np.ndarray, cfg: CenterHeadConfig,
                   velocity_valid: np.ndarray | None = None) -> CenterTargets:
    """CenterPoint targets of LiDAR-frame boxes (M, 9) with classes ``labels`` (M,) on ``cfg``'s grid.

    Boxes whose centre lies outside the map, or whose class is ``>= cfg.num_classes``, are skipped; so are boxes
    past ``cfg.max_objects`` (in input order). ``velocity_valid`` (M,) bool (default all True) zeroes the velocity
    weights of boxes without a velocity.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, NUM_BOX_FIELDS)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(b):
        raise ConfigError("labels", labels.shape, f"expected one class per box ({len(b)})")
    valid = np.ones(len(b), bool) if velocity_valid is None else np.asarray(velocity_valid, dtype=bool)
    h, w = cfg.grid_size
    k = cfg.max_objects
    r = cfg.point_range
    heatmap = np.zeros((cfg.num_classes, h, w), np.float32)
    ind = np.zeros(k, np.int64)
    mask = np.zeros(k, bool)
    cat = np.zeros(k, np.int64)
    reg = np.zeros((k, NUM_REG), np.float32)
    weight = np.zeros((k, NUM_REG), np.float32)
    n = 0
    for box, label, ok in zip(b, labels, valid):
        if n >= k:
            break
        cx, cy = (box[0] - r[0]) / cfg.cell, (box[1] - r[1]) / cfg.cell
        col, row = math.floor(cx), math.floor(cy)
        if not (0 <= col < w and 0 <= row < h) or not 0 <= label < cfg.num_classes:
            continue
        radius = max(cfg.min_radius, int(gaussian_radius(box[4] / cfg.cell, box[3] / cfg.cell, cfg.min_overlap)))
        draw_gaussian(heatmap[label], row, col, radius)
        ind[n], mask[n], cat[n] = row * w + col, True, label
        reg[n] = (cx - col, cy - row, box[2], *np.log(box[3:6]), math.sin(box[6]), math.cos(box[6]), box[7], box[8])
        weight[n] = 1.0
        if not ok:
            weight[n, REG_SLICES["vel"]] = 0.0
        n += 1
    return CenterTargets(heatmap, ind, mask, cat, reg, weight)


def regression_maps(targets: CenterTargets, grid_size: tuple[int, int]) -> np.ndarray:
    """(10, H, W) float32 maps holding each used slot's regression target at its centre cell (0 elsewhere): what
    a perfect head outputs. Where two boxes share a cell the later slot wins."""
    h, w = grid_size
    maps = np.zeros((NUM_REG, h * w), np.float32)
    maps[:, targets.ind[targets.mask]] = targets.reg[targets.mask].T
    return maps.reshape(NUM_REG, h, w)
