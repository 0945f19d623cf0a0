"""``calico eval det | seg``: score a fine-tuning checkpoint on a devkit split (:mod:`train.eval.finetune`).

``det``: the devkit's ``DetectionEval`` (``detection_cvpr_2019``) on the split's every sample; ``seg``: BEVFusion's
IoU (best over thresholds 0.35-0.65 per class, then the mean). Results go to ``RUN/eval/<task>-<split>-step<N>/``
(or ``--out``); the per-class table and a JSON line of the scores are printed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from calico.commands import checks

app = typer.Typer(help="Score fine-tuning checkpoints with the nuScenes devkit.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Score fine-tuning checkpoints (a group, so that `det` and `seg` stay subcommands)."""


_CKPT = typer.Option(..., "--checkpoint", callback=checks.file_or_folder,
                     help="A fine-tuning checkpoint file, or a run folder (its latest checkpoint).")
_SPLIT = typer.Option(None, "--split", help="devkit split (default: the run's eval_split, else val / mini_val).")
_STORE = typer.Option(None, "--store", callback=checks.folder, help="The store, if it moved since training.")
_ROOT = typer.Option(None, "--dataroot", callback=checks.folder,
                     help="The nuScenes dataroot (default: the one the store version names).")
_OUT = typer.Option(None, "--out", callback=checks.out_folder,
                    help="Output folder (default: RUN/eval/<task>-<split>-step<N>).")


def _run(task: str, checkpoint: Path, split, store, dataroot, out) -> None:
    from train.eval.finetune import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, task, split=split, store=store, dataroot=dataroot, out_dir=out)
    typer.echo(result.pop("table"))
    typer.echo(json.dumps(result))


@app.command("det")
def det(checkpoint: Path = _CKPT, split: Optional[str] = _SPLIT, store: Optional[Path] = _STORE,
        dataroot: Optional[Path] = _ROOT, out: Optional[Path] = _OUT) -> None:
    """3-D detection: submission.json (the devkit's result format), the devkit's metrics_summary.json, scores.json
    and the per-class table.md."""
    _run("det", checkpoint, split, store, dataroot, out)


@app.command("seg")
def seg(checkpoint: Path = _CKPT, split: Optional[str] = _SPLIT, store: Optional[Path] = _STORE,
        dataroot: Optional[Path] = _ROOT, out: Optional[Path] = _OUT) -> None:
    """BEV map segmentation: seg_metrics.json (IoU per class and threshold), scores.json and table.md."""
    _run("seg", checkpoint, split, store, dataroot, out)
