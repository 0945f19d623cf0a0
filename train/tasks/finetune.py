"""What the two fine-tuning tasks share (:class:`train.tasks.detect.DetectTask`, :class:`train.tasks.segment.SegmentTask`):
the stream of the training subset, the initialisation of the BEV encoder, the parameter groups with the frozen
warm-up, the checkpoint's record of the subset and of the initialising checkpoint, and the validation stream.

Initialisation (``model.finetune.init``): ``none``, or a checkpoint (file or run folder) of any task whose
``model.backbone`` equals this run's (:func:`train.checkpoint.load_backbone` refuses any other, naming the fields;
it also fixes the BEV grid, which the camera branch shares). What each part loads (:func:`init_bev`):

=========================  ===========================================  ===================================
checkpoint (its task)      LiDAR backbone (lidar, fusion)                camera branch (camera, fusion)
=========================  ===========================================  ===================================
PRC                        ``backbone.``                                 none: random (a log line says so)
RAD                        ``teacher.`` (the PRC teacher it distilled)   ``student.`` (its CameraBEV)
det / seg                  ``backbone.`` (if it had one)                 ``camera.`` (if it had one)
=========================  ===========================================  ===================================

A camera branch is loaded only when the checkpoint's ``model.camera`` and effective ``model.lss`` (bins,
channels, BEV channels, grid) equal this run's, else a :class:`ConfigError` naming the differing fields; a
part the checkpoint lacks stays random (logged); a checkpoint that gives nothing the modality uses (a PRC run
for ``camera``) is a :class:`ConfigError`. Parameter groups: ``backbone`` (the LiDAR backbone and the camera
branch; ``backbone_lr_mult`` x the base rate, learning rate 0 for the first ``freeze_backbone_steps`` steps: a
frozen-backbone warm-up that keeps the group in the optimizer, so DDP and resume need nothing special; its
BatchNorm statistics still follow the data) and ``head`` (the head, and the fuser).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from torch import nn

from shared.errors import ConfigError, InputError
from train.checkpoint import load_backbone, load_checkpoint, resolve_checkpoint
from train.config import FINETUNE_TASKS, TrainConfig

#: The checkpoint key under which each task keeps the LiDAR backbone (others: ``backbone.``).
BACKBONE_PREFIX = {"rad": "teacher."}
#: The checkpoint key under which each task keeps the camera branch (a CameraBEV); PRC has none.
CAMERA_PREFIX = {"rad": "student.", "det": "camera.", "seg": "camera."}


def _say(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(msg, file=sys.stderr, flush=True)


def camera_config_differences(cfg: TrainConfig, other: TrainConfig) -> dict[str, tuple]:
    """{"camera.<field>" / "lss.<field>": (this run's, the other's)} where the camera branches' configurations
    (``model.camera``, and ``model.lss`` with its grid) differ; empty when a camera branch of ``other`` fits."""
    from data_catalog.version import diff_specs
    from train.config import plain

    out = {}
    for name in ("camera", "lss"):
        diff = diff_specs(plain(dataclasses.asdict(getattr(cfg, name))),
                          plain(dataclasses.asdict(getattr(other, name))))
        out |= {f"{name}.{k}": v for k, v in diff.items()}
    return out


def init_bev(model: nn.Module, cfg: TrainConfig) -> dict | None:
    """Load ``cfg.finetune.init`` into the model's ``backbone`` / ``camera`` (see the module docstring); returns
    its identity (path, sha256, step, store_version, task) and ``loaded`` / ``random`` (the parts) or None for
    ``init="none"``."""
    init = cfg.finetune.init_checkpoint
    if init is None:
        return None
    path = resolve_checkpoint(init)
    state = load_checkpoint(path)
    src = state.get("config") or {}
    task = src.get("task", "prc")
    keys = state.get("model") or {}
    loaded, random = [], []
    info = None
    if model.backbone is not None:
        prefix = BACKBONE_PREFIX.get(task, "backbone.")
        if any(k.startswith(prefix) for k in keys):
            info = load_backbone(model.backbone, path, prefix=prefix, expected=dataclasses.asdict(cfg.backbone))
            loaded.append("backbone")
        else:
            random.append("backbone")
    if model.camera is not None:
        prefix = CAMERA_PREFIX.get(task)
        if prefix is not None and any(k.startswith(prefix) for k in keys):
            other = TrainConfig.from_dict(src)
            diff = camera_config_differences(cfg, other)
            if diff:
                fields = ", ".join(f"{k} (checkpoint {b!r}, expected {a!r})" for k, (a, b) in diff.items())
                raise ConfigError("model.camera", str(path), f"the checkpoint's camera branch differs: {fields}")
            got = load_backbone(model.camera, path, prefix=prefix, expected=dataclasses.asdict(cfg.backbone))
            info = info or got
            loaded.append("camera")
        else:
            random.append("camera")
    if not loaded:
        raise ConfigError("model.finetune.init", str(path),
                          f"this {task} checkpoint holds none of what {cfg.finetune.modality} fine-tuning uses "
                          f"({', '.join(random)}); a camera branch comes from a RAD run (or a camera / fusion "
                          "fine-tuning run)")
    if random:
        _say(f"init: {', '.join(loaded)} from {task} checkpoint {path}; {', '.join(random)} randomly initialised "
             f"(the checkpoint has none)")
    out = {k: info[k] for k in ("path", "sha256", "step", "store_version", "task")}
    return out | {"loaded": loaded, "random": random}


class FinetuneTask:
    """The shared part of the fine-tuning tasks (module docstring); subclasses set ``task``, ``title``,
    ``best_metric``, ``model_class`` (built from the TrainConfig, with a ``backbone``) and implement ``evaluate``."""

    task = ""
    model_class: type = nn.Module

    def __init__(self, cfg: TrainConfig, nusc=None):
        if cfg.task not in FINETUNE_TASKS or cfg.task != self.task:
            raise ConfigError("task", cfg.task, f"{type(self).__name__} needs a config with task={self.task!r}")
        self.cfg = cfg
        self.subset = None
        self.init_info: dict | None = None
        self._nusc = nusc
        self._eval_stream = None
        #: The robustness setting the evaluation stream applies (:meth:`set_corruption`; None: clean).
        self.corruption = None

    def set_corruption(self, corruption) -> None:
        """Evaluate under ``corruption`` (a :class:`train.eval.robustness.apply.EvalCorruption`, or None: clean)
        from now on; the evaluation stream is rebuilt."""
        self.corruption = corruption
        self._eval_stream = None

    def stream_kwargs(self) -> dict:
        c = self.cfg
        return {"task": c.task, "finetune": c.finetune, "head": c.center_head, "point_range": c.data.point_range,
                "verify_checksums": c.data.verify_shards, "images": c.images if c.finetune.uses_camera else None}

    def stream(self, rank: int, world: int):
        from train.data.finetune import FinetuneStream, collate_finetune

        d = self.cfg.data
        stream = FinetuneStream(d.store, d.version, augment=self.cfg.finetune.augment, nusc=self._nusc, seed=d.seed,
                                shuffle_scenes=d.shuffle_scenes, rank=rank, world_size=world,
                                global_batch=d.batch_size if d.global_batch else None, **self.stream_kwargs())
        self.subset = stream.subset
        return stream, collate_finetune

    def eval_stream(self):
        """The validation keyframes (``finetune.eval_split``, else the devkit's val split of the dataroot), no
        augmentation (points nor images), in store order; built once."""
        if self._eval_stream is None:
            from train.data.finetune import FinetuneStream
            from train.eval.detection import split_sample_tokens

            nusc = self.nusc()
            split = self.eval_split(nusc)
            d = self.cfg.data
            kw = self.stream_kwargs()
            if kw["images"] is not None:
                kw["images"] = dataclasses.replace(kw["images"], augment=False)
            self._eval_stream = FinetuneStream(d.store, d.version, sample_tokens=split_sample_tokens(nusc, split),
                                               augment=False, nusc=nusc, shuffle=False, rank=0, world_size=1,
                                               corruption=self.corruption, **kw)
        return self._eval_stream

    def eval_split(self, nusc) -> str:
        from train.data.fractions import split_names

        return self.cfg.finetune.eval_split or split_names(nusc.version)[1]

    def nusc(self):
        """The devkit of the store version's dataroot (opened once, checked against the version)."""
        if self._nusc is None:
            from data_catalog.reader import open_version
            from train.data.camera import version_dataroot

            d = self.cfg.data
            v = open_version(d.store, d.version, verify_checksums=False)
            _, self._nusc = version_dataroot(v, self.cfg.finetune.dataroot, None, "model.finetune.dataroot")
        return self._nusc

    def build_model(self) -> nn.Module:
        """The model, its LiDAR backbone and camera branch initialised from ``finetune.init`` (:func:`init_bev`,
        recorded in :attr:`init_info`)."""
        model = self.model_class(self.cfg)
        self.init_info = init_bev(model, self.cfg)
        return model

    def frozen(self, model: nn.Module) -> list[nn.Module]:
        return []

    def param_groups(self, model: nn.Module) -> list[dict]:
        ft = self.cfg.finetune
        backbone = [p for m in (model.backbone, model.camera) if m is not None for p in m.parameters()]
        ids = {id(p) for p in backbone}
        return [{"name": "backbone", "params": backbone, "lr_mult": ft.backbone_lr_mult,
                 "frozen_steps": ft.freeze_backbone_steps},
                {"name": "head", "params": [p for p in model.parameters() if id(p) not in ids], "lr_mult": 1.0}]

    def checkpoint_extra(self) -> dict:
        return {"subset": self.subset.to_dict() if self.subset is not None else None, "init": self.init_info}

    def check_resume(self, state: dict) -> None:
        had = (state.get("subset") or {}).get("sample_tokens")
        now = list(self.subset.sample_tokens) if self.subset is not None else None
        if had != now:
            raise InputError(f"this run was trained on another subset of the labels ({len(had or [])} keyframes, "
                             f"now {len(now or [])}); resume with the same dataroot, fraction and fraction_by, or "
                             "start a new run folder", self.cfg.data.store)
        had_init = (state.get("init") or {}).get("sha256")
        now_init = (self.init_info or {}).get("sha256")
        if had_init != now_init:
            raise InputError(f"this run was initialised from {had_init}, not from {now_init}; resume with the same "
                             "--init or start a new run folder", self.cfg.finetune.init)


def eval_batches(model: nn.Module, stream, batch_size: int):
    """The batches of ``stream`` (in its order, this process) on ``model``'s device, tensors moved."""
    import torch
    from torch.utils.data import DataLoader

    from train.data.finetune import collate_finetune

    device = next(model.parameters()).device
    for batch in DataLoader(stream, batch_size=batch_size, collate_fn=collate_finetune, num_workers=0):
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
