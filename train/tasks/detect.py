"""3-D detection fine-tuning (METHOD.md section 4): the BEV map of the modality (LiDAR PointPillars, camera LSS, or
both fused: :class:`train.models.fuser.BevEncoder`), a CenterPoint head on it, CenterPoint's losses, and the
devkit's ``DetectionEval`` on the validation split.

Loss (CenterPoint's): ``heatmap_weight x`` :func:`train.losses.gaussian_focal_loss` ``+ l1_weight x`` the sum over
the ten regression channels of :func:`train.losses.center_l1_loss`, the two velocity channels weighted
``velocity_weight`` [1, 0.25, 0.2]. Logged: ``loss``, ``heatmap``, ``l1``.

Evaluation (every ``eval_every`` steps and at the end, on rank 0): the validation keyframes without augmentation,
:func:`train.models.heads.decode_boxes` (top-k, class-wise NMS on the BEV envelopes), the boxes into the global
frame (:func:`train.data.boxes.to_global`), a submission listing every sample of the split
(:func:`train.eval.detection.make_submission`, ``meta``: ``use_lidar`` / ``use_camera`` of the modality) and the
devkit's ``DetectionEval`` with ``detection_cvpr_2019``: ``mAP``, ``NDS``, the true-positive errors and each
class's AP at 2 m (``car_AP_2.0``...).
The best checkpoint is the one of the highest NDS.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.errors import ConfigError
from train.config import TrainConfig
from train.data.det_targets import NUM_REG, REG_SLICES
from train.losses import center_l1_loss, gaussian_focal_loss
from train.models.fuser import BevEncoder
from train.models.heads import CenterHead, CenterOutput, decode_boxes
from train.tasks.finetune import FinetuneTask, eval_batches


class DetectionModel(BevEncoder):
    """The BEV map of the modality (:class:`train.models.fuser.BevEncoder`: ``self.backbone`` PointPillars,
    ``self.camera`` CameraBEV, ``self.fuser``) + :class:`CenterHead` (``self.head``) + CenterPoint's losses."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.head_cfg = cfg.center_head
        ft = cfg.finetune
        if self.head_cfg.in_channels != self.out_channels:
            raise ConfigError("model.head.in_channels", self.head_cfg.in_channels,
                              f"must equal the {ft.modality} BEV map's {self.out_channels} channels")
        self.head = CenterHead(self.head_cfg)
        w = torch.ones(NUM_REG)
        w[REG_SLICES["vel"]] = ft.velocity_weight
        self.register_buffer("code_weights", w, persistent=False)
        self.heatmap_weight, self.l1_weight = ft.heatmap_weight, ft.l1_weight

    def predict(self, batch: dict) -> CenterOutput:
        return self.head(self.bev(batch))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.predict(batch)
        ind, mask = batch["ind"].long(), batch["mask"].bool()
        focal = gaussian_focal_loss(out.heatmap, batch["heatmap"], ind, batch["cat"].long(), mask)
        l1 = (center_l1_loss(out.regression, ind, batch["reg"], batch["reg_weight"]) * self.code_weights).sum()
        loss = self.heatmap_weight * focal + self.l1_weight * l1
        return {"loss": loss, "heatmap": focal.detach(), "l1": l1.detach()}


def detect(model: DetectionModel, stream, batch_size: int, on_sample=None) -> dict[str, list[dict]]:
    """{sample token: devkit box dicts} of every keyframe of ``stream`` (global frame, at most 500 each).
    ``on_sample(boxes, labels, scores, gt_boxes)``: also called per keyframe with the decoded LiDAR-frame numpy
    arrays and its ground truth (the spoofing tally), or None."""
    from train.data.boxes import to_global
    from train.eval.detection import box_dicts

    results = {}
    eye = np.eye(4)
    for batch in eval_batches(model, stream, batch_size):
        out = model.predict(batch)
        dets = decode_boxes(torch.sigmoid(out.heatmap.float()), out.regression.float(), model.head_cfg)
        for i, (token, d) in enumerate(zip(batch["tokens"], dets)):
            if on_sample is not None:
                on_sample(d.boxes.double().cpu().numpy(), d.labels.cpu().numpy(), d.scores.cpu().numpy(),
                          np.asarray(batch["gt_boxes"][i]))
            _, l2g = stream.poses[token]
            g = to_global(d.boxes.double().cpu().numpy(), d.scores.cpu().numpy(), d.labels.cpu().numpy(), l2g, eye)
            results[token] = box_dicts(token, g)
    return results


#: The devkit's true-positive error keys -> the leaderboard's names.
TP_NAMES = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}


def detection_scores(summary: dict) -> dict[str, float]:
    """The numbers logged from a devkit metrics summary: mAP, NDS, the mean TP errors, each class's AP at 2 m."""
    out = {"mAP": float(summary["mean_ap"]), "NDS": float(summary["nd_score"])}
    out |= {TP_NAMES.get(k, k): float(v) for k, v in summary["tp_errors"].items()}
    for name, aps in summary["label_aps"].items():
        ap = aps.get(2.0, aps.get("2.0"))
        if ap is not None:
            out[f"{name}_AP_2.0"] = float(ap)
    return out


class DetectTask(FinetuneTask):
    """Detection fine-tuning as a task of :func:`train.loop.train` (module docstring)."""

    task = "det"
    title = "detection fine-tuning"
    best_metric = ("NDS", "max")

    model_class = DetectionModel
    #: Draw the devkit's plots into the evaluation folder (``calico eval det``; not during training).
    render_curves = False

    def evaluate(self, model: DetectionModel, out_dir: str | Path | None = None) -> dict:
        """The devkit scores of ``model`` on the validation split (module docstring); ``out_dir``: where the
        submission and the devkit's metrics go (None: a temporary folder)."""
        from train.eval.detection import evaluate_detection, make_submission, submission_meta

        nusc = self.nusc()
        stream = self.eval_stream()
        ft = self.cfg.finetune
        tally = None
        if self.corruption is not None and self.corruption.spoof_range is not None:
            from train.eval.robustness.apply import SpoofTally

            tally = SpoofTally(self.corruption)
        results = detect(model, stream, self.cfg.data.batch_size, on_sample=tally.add if tally else None)
        sub = make_submission(results, stream.sample_tokens,
                              submission_meta(use_lidar=ft.uses_lidar, use_camera=ft.uses_camera))
        with tempfile.TemporaryDirectory() as tmp:
            summary = evaluate_detection(nusc, sub, self.eval_split(nusc), out_dir or tmp,
                                         render_curves=self.render_curves and out_dir is not None)
        self.last_summary, self.last_submission = summary, sub
        return detection_scores(summary) | (tally.scores() if tally else {})


def detection_table(summary: dict) -> str:
    """The per-class table of a devkit metrics summary (AP at each distance threshold, their mean, the TP
    errors), as Markdown, then mAP and NDS."""
    dists = sorted({float(d) for aps in summary["label_aps"].values() for d in aps})
    errs = list(TP_NAMES)
    head = ["class"] + [f"AP@{d:g}" for d in dists] + ["AP"] + [TP_NAMES[e][1:] for e in errs]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, aps in summary["label_aps"].items():
        by = {float(d): v for d, v in aps.items()}
        tp = summary["label_tp_errors"][name]
        rows.append("| " + " | ".join([name] + [f"{by[d]:.3f}" for d in dists] + [f"{summary['mean_dist_aps'][name]:.3f}"]
                                      + [f"{tp[e]:.3f}" for e in errs]) + " |")
    return "\n".join(rows) + f"\n\nmAP {summary['mean_ap']:.4f}  NDS {summary['nd_score']:.4f}\n"
