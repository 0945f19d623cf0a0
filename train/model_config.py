"""Model configurations: frozen dataclasses with validation (ConfigError naming the field), no torch models.

:class:`PointPillarsConfig` (the LiDAR backbone, shared by PRC, the RAD teacher and fine-tuning),
:class:`PRCConfig` (PRC's projection head and losses), :class:`CameraConfig` (timm image backbone + FPN neck),
:class:`LSSConfig` (the lift-splat-shoot view transform), :class:`RADConfig` (region-aware distillation).
The models in ``train/models`` and ``train/tasks`` take these; this module imports none of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

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

    @classmethod
    def small_wide(cls) -> PointPillarsConfig:
        """Detection-capable CPU preset: +-51.2 m (the nuScenes range, so boxes out to ~50 m), pillar 0.8 m
        (128x128 pillars, the small preset's canvas), the small preset's channels, output stride 1: a 128x128 x 96
        map at 0.8 m (the nuScenes preset's output grid)."""
        return cls(point_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), pillar_size=0.8, pfn_channels=(32, 32),
                   layer_nums=(1, 2, 2), layer_strides=(1, 2, 2), layer_channels=(32, 64, 128),
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



@dataclass(frozen=True)
class PRCConfig:
    """PRC configuration.

    Fields:
        backbone: the PointPillars configuration.
        alpha: weight of PLRC in the total loss (RAPC gets 1 - alpha), in [0, 1].
        tau: temperature of both losses, > 0.
        proj_hidden, proj_out: projection MLP widths (Linear-ReLU-Linear).
        n_rich, n_less: semantic-rich and semantic-less points sampled per scan (used by the data side).
    """

    backbone: PointPillarsConfig = field(default_factory=PointPillarsConfig)
    alpha: float = 0.5
    tau: float = 0.1
    proj_hidden: int = 128
    proj_out: int = 64
    n_rich: int = 1024
    n_less: int = 1024

    def __post_init__(self):
        if not isinstance(self.backbone, PointPillarsConfig):
            raise ConfigError("backbone", self.backbone, "must be a PointPillarsConfig")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ConfigError("alpha", self.alpha, "must be a number in [0, 1]")
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau > 0):
            raise ConfigError("tau", self.tau, "must be a finite number > 0")
        for name in ("proj_hidden", "proj_out", "n_rich", "n_less"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(name, v, "must be an integer >= 1")

    @classmethod
    def small(cls, **kw) -> PRCConfig:
        """CPU preset: the small backbone, 256 + 256 sampled points."""
        kw.setdefault("n_rich", 256)
        kw.setdefault("n_less", 256)
        return cls(backbone=PointPillarsConfig.small(), **kw)

    @property
    def n_samples(self) -> int:
        """K = n_rich + n_less sampled points per scan."""
        return self.n_rich + self.n_less




def _check_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(name, v, f"must be an integer >= {lo}")
    return v


def _check_num(name: str, v, lo: float = 0.0, strict: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo \
            or (strict and v == lo):
        raise ConfigError(name, v, f"must be a finite number {'>' if strict else '>='} {lo}")
    return float(v)


@dataclass(frozen=True)
class CameraConfig:
    """Camera image branch: a timm backbone (``timm.create_model(backbone, features_only=True,
    pretrained=False, out_indices=..., img_size=image_size)``) and an FPN neck to one map.

    Fields:
        backbone: timm model name; Swin-T (``swin_tiny_patch4_window7_224``) for nuScenes [paper], a small
            CNN for CPU runs (:meth:`small`).
        out_indices: backbone stages fed to the neck [BEVFusion: Swin-T (1, 2, 3)].
        image_size: (H, W) of the network input [BEVFusion: 256x704]; the stream resizes and crops to it.
        neck_channels: channels of the FPN output [BEVFusion: 256].
        feature_stride: stride (input pixels per map pixel) of the neck's output map [BEVFusion: 8].
    """

    backbone: str = "swin_tiny_patch4_window7_224"
    out_indices: tuple[int, ...] = (1, 2, 3)
    image_size: tuple[int, int] = (256, 704)
    neck_channels: int = 256
    feature_stride: int = 8

    def __post_init__(self):
        object.__setattr__(self, "out_indices", tuple(self.out_indices))
        object.__setattr__(self, "image_size", tuple(self.image_size))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError("model.camera.backbone", self.backbone, "must be a timm model name")
        if not self.out_indices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                           for i in self.out_indices):
            raise ConfigError("model.camera.out_indices", self.out_indices, "must be integers >= 0")
        if len(self.image_size) != 2:
            raise ConfigError("model.camera.image_size", self.image_size, "must be (height, width)")
        for v in self.image_size:
            _check_int("model.camera.image_size", v, 32)
        _check_int("model.camera.neck_channels", self.neck_channels)
        _check_int("model.camera.feature_stride", self.feature_stride)
        if any(v % self.feature_stride for v in self.image_size):
            raise ConfigError("model.camera.image_size", self.image_size,
                              f"height and width must be multiples of feature_stride {self.feature_stride}")

    @classmethod
    def small(cls) -> CameraConfig:
        """CPU preset: timm ``resnet18`` stages 2-4 at 96x256, a 64-channel neck at stride 8."""
        return cls(backbone="resnet18", out_indices=(2, 3, 4), image_size=(96, 256), neck_channels=64,
                   feature_stride=8)


@dataclass(frozen=True)
class LSSConfig:
    """Lift-splat-shoot view transform: a depth distribution over ``depth_bins`` per feature pixel, its outer
    product with ``channels`` context features, pooled into a BEV grid that equals the LiDAR backbone's output
    grid (same xy range and cell; the RAD model asserts it at build time), then a small BEV encoder.

    Fields:
        depth_bins: (start, stop, step) metres [paper/BEVFusion: 1-60 m at 0.5 m, 118 bins].
        channels: context channels lifted per depth bin [BEVFusion: 80].
        point_range: (x0, y0, z0, x1, y1, z1) of the BEV grid (frustum points outside are dropped).
        cell: BEV cell side (m).
        bev_channels: channels of the BEV encoder's output (the camera BEV map).
    """

    depth_bins: tuple[float, float, float] = (1.0, 60.0, 0.5)
    channels: int = 80
    point_range: tuple[float, float, float, float, float, float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    cell: float = 0.8
    bev_channels: int = 256

    def __post_init__(self):
        object.__setattr__(self, "depth_bins", tuple(float(v) for v in self.depth_bins))
        object.__setattr__(self, "point_range", tuple(float(v) for v in self.point_range))
        d0, d1, step = (self.depth_bins + (0.0, 0.0, 0.0))[:3]
        if len(self.depth_bins) != 3 or not (0 < d0 < d1) or not (0 < step <= d1 - d0):
            raise ConfigError("model.lss.depth_bins", self.depth_bins, "must be (start > 0, stop > start, step > 0)")
        _check_int("model.lss.channels", self.channels)
        _check_int("model.lss.bev_channels", self.bev_channels)
        _check_num("model.lss.cell", self.cell)
        r = self.point_range
        if len(r) != 6 or not all(math.isfinite(v) for v in r) or not all(r[i] < r[i + 3] for i in range(3)):
            raise ConfigError("model.lss.point_range", r, "must be (x0, y0, z0, x1, y1, z1), finite, min < max")
        for i, extent in enumerate((r[3] - r[0], r[4] - r[1])):
            n = extent / self.cell
            if abs(n - round(n)) > 1e-6 * max(1.0, n):
                raise ConfigError("model.lss.cell", self.cell, f"must divide the {'xy'[i]} extent {extent} m")

    @property
    def num_bins(self) -> int:
        """D, the number of depth bins (``arange(start, stop, step)``)."""
        d0, d1, step = self.depth_bins
        return int(math.ceil((d1 - d0) / step - 1e-9))

    @property
    def grid_size(self) -> tuple[int, int]:
        """(H, W) = (ny, nx) cells of the BEV map (row i = y, column j = x, as PointPillars)."""
        r = self.point_range
        return round((r[4] - r[1]) / self.cell), round((r[3] - r[0]) / self.cell)

    @classmethod
    def matching(cls, backbone: PointPillarsConfig, **kw) -> LSSConfig:
        """The LSS grid of a LiDAR backbone's output map (its point range and output cell)."""
        return cls(point_range=backbone.point_range, cell=backbone.out_cell, **kw)


RAD_WEIGHTINGS = ("region", "uniform")
TEACHER_PROJECTORS = ("trainable", "frozen")


@dataclass(frozen=True)
class RADConfig:
    """Region-aware distillation (METHOD.md section 3).

    Fields:
        weighting: ``region`` (CALICO: every region counts the same, weights 1/N_S as in RAPC) or ``uniform``
            (plain point-wise contrastive distillation, the BEVDistill-like baseline).
        tau: temperature of the distillation loss [ours: 0.1, as PRC].
        proj_hidden, proj_out: widths of the student's projection MLP (and of a trainable teacher projector).
        teacher_projector: ``trainable`` (a new projector on the frozen LiDAR features, trained with the
            student) or ``frozen`` (the PRC checkpoint's own projection head, frozen; proj_out must then equal
            the PRC head's) [not published: ours, default trainable].
        backbone_lr_mult: learning-rate multiplier of the camera image backbone's parameter group (the neck,
            view transform and projectors use the base rate).
    """

    weighting: str = "region"
    tau: float = 0.1
    proj_hidden: int = 128
    proj_out: int = 64
    teacher_projector: str = "trainable"
    backbone_lr_mult: float = 1.0

    def __post_init__(self):
        if self.weighting not in RAD_WEIGHTINGS:
            raise ConfigError("model.rad.weighting", self.weighting, f"must be one of {', '.join(RAD_WEIGHTINGS)}")
        if self.teacher_projector not in TEACHER_PROJECTORS:
            raise ConfigError("model.rad.teacher_projector", self.teacher_projector,
                              f"must be one of {', '.join(TEACHER_PROJECTORS)}")
        _check_num("model.rad.tau", self.tau)
        _check_int("model.rad.proj_hidden", self.proj_hidden)
        _check_int("model.rad.proj_out", self.proj_out)
        _check_num("model.rad.backbone_lr_mult", self.backbone_lr_mult, strict=False)


#: Inputs of a fine-tuning run's BEV map: the LiDAR backbone's, the camera branch's (LSS), or both fused.
MODALITIES = ("lidar", "camera", "fusion")
#: What a label fraction's stride runs over (``train.data.fractions.BY``).
FRACTION_BY = ("scenes", "samples")
#: Where a fine-tuning keyframe's augmentation comes from (``FinetuneConfig.augment_draw``).
AUGMENT_DRAWS = ("random", "stored")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning for 3-D detection (``task="det"``) or BEV map segmentation (``task="seg"``), METHOD.md section 4.

    Fields:
        fraction: share of the training labels, in (0, 1] [paper: 0.05, 0.1, 0.2, 0.5, 1.0];
            ``fraction_by``: the stride over the training ``scenes`` (default) or keyframes (``samples``, for small
            generated sets) (:mod:`train.data.fractions`).
        lidar_sweeps: LiDAR sweeps per keyframe, the keyframe included [nuScenes detectors: 10]; 1 for stores
            built with ``--sweeps keyframes`` (:mod:`train.data.multisweep`).
        init: ``none`` (random) or a PRC / RAD checkpoint (file or run folder) whose ``model.backbone`` equals this
            run's (``train.checkpoint.load_backbone`` refuses any other).
        modality: the head's BEV input: ``lidar`` (the PointPillars output map), ``camera`` (the camera branch's
            LSS map, ``model.camera`` / ``model.lss``, on the same grid) or ``fusion`` (both, concatenated and
            fused by a 3x3 conv + BN + ReLU to the LiDAR channels, BEVFusion's ``ConvFuser``). A ``init`` RAD
            checkpoint then also gives the camera branch (its ``student.``).
        freeze_backbone_steps: steps at the start with the backbone's learning rate 0 (a frozen-backbone warm-up
            of the head; 0: none). backbone_lr_mult: the backbone group's learning-rate multiplier.
        heatmap_weight, l1_weight, velocity_weight: detection loss = heatmap_weight x focal + l1_weight x sum of
            the per-channel L1 losses, the two velocity channels weighted ``velocity_weight`` [CenterPoint: 1,
            0.25, 0.2].
        seg_x_range, seg_y_range, seg_cell: the segmentation grid in the LiDAR frame [nuScenes / BEVFusion: +-50 m
            at 0.5 m, 200 x 200]; the head's logits on the backbone's map are resampled onto it (``grid_sample``).
        seg_channels: hidden channels of the segmentation head. dice_weight: seg loss = BCE + dice_weight x dice.
        augment: augment the training points, boxes and map rasters (one similarity transform per keyframe, the
            same for all three). augment_draw: ``random`` = a fresh transform per keyframe and epoch, seeded by
            (data.seed, epoch, keyframe) [ours; CenterPoint's nuScenes recipe for the ranges below], or ``stored`` =
            the store's view-0 record (fixed per keyframe: every epoch sees the same transform).
            aug_rotation_deg, aug_scale, aug_flip_prob (each of x and y), aug_translation_std (x, y, z):
            the ``random`` draw's ranges [CenterPoint nuScenes: +-22.5 deg, 0.95-1.05, 0.5, 0].
        eval_split: devkit split evaluated (None: the validation split of the dataroot's version).
        dataroot: nuScenes dataroot of the annotations and maps (None: the one the store version names; checked
            against the version's input manifest either way).
    """

    fraction: float = 1.0
    fraction_by: str = "scenes"
    lidar_sweeps: int = 10
    init: str = "none"
    modality: str = "lidar"
    freeze_backbone_steps: int = 0
    backbone_lr_mult: float = 1.0
    heatmap_weight: float = 1.0
    l1_weight: float = 0.25
    velocity_weight: float = 0.2
    seg_x_range: tuple[float, float] = (-50.0, 50.0)
    seg_y_range: tuple[float, float] = (-50.0, 50.0)
    seg_cell: float = 0.5
    seg_channels: int = 64
    dice_weight: float = 1.0
    augment: bool = True
    augment_draw: str = "random"
    aug_rotation_deg: tuple[float, float] = (-22.5, 22.5)
    aug_scale: tuple[float, float] = (0.95, 1.05)
    aug_flip_prob: float = 0.5
    aug_translation_std: tuple[float, float, float] = (0.0, 0.0, 0.0)
    eval_split: str | None = None
    dataroot: str | None = None

    def __post_init__(self):
        for name in ("seg_x_range", "seg_y_range", "aug_rotation_deg", "aug_scale", "aug_translation_std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "init", str(self.init))
        if self.dataroot is not None:
            object.__setattr__(self, "dataroot", str(self.dataroot))
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0 < f <= 1:
            raise ConfigError("model.finetune.fraction", f, "must be a number in (0, 1] (the paper's: 0.05, 0.1, "
                              "0.2, 0.5, 1.0)")
        if self.fraction_by not in FRACTION_BY:
            raise ConfigError("model.finetune.fraction_by", self.fraction_by, f"must be one of {', '.join(FRACTION_BY)}")
        _check_int("model.finetune.lidar_sweeps", self.lidar_sweeps)
        if self.modality not in MODALITIES:
            raise ConfigError("model.finetune.modality", self.modality, f"must be one of {', '.join(MODALITIES)}")
        if not self.init:
            raise ConfigError("model.finetune.init", self.init, "must be 'none' or a checkpoint file or run folder")
        _check_int("model.finetune.freeze_backbone_steps", self.freeze_backbone_steps, 0)
        _check_int("model.finetune.seg_channels", self.seg_channels)
        for name in ("backbone_lr_mult", "l1_weight", "velocity_weight", "dice_weight"):
            _check_num(f"model.finetune.{name}", getattr(self, name), strict=False)
        _check_num("model.finetune.heatmap_weight", self.heatmap_weight)
        _check_num("model.finetune.seg_cell", self.seg_cell)
        for name in ("seg_x_range", "seg_y_range"):
            lo, hi = (getattr(self, name) + (0.0, 0.0))[:2]
            if len(getattr(self, name)) != 2 or not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ConfigError(f"model.finetune.{name}", getattr(self, name), "must be (lower, upper), finite")
            n = (hi - lo) / self.seg_cell
            if abs(n - round(n)) > 1e-6 * max(1.0, n):
                raise ConfigError(f"model.finetune.{name}", getattr(self, name),
                                  f"its length must be a whole number of {self.seg_cell} m cells")
        if not isinstance(self.augment, bool):
            raise ConfigError("model.finetune.augment", self.augment, "must be True or False")
        if self.augment_draw not in AUGMENT_DRAWS:
            raise ConfigError("model.finetune.augment_draw", self.augment_draw,
                              f"must be one of {', '.join(AUGMENT_DRAWS)}")
        for name, lo_min in (("aug_rotation_deg", -180.0), ("aug_scale", 1e-6)):
            v = getattr(self, name)
            if len(v) != 2 or not all(math.isfinite(x) for x in v) or v[0] > v[1] or v[0] < lo_min:
                raise ConfigError(f"model.finetune.{name}", v,
                                  f"must be (low, high), finite, low <= high, low >= {lo_min:g}")
        if self.aug_rotation_deg[1] > 180.0:
            raise ConfigError("model.finetune.aug_rotation_deg", self.aug_rotation_deg, "must lie within -180..180")
        if not (isinstance(self.aug_flip_prob, (int, float)) and 0.0 <= self.aug_flip_prob <= 1.0):
            raise ConfigError("model.finetune.aug_flip_prob", self.aug_flip_prob, "must be a probability in [0, 1]")
        t = self.aug_translation_std
        if len(t) != 3 or not all(math.isfinite(x) and x >= 0 for x in t):
            raise ConfigError("model.finetune.aug_translation_std", t, "must be three finite numbers >= 0 (x, y, z)")

    @property
    def uses_lidar(self) -> bool:
        """The LiDAR backbone is part of the model (``lidar`` and ``fusion``)."""
        return self.modality in ("lidar", "fusion")

    @property
    def uses_camera(self) -> bool:
        """The camera branch is part of the model and the stream reads the images (``camera`` and ``fusion``)."""
        return self.modality in ("camera", "fusion")

    @property
    def init_checkpoint(self) -> str | None:
        """The checkpoint to initialise the backbone from, or None (``init="none"``)."""
        return None if self.init.lower() == "none" else self.init

    @classmethod
    def matching(cls, backbone: PointPillarsConfig, **kw) -> FinetuneConfig:
        """A segmentation grid equal to the backbone's output map (no resampling)."""
        r = backbone.point_range
        return cls(seg_x_range=(r[0], r[3]), seg_y_range=(r[1], r[4]), seg_cell=backbone.out_cell, **kw)
