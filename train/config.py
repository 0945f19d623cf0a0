"""Training configuration, any task: frozen dataclasses with validation (ConfigError naming the field).

``TrainConfig(task=..., data=DataConfig(...), optim=OptimConfig(...), images=ImageConfig(...), model={...})``;
presets :func:`small` (CPU, small grid and camera model) and :func:`nuscenes` (the paper's setting: +-51.2 m,
pillar 0.2 m, 512x512; Swin-T at 256x704 for RAD), each for ``task="prc"`` or ``"rad"``. ``to_dict()`` gives plain
JSON-able values (stored in every checkpoint), ``from_dict`` reads them back, :func:`with_overrides` applies
``section.field=value`` strings (the CLI's ``--set``).

``model`` is a dict of sections, each the fields of one dataclass of :mod:`train.model_config`: ``backbone``
(PointPillarsConfig), ``prc`` (PRCConfig but ``n_rich``/``n_less``, which come from ``data``), ``camera``
(CameraConfig), ``lss`` (LSSConfig but its grid, which is the backbone's output map), ``rad`` (RADConfig); the
properties :attr:`TrainConfig.prc`, ``.camera``, ``.lss``, ``.rad`` build (and so validate) them. This module
imports no model.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from train.model_config import CameraConfig, FinetuneConfig, LSSConfig, PointPillarsConfig, PRCConfig, RADConfig


def _int(name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(name, v, f"must be an integer >= {lo}")


def _pos(name: str, v, allow_zero: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
            or (v == 0 and not allow_zero):
        raise ConfigError(name, v, "must be a finite number " + (">= 0" if allow_zero else "> 0"))


NUSCENES_RANGE = PointPillarsConfig().point_range
SMALL_RANGE = PointPillarsConfig.small().point_range


@dataclass(frozen=True)
class DataConfig:
    """store: store folder; version: id or unique prefix (None: the latest); batch_size: scans per step and
    process; num_workers: DataLoader workers (0: in the loop's process); n_rich / n_less: sampled semantic-rich
    / semantic-less points per scan [paper: 1024 each]; seed: shuffling and sampling; point_range: points
    outside it (in either view) are dropped, must equal the backbone's; shuffle_scenes: scenes shuffled together
    in a worker; global_batch: split so that W processes read what one process with batch W x batch_size reads
    (for checking DDP; see ``PRCStream``); verify_shards: check every shard's files against the SHA-256 of its
    manifest when first opened in a process (False: sizes only; ``--no-verify-shards``)."""

    store: str = ""
    version: str | None = None
    batch_size: int = 4
    num_workers: int = 2
    n_rich: int = 1024
    n_less: int = 1024
    seed: int = 0
    point_range: tuple[float, ...] = NUSCENES_RANGE
    shuffle_scenes: int = 4
    global_batch: bool = False
    verify_shards: bool = True

    def __post_init__(self):
        object.__setattr__(self, "store", str(self.store))
        if not isinstance(self.verify_shards, bool):
            raise ConfigError("data.verify_shards", self.verify_shards, "must be True or False")
        object.__setattr__(self, "point_range", tuple(float(v) for v in self.point_range))
        _int("data.batch_size", self.batch_size, 1)
        _int("data.num_workers", self.num_workers, 0)
        _int("data.n_rich", self.n_rich, 0)
        _int("data.n_less", self.n_less, 0)
        _int("data.seed", self.seed, 0)
        _int("data.shuffle_scenes", self.shuffle_scenes, 1)
        if self.n_rich + self.n_less == 0:
            raise ConfigError("data.n_rich", self.n_rich, "n_rich + n_less must be > 0")
        r = self.point_range
        if len(r) != 6 or not all(math.isfinite(v) for v in r) or not all(r[i] < r[i + 3] for i in range(3)):
            raise ConfigError("data.point_range", r, "must be (x0, y0, z0, x1, y1, z1), finite, min < max")


IMAGE_DECODERS = ("torchvision", "pillow")
MISSING_IMAGE = ("error", "mask")


@dataclass(frozen=True)
class ImageConfig:
    """Camera images of a keyframe, for the camera streams (RAD, camera fine-tuning).

    dataroot: nuScenes dataroot holding the images (None: the one the store version's lineage names); it must
    match the version's input manifest. size: (H, W) network input, must equal ``model.camera.image_size``.
    resize: training resize factor range, relative to the factor that fits the stored image's width to
    ``size[1]`` (nuScenes 1600 -> 704 with (0.86, 1.25) is BEVFusion's absolute (0.38, 0.55)); evaluation uses
    1.0. crop_bottom: (lo, hi) fraction of the resized height cut off at the bottom before the crop's top is
    placed [BEVFusion: (0.0, 0.0)]. rotate: max |in-plane rotation| in degrees [BEVFusion: 5.4]. flip: random
    horizontal flips. decoder: JPEG decoding with ``torchvision.io.decode_jpeg`` or Pillow. missing: ``error``
    (a missing or unreadable image is an error naming the file) or ``mask`` (the camera is masked out of the
    sample and counted). augment: False for evaluation (fixed resize 1.0, centred crop, no flip or rotation).
    mean/std: per-channel normalisation of RGB in [0, 1] (ImageNet's, as timm's backbones expect).
    """

    dataroot: str | None = None
    size: tuple[int, int] = (256, 704)
    resize: tuple[float, float] = (0.86, 1.25)
    crop_bottom: tuple[float, float] = (0.0, 0.0)
    rotate: float = 5.4
    flip: bool = True
    decoder: str = "torchvision"
    missing: str = "error"
    augment: bool = True
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        for name in ("size", "resize", "crop_bottom", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.dataroot is not None:
            object.__setattr__(self, "dataroot", str(self.dataroot))
        if len(self.size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8
                                          for v in self.size):
            raise ConfigError("images.size", self.size, "must be (height, width), integers >= 8")
        lo, hi = (tuple(self.resize) + (0, 0))[:2]
        if len(self.resize) != 2 or not (0 < lo <= hi) or not all(math.isfinite(v) for v in self.resize):
            raise ConfigError("images.resize", self.resize, "must be (lo, hi) with 0 < lo <= hi")
        cb = self.crop_bottom
        if len(cb) != 2 or not (0.0 <= cb[0] <= cb[1] < 1.0):
            raise ConfigError("images.crop_bottom", cb, "must be (lo, hi) with 0 <= lo <= hi < 1")
        _pos("images.rotate", self.rotate, allow_zero=True)
        if self.decoder not in IMAGE_DECODERS:
            raise ConfigError("images.decoder", self.decoder, f"must be one of {', '.join(IMAGE_DECODERS)}")
        if self.missing not in MISSING_IMAGE:
            raise ConfigError("images.missing", self.missing, f"must be one of {', '.join(MISSING_IMAGE)}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(v > 0 for v in self.std):
            raise ConfigError("images.std", self.std, "mean and std need 3 values, std > 0")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW [proto: lr 1e-4, weight decay 0.01] with linear warmup over ``warmup_steps`` then cosine decay to
    ``min_lr_ratio * lr`` at ``max_steps``; ``grad_clip``: max global gradient norm (0: no clipping)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    max_steps: int = 20000
    min_lr_ratio: float = 0.01
    grad_clip: float = 10.0

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _pos("optim.lr", self.lr)
        _pos("optim.weight_decay", self.weight_decay, allow_zero=True)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("optim.betas", self.betas, "must be two numbers in [0, 1)")
        _int("optim.warmup_steps", self.warmup_steps, 0)
        _int("optim.max_steps", self.max_steps, 1)
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            raise ConfigError("optim.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        _pos("optim.grad_clip", self.grad_clip, allow_zero=True)

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


#: The training tasks (``calico train pretrain-prc`` / ``pretrain-rad`` / ``finetune --task det|seg``); the loop
#: is the same for all.
TASKS: tuple[str, ...] = ("prc", "rad", "det", "seg")
#: The fine-tuning tasks.
FINETUNE_TASKS: tuple[str, ...] = ("det", "seg")
_MODEL_SECTIONS = ("backbone", "prc", "camera", "lss", "rad", "head", "finetune")
#: Fields of the detection head that come from the backbone.
_HEAD_FROM_BACKBONE = ("point_range", "cell", "in_channels")


@dataclass(frozen=True)
class TrainConfig:
    """One training run, any task.

    task: ``prc`` (point-region contrast, LiDAR), ``rad`` (region-aware distillation into the camera branch),
    ``det`` (3-D detection fine-tuning) or ``seg`` (BEV map segmentation fine-tuning);
    data, optim, images (camera tasks only); model: {"backbone": PointPillarsConfig fields, "prc": PRCConfig
    fields, "camera": CameraConfig fields, "lss": LSSConfig fields but the grid (taken from the backbone's output
    map), "rad": RADConfig fields, "head": CenterHeadConfig fields but the grid and input channels (taken from
    the backbone's output map), "finetune": FinetuneConfig fields}; teacher: the PRC checkpoint file RAD distils from (its backbone config must
    equal ``model.backbone``); log_every: steps between metric lines (and progress lines when stderr is not a
    terminal); ckpt_every: steps between checkpoints (and one at the end and one on SIGINT / SIGTERM);
    keep_last: checkpoints kept (the latest), keep_best: also keep the best one (lowest mean logged loss over the
    ``ckpt_every`` steps up to it, or the task's evaluation metric; :func:`train.checkpoint.checkpoint_scores`);
    eval_every: steps between the task's evaluations (0: none); max_nan: consecutive
    non-finite losses before the run stops with an error; amp: bfloat16 autocast on CUDA (never on CPU);
    deterministic: ``torch.use_deterministic_algorithms(True)``."""

    task: str = "prc"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    model: dict = field(default_factory=dict)
    teacher: str | None = None
    log_every: int = 1
    ckpt_every: int = 1000
    keep_last: int = 3
    keep_best: bool = True
    eval_every: int = 0
    max_nan: int = 5
    amp: bool = True
    deterministic: bool = False

    def __post_init__(self):
        if isinstance(self.data, dict):
            object.__setattr__(self, "data", DataConfig(**self.data))
        if isinstance(self.optim, dict):
            object.__setattr__(self, "optim", OptimConfig(**self.optim))
        if isinstance(self.images, dict):
            object.__setattr__(self, "images", ImageConfig(**self.images))
        if self.task not in TASKS:
            raise ConfigError("task", self.task, f"must be one of {', '.join(TASKS)}")
        if not isinstance(self.model, dict) or set(self.model) - set(_MODEL_SECTIONS):
            raise ConfigError("model", sorted(self.model) if isinstance(self.model, dict) else self.model,
                              f"must be a dict with keys among {', '.join(_MODEL_SECTIONS)}")
        _int("log_every", self.log_every, 1)
        _int("ckpt_every", self.ckpt_every, 1)
        _int("keep_last", self.keep_last, 1)
        if not isinstance(self.keep_best, bool):
            raise ConfigError("keep_best", self.keep_best, "must be True or False")
        _int("eval_every", self.eval_every, 0)
        _int("max_nan", self.max_nan, 1)
        rng = self.backbone.point_range
        if tuple(float(v) for v in rng) != self.data.point_range:
            raise ConfigError("data.point_range", self.data.point_range,
                              f"must equal model.backbone.point_range {tuple(rng)}")
        self.prc  # noqa: B018 - builds (so validates) the model sections the task uses
        if self.task == "rad":
            self.rad  # noqa: B018
            if self.images.size != self.camera.image_size:
                raise ConfigError("images.size", self.images.size,
                                  f"must equal model.camera.image_size {self.camera.image_size}")
            self.lss  # noqa: B018
        if self.task in FINETUNE_TASKS:
            ft = self.finetune
            if ft.uses_camera:
                missing = [k for k in ("camera", "lss") if k not in self.model]
                if missing:
                    raise ConfigError("model.finetune.modality", ft.modality,
                                      f"needs the camera branch's model.{' and model.'.join(missing)}: pass "
                                      "--modality (the presets add them) rather than --set model.finetune.modality")
                if self.images.size != self.camera.image_size:
                    raise ConfigError("images.size", self.images.size,
                                      f"must equal model.camera.image_size {self.camera.image_size}")
                self.lss  # noqa: B018
            self.center_head  # noqa: B018

    @staticmethod
    def _section(cls_, values: dict, name: str):
        vals = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            return cls_(**vals)
        except TypeError as exc:
            raise ConfigError(f"model.{name}", sorted(vals), str(exc)) from None

    @property
    def backbone(self) -> PointPillarsConfig:
        """The LiDAR backbone's configuration (PRC's model, RAD's teacher)."""
        return self._section(PointPillarsConfig, self.model.get("backbone", {}), "backbone")

    @property
    def prc(self) -> PRCConfig:
        """PRC's model configuration (``PRCConfig`` with its ``PointPillarsConfig``)."""
        prc = dict(self.model.get("prc", {}))
        if {"backbone", "n_rich", "n_less"} & set(prc):
            raise ConfigError("model.prc", sorted(prc), "backbone, n_rich and n_less are set elsewhere")
        return self._section(PRCConfig, dict(prc, backbone=self.backbone, n_rich=max(1, self.data.n_rich),
                                             n_less=max(1, self.data.n_less)), "prc")

    @property
    def camera(self) -> CameraConfig:
        return self._section(CameraConfig, self.model.get("camera", {}), "camera")

    @property
    def lss(self) -> LSSConfig:
        """The view transform's configuration; its grid is the backbone's output map (range and cell)."""
        lss = dict(self.model.get("lss", {}))
        if {"point_range", "cell"} & set(lss):
            raise ConfigError("model.lss", sorted(lss), "point_range and cell come from model.backbone "
                              "(the camera BEV grid equals the LiDAR grid)")
        bb = self.backbone
        return self._section(LSSConfig, dict(lss, point_range=bb.point_range, cell=bb.out_cell), "lss")

    @property
    def rad(self) -> RADConfig:
        return self._section(RADConfig, self.model.get("rad", {}), "rad")

    @property
    def finetune(self) -> FinetuneConfig:
        """Fine-tuning's configuration (fraction, sweeps, init, warm-up, loss weights, segmentation grid)."""
        return self._section(FinetuneConfig, self.model.get("finetune", {}), "finetune")

    @property
    def center_head(self):
        """The detection head on the backbone's output map (:class:`train.data.det_targets.CenterHeadConfig`); its
        input channels are the camera BEV's (``lss.bev_channels``) for ``modality="camera"``."""
        from train.data.det_targets import CenterHeadConfig

        head = dict(self.model.get("head", {}))
        if set(_HEAD_FROM_BACKBONE) & set(head):
            raise ConfigError("model.head", sorted(head), f"{', '.join(_HEAD_FROM_BACKBONE)} come from model.backbone "
                              "(the head reads the backbone's output map)")
        bb = self.backbone
        # the head reads the LiDAR map (lidar; fusion: the fuser's output has the LiDAR channels) or the camera's
        ft = self.model.get("finetune") or {}
        cin = self.lss.bev_channels if ft.get("modality", "lidar") == "camera" else bb.out_channels
        return self._section(CenterHeadConfig, dict(head, point_range=bb.point_range, cell=bb.out_cell,
                                                    in_channels=cin), "head")

    def to_dict(self) -> dict:
        """Plain JSON-able values (tuples as lists)."""
        return {"task": self.task, "data": plain(dataclasses.asdict(self.data)),
                "optim": plain(dataclasses.asdict(self.optim)), "images": plain(dataclasses.asdict(self.images)),
                "model": plain(copy.deepcopy(self.model)), "teacher": self.teacher, "log_every": self.log_every,
                "ckpt_every": self.ckpt_every, "keep_last": self.keep_last, "keep_best": self.keep_best,
                "eval_every": self.eval_every, "max_nan": self.max_nan,
                "amp": self.amp, "deterministic": self.deterministic}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        data = dict(d.pop("data", {}))
        optim = dict(d.pop("optim", {}))
        images = dict(d.pop("images", {}))
        try:
            return cls(data=DataConfig(**data), optim=OptimConfig(**optim), images=ImageConfig(**images), **d)
        except TypeError as exc:
            raise ConfigError("config", sorted(d), str(exc)) from None


#: Fields that do not change what a run computes: a resume may change them (:func:`result_changes`). Not here,
#: so refused on resume without ``--allow-config-change``: ``optim.max_steps`` (the cosine schedule spans it),
#: ``data.num_workers`` (the epoch's items are cut into world x workers parts, so the batch order depends on it),
#: ``deterministic`` and ``amp`` (other kernels). ``data.store`` and ``images.dataroot`` may move because the
#: store version id and the dataroot's manifest are checked; ``teacher`` because its SHA-256 is (RAD).
NON_RESULT_FIELDS: tuple[str, ...] = ("log_every", "ckpt_every", "keep_last", "keep_best", "eval_every",
                                      "data.store", "data.verify_shards", "images.dataroot", "teacher",
                                      "model.finetune.dataroot")


def result_changes(saved: dict, now: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """The differences between a checkpoint's configuration ``saved`` and ``now`` (both ``to_dict()``), as
    ``{dotted.field: (saved value, new value)}``: (those that change the result, those in
    :data:`NON_RESULT_FIELDS`)."""
    from data_catalog.version import diff_specs

    diff = diff_specs(plain(saved), plain(now))
    free = {k: v for k, v in diff.items() if any(k == f or k.startswith(f + ".") for f in NON_RESULT_FIELDS)}
    return {k: v for k, v in diff.items() if k not in free}, free


def plain(x):
    """Plain JSON-able values: tuples (also nested in dicts and lists) become lists."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


#: The detection head of the CPU presets (thinner than CenterPoint's 64 channels).
SMALL_HEAD = {"shared_channels": 32, "head_channels": 32}


def small(store: str = "", version: str | None = None, task: str = "prc",
          backbone: PointPillarsConfig | None = None, modality: str = "lidar") -> TrainConfig:
    """CPU preset: ``PointPillarsConfig.small()`` (+-25.6 m, pillar 0.4 m, 128x128 pillars, 64x64 output at
    0.8 m), 2 scans of 256 + 256 points, short warmup. RAD: the small timm camera backbone (resnet18) at 96x256,
    depth bins 1-36 m at 1 m (the grid's corner is 36 m away; 1-60 m with a wider backbone), 32 lifted channels,
    a 64-channel camera BEV. det / seg: a 32-channel CenterPoint head, the segmentation grid equal to the
    backbone's output map, 10 sweeps, an evaluation every 50 steps (ranked by NDS / mIoU); ``modality``
    ``camera`` / ``fusion`` add RAD's camera branch and images (so that a RAD run of this preset initialises
    it) and 2 DataLoader workers. ``backbone``: another LiDAR backbone (:func:`small_wide` passes
    ``PointPillarsConfig.small_wide()``)."""
    bb = backbone if backbone is not None else PointPillarsConfig.small()
    model = {"backbone": plain(dataclasses.asdict(bb)), "prc": {}}
    images = ImageConfig()
    cameras = task == "rad" or (task in FINETUNE_TASKS and modality != "lidar")
    if cameras:
        cam = CameraConfig.small()
        far = math.hypot(*bb.point_range[3:5])
        model |= {"camera": plain(dataclasses.asdict(cam)),
                  "lss": {"depth_bins": [1.0, 36.0 if far <= 36.0 else 60.0, 1.0], "channels": 32,
                          "bev_channels": 64}}
        images = ImageConfig(size=cam.image_size)
    if task == "rad":
        model["rad"] = {}
    if task in FINETUNE_TASKS:
        model |= {"head": dict(SMALL_HEAD),
                  "finetune": plain(dataclasses.asdict(FinetuneConfig.matching(bb, modality=modality)))}
    return TrainConfig(
        task=task,
        data=DataConfig(store=store, version=version, batch_size=2, num_workers=2 if cameras else 0,
                        n_rich=256, n_less=256, point_range=bb.point_range),
        optim=OptimConfig(lr=1e-3, warmup_steps=10, max_steps=200), images=images,
        model=model, log_every=1, ckpt_every=50, eval_every=50 if task in FINETUNE_TASKS else 0)


def small_wide(store: str = "", version: str | None = None, task: str = "prc", modality: str = "lidar"
               ) -> TrainConfig:
    """:func:`small` on ``PointPillarsConfig.small_wide()``: +-51.2 m at 0.8 m pillars (128x128 canvas and output
    map), so that detection sees boxes out to ~50 m as on nuScenes. PRC / RAD runs meant to initialise a
    fine-tuning run of this preset must be trained with it too (the backbones must be equal)."""
    return small(store, version, task, backbone=PointPillarsConfig.small_wide(), modality=modality)


def nuscenes(store: str = "", version: str | None = None, task: str = "prc", modality: str = "lidar"
             ) -> TrainConfig:
    """The paper's setting: +-51.2 m, pillar 0.2 m (512x512), N = M = 1024, AdamW lr 1e-4, wd 0.01. RAD: Swin-T at
    256x704, six cameras, an FPN to 256 channels at stride 8, LSS bins 1-60 m at 0.5 m, 80 channels, onto the
    128x128 / 0.8 m output grid of the LiDAR backbone (METHOD.md section 7), batch 1 per process. det / seg:
    CenterPoint's head (64 channels), 10 sweeps, the 200x200 / 0.5 m segmentation grid, evaluation every 1000
    steps; ``modality`` ``camera`` / ``fusion`` add RAD's camera branch (Swin-T 256x704, the same LSS)."""
    model = {"backbone": plain(dataclasses.asdict(PointPillarsConfig())), "prc": {}}
    if task == "rad" or (task in FINETUNE_TASKS and modality != "lidar"):
        model |= {"camera": plain(dataclasses.asdict(CameraConfig())), "lss": {}}
    if task == "rad":
        model["rad"] = {}
    if task in FINETUNE_TASKS:
        model |= {"head": {}, "finetune": {"modality": modality} if modality != "lidar" else {}}
    return TrainConfig(
        task=task,
        data=DataConfig(store=store, version=version, batch_size=1 if task == "rad" else 4, num_workers=4,
                        n_rich=1024, n_less=1024, point_range=NUSCENES_RANGE),
        optim=OptimConfig(lr=1e-4, weight_decay=0.01, warmup_steps=500, max_steps=20000),
        model=model, log_every=10, ckpt_every=1000, eval_every=1000 if task in FINETUNE_TASKS else 0)


PRESETS = {"small": small, "small-wide": small_wide, "nuscenes": nuscenes}


def _parse(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def with_teacher(cfg: TrainConfig, teacher: str | Path, teacher_config: dict) -> TrainConfig:
    """``cfg`` distilling from the checkpoint file ``teacher`` whose configuration is ``teacher_config``: its LiDAR
    backbone and PRC head configuration and point range replace ``cfg``'s (the teacher is built as it was
    trained)."""
    t = TrainConfig.from_dict(teacher_config)
    d = cfg.to_dict()
    td = t.to_dict()
    d["model"]["backbone"] = td["model"].get("backbone", {})
    d["model"]["prc"] = td["model"].get("prc", {})
    d["data"]["point_range"] = td["data"]["point_range"]
    d["teacher"] = str(teacher)
    return TrainConfig.from_dict(d)


def with_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings (``optim.lr=3e-4``, ``data.batch_size=8``, ``model.backbone.pillar_size=0.4``,
    ``max_nan=3``); values are Python literals (else strings). Unknown keys raise :class:`ConfigError`."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "expected key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                if parts[0] == "model" and p in _MODEL_SECTIONS and p not in node:
                    node[p] = {}
                else:
                    raise ConfigError(key, text, "unknown configuration section")
            node = node[p]
        if parts[0] != "model" and parts[-1] not in node:
            raise ConfigError(key, text, f"unknown field; known: {', '.join(sorted(node))}")
        node[parts[-1]] = _parse(text.strip())
    return TrainConfig.from_dict(d)
