"""Scoring a fine-tuning checkpoint on a devkit split (``calico eval det|seg``).

:func:`evaluate_checkpoint` rebuilds the model from the checkpoint's configuration (its ``model.finetune.modality``:
the LiDAR backbone, the camera branch or both and the fuser; the images then come from the same dataroot as the
annotations, ``--dataroot`` if moved), loads its weights and runs the
task's evaluation (:meth:`train.tasks.detect.DetectTask.evaluate`: the devkit's ``DetectionEval``;
:meth:`train.tasks.segment.SegmentTask.evaluate`: BEVFusion's IoU) on the split, writing into
``RUN/eval/<task>-<split>-step<N>[-<corruption tag>]/``: det ``submission.json`` (the devkit's result format),
``metrics_summary.json`` (the devkit's), ``plots/`` (the devkit's curves, ``render_curves``), ``scores.json`` (the logged numbers), ``table.md`` (per class); seg ``seg_metrics.json`` (every
class at every threshold), ``scores.json``, ``table.md``. Each file is written atomically.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from shared.errors import InputError
from train.checkpoint import atomic_write_text, load_checkpoint, resolve_checkpoint
from train.config import FINETUNE_TASKS, TrainConfig


def run_folder(checkpoint: Path) -> Path:
    """The run folder of a checkpoint file (``RUN/checkpoints/step-*.pt`` -> ``RUN``)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def evaluate_checkpoint(checkpoint: str | Path, task: str, split: str | None = None, store: str | Path | None = None,
                        dataroot: str | Path | None = None, out_dir: str | Path | None = None, corruption=None,
                        render_curves: bool = True) -> dict:
    """Score the checkpoint (file or run folder) of a ``task`` (``det`` / ``seg``) run on ``split`` (None: the
    run's ``eval_split``, else the dataroot's validation split); ``store`` / ``dataroot``: where they are now,
    if moved; ``corruption``: a :class:`train.eval.robustness.apply.EvalCorruption` applied to every keyframe (its
    tag joins the folder name; det with spoofing adds ``spoof_fp_rate``); ``render_curves``: the devkit's plots
    (det). Returns {"task", "checkpoint", "step", "split", "out", "corruption", "scores"}; see the module
    docstring."""
    from train.loop import finetune_task

    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    config = dict(state.get("config") or {})
    if config.get("task") not in FINETUNE_TASKS:
        raise InputError(f"not a fine-tuning checkpoint (task {config.get('task')!r}; expected det or seg)", path)
    if config["task"] != task:
        raise InputError(f"this is a {config['task']} checkpoint; use `calico eval {config['task']}`", path)
    d = TrainConfig.from_dict(config).to_dict()
    ft = d["model"].setdefault("finetune", {})
    if store is not None:
        d["data"]["store"] = str(store)
    if dataroot is not None:
        ft["dataroot"] = str(dataroot)
    if split is not None:
        ft["eval_split"] = split
    cfg = TrainConfig.from_dict(d)
    job = finetune_task(cfg)
    job.set_corruption(corruption)
    job.render_curves = bool(render_curves)
    model = job.model_class(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    stream = job.eval_stream()
    stream.check_version(state["store_version"])
    split = job.eval_split(job.nusc())
    step = int(state.get("step", 0))
    tag = f"-{corruption.tag}" if corruption is not None else ""
    out = Path(out_dir) if out_dir is not None else run_folder(path) / "eval" / f"{task}-{split}-step{step:08d}{tag}"
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if task == "det":
            from train.tasks.detect import detection_table

            scores = job.evaluate(model, out_dir=out)
            table = detection_table(job.last_summary)
        else:
            from train.tasks.segment import segmentation_table

            scores = job.evaluate(model)
            atomic_write_text(out / "seg_metrics.json", json.dumps(job.last_report, indent=1))
            table = segmentation_table(job.last_report)
    atomic_write_text(out / "scores.json", json.dumps(scores, indent=1))
    atomic_write_text(out / "table.md", table)
    return {"task": task, "checkpoint": str(path), "step": step, "split": split, "out": str(out),
            "corruption": dataclasses.asdict(corruption) if corruption is not None else None, "scores": scores,
            "table": table}
