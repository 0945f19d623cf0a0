"""RAD (region-aware distillation), CALICO's second stage (METHOD.md section 3): the PRC-pretrained LiDAR backbone,
frozen, teaches the camera branch.

Per batch (the contract of :mod:`train.data.camera`): the teacher's BEV map of view 0 of the points (the stored
augmentation record 0, so the BEV frame of both branches), the student's BEV map from the six images lifted with
LSS into the same frame (``bev_aug``) and grid (asserted at build time), both read bilinearly at the sampled
points (:mod:`train.bev`), projected and L2-normalised, and :func:`train.losses.rad_loss` between them (region
weighting for CALICO, uniform for the plain-distillation baseline).

Frozen: the teacher backbone always (eval mode, so its BatchNorm statistics never move, no gradients, not in
the optimizer) and, with ``teacher_projector="frozen"``, the PRC checkpoint's projection head. Parameter
groups: ``image_backbone`` (the timm model, ``backbone_lr_mult`` x the base rate) and ``rest`` (neck, view
transform, BEV encoder, projectors). The teacher's checkpoint identity (path, SHA-256, step, store version and
config) is recorded in every checkpoint; resuming with another teacher is refused.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from shared.errors import ConfigError, InputError
from train.bev import in_range, sample_bev_batched
from train.checkpoint import load_backbone
from train.config import TrainConfig
from train.losses import rad_loss
from train.models.lss import CameraBEV, check_grid_matches
from train.models.pointpillars import PointPillars
from train.tasks.prc import ProjectionHead


class RADModel(nn.Module):
    """Teacher PointPillars (``self.teacher``) + its projector (``self.teacher_head``), the camera branch
    (``self.student``: timm backbone, FPN, LSS, BEV encoder) + its projector (``self.student_head``)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        bb, lss, rad = cfg.backbone, cfg.lss, cfg.rad
        check_grid_matches(lss, bb.point_range, bb.out_cell)
        self.point_range = bb.point_range
        self.teacher = PointPillars(bb)
        t_hidden, t_out = rad.proj_hidden, rad.proj_out
        if rad.teacher_projector == "frozen":
            prc = cfg.prc
            if prc.proj_out != rad.proj_out:
                raise ConfigError("model.rad.proj_out", rad.proj_out,
                                  f"must equal the PRC head's proj_out {prc.proj_out} with a frozen teacher projector")
            t_hidden, t_out = prc.proj_hidden, prc.proj_out
        self.teacher_head = ProjectionHead(self.teacher.out_channels, t_hidden, t_out)
        self.student = CameraBEV(cfg.camera, lss)
        self.student_head = ProjectionHead(self.student.out_channels, rad.proj_hidden, rad.proj_out)

    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Student and teacher embeddings of the sampled points.

        Returns:
            c, t: (B, K, D) float32 L2-normalised student (camera) and teacher (LiDAR) embeddings;
            region: (B, K) int64 region of each sampled point (-1 semantic-less);
            valid: (B, K) bool, ``sample_valid`` and inside the map's xy range.
        """
        points = batch["points"]
        b = int(batch["batch_size"])
        if points.ndim != 3 or points.shape[0] < 1 or points.shape[2] < 4:
            raise ValueError(f"batch['points'] must be (1, P, 4), got {tuple(points.shape)}")
        p = points.shape[1]
        sample_idx = batch["sample_idx"].long()
        valid = batch["sample_valid"].bool() & (sample_idx >= 0) & (sample_idx < p)
        idx = sample_idx.clamp(0, max(p - 1, 0))
        with torch.no_grad():
            t_bev = self.teacher(points[0], batch["batch_idx"].long(), b)  # (B, C_l, H, W)
        c_bev = self.student(batch)  # (B, C_c, H, W)
        xy = points[0][idx][..., :2]  # (B, K, 2)
        valid = valid & in_range(xy, self.point_range)
        t = self.teacher_head(sample_bev_batched(t_bev, xy, self.point_range)).float()
        c = self.student_head(sample_bev_batched(c_bev, xy, self.point_range)).float()
        return c, t, batch["region"].long()[idx], valid

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """{"loss", "rad", "pos_cos"}: the RAD loss and the mean cosine of the valid (student, teacher) pairs."""
        c, t, region, valid = self.embed(batch)
        rad = self.cfg.rad
        loss = rad_loss(c, t, region, valid, tau=rad.tau, weighting=rad.weighting)
        cos = (c * t).sum(-1)
        pos = (cos * valid).sum() / valid.sum().clamp(min=1)
        return {"loss": loss, "rad": loss.detach(), "pos_cos": pos.detach()}


class RADTask:
    """RAD as a task of :func:`train.loop.train` (see the module docstring). ``cfg.teacher`` must name a PRC
    checkpoint (file or run folder) whose backbone configuration equals ``cfg.model.backbone``."""

    title = "RAD distillation"

    def __init__(self, cfg: TrainConfig):
        if cfg.task != "rad":
            raise ConfigError("task", cfg.task, "RADTask needs a config with task='rad'")
        if not cfg.teacher:
            raise ConfigError("teacher", cfg.teacher, "RAD needs a PRC checkpoint (file or run folder) as teacher")
        self.cfg = cfg
        self.teacher_info: dict | None = None

    def stream(self, rank: int, world: int):
        from train.data.camera import CameraStream, collate_rad

        d = self.cfg.data
        stream = CameraStream(d.store, d.version, images=self.cfg.images, n_rich=d.n_rich, n_less=d.n_less,
                              point_range=d.point_range, seed=d.seed, shuffle_scenes=d.shuffle_scenes, rank=rank,
                              world_size=world, global_batch=d.batch_size if d.global_batch else None,
                              verify_checksums=d.verify_shards)
        return stream, collate_rad

    def build_model(self) -> RADModel:
        cfg = self.cfg
        model = RADModel(cfg)
        self.teacher_info = load_backbone(model.teacher, cfg.teacher, prefix="backbone.",
                                          expected=dataclasses.asdict(cfg.backbone))
        if self.teacher_info["task"] != "prc":
            raise InputError(f"the teacher must be a PRC checkpoint, this one is of task "
                             f"{self.teacher_info['task']!r}", self.teacher_info["path"])
        if cfg.rad.teacher_projector == "frozen":
            load_backbone(model.teacher_head, cfg.teacher, prefix="head.")
        return model

    def frozen(self, model: RADModel) -> list[nn.Module]:
        return [model.teacher] + ([model.teacher_head] if self.cfg.rad.teacher_projector == "frozen" else [])

    def param_groups(self, model: RADModel) -> list[dict]:
        image = list(model.student.backbone.parameters())
        ids = {id(p) for p in image} | {id(p) for m in self.frozen(model) for p in m.parameters()}
        rest = [p for p in model.parameters() if id(p) not in ids]
        return [{"name": "image_backbone", "params": image, "lr_mult": self.cfg.rad.backbone_lr_mult},
                {"name": "rest", "params": rest, "lr_mult": 1.0}]

    def checkpoint_extra(self) -> dict:
        info = dict(self.teacher_info or {})
        return {"teacher": {k: info.get(k) for k in ("path", "sha256", "step", "store_version", "config")}}

    def check_resume(self, state: dict) -> None:
        had = (state.get("teacher") or {}).get("sha256")
        now = (self.teacher_info or {}).get("sha256")
        if had != now:
            raise InputError(f"this run was distilled from teacher {had} "
                             f"({(state.get('teacher') or {}).get('path')}), not from {now}; resume with the same "
                             f"teacher or start a new run folder", self.cfg.teacher)

    def evaluate(self, model: RADModel) -> dict | None:
        return None
