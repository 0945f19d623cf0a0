"""``calico eval det | seg``: score a fine-tuning checkpoint on a devkit split (:mod:`train.eval.finetune`).

``det``: the devkit's ``DetectionEval`` (``detection_cvpr_2019``) on the split's every sample; ``seg``: BEVFusion's
IoU (best over thresholds 0.35-0.65 per class, then the mean). Results go to ``RUN/eval/<task>-<split>-step<N>/``
(or ``--out``); the per-class table and a JSON line of the scores are printed. ``--corrupt NAME --severity S``
and ``--spoof-range M`` (det) evaluate under a corruption or the spoofing attack (docs/robustness.md).
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


_CORRUPT = typer.Option(None, "--corrupt", help="Evaluate under a corruption: beam_missing, point_dropping, fog, "
                        "snow, crosstalk, motion_distortion (LiDAR); brightness, low_light, gaussian_noise, "
                        "motion_blur, occlusion (cameras). See docs/robustness.md.")
_SEVERITY = typer.Option(1, "--severity", help="Severity 1..5 of --corrupt.")
_CSEED = typer.Option(0, "--corrupt-seed", help="Seed of the corruption and spoofing draws (with each sample token).")
_SPOOF = typer.Option(None, "--spoof-range", help="Spoof a car this many metres straight ahead in every keyframe "
                      "(det: reports spoof_fp_rate, the share of keyframes with a detection there).")
_PLOTS = typer.Option(True, "--plots/--no-plots", help="det: draw the devkit's curves into OUT/plots/.")


def _run(task: str, checkpoint: Path, split, store, dataroot, out, corrupt=None, severity=1, corrupt_seed=0,
         spoof_range=None, plots=True) -> None:
    from train.eval.finetune import evaluate_checkpoint

    corruption = None
    if corrupt is not None or spoof_range is not None:
        from train.eval.robustness.apply import EvalCorruption

        corruption = EvalCorruption(name=corrupt, severity=severity, seed=corrupt_seed, spoof_range=spoof_range)
    result = evaluate_checkpoint(checkpoint, task, split=split, store=store, dataroot=dataroot, out_dir=out,
                                 corruption=corruption, render_curves=plots)
    typer.echo(result.pop("table"))
    typer.echo(json.dumps(result))


@app.command("det")
def det(checkpoint: Path = _CKPT, split: Optional[str] = _SPLIT, store: Optional[Path] = _STORE,
        dataroot: Optional[Path] = _ROOT, out: Optional[Path] = _OUT, corrupt: Optional[str] = _CORRUPT,
        severity: int = _SEVERITY, corrupt_seed: int = _CSEED, spoof_range: Optional[float] = _SPOOF,
        plots: bool = _PLOTS) -> None:
    """3-D detection: submission.json (the devkit's result format), the devkit's metrics_summary.json and plots/,
    scores.json and the per-class table.md; under --corrupt / --spoof-range, into a folder tagged with them."""
    _run("det", checkpoint, split, store, dataroot, out, corrupt, severity, corrupt_seed, spoof_range, plots)


@app.command("seg")
def seg(checkpoint: Path = _CKPT, split: Optional[str] = _SPLIT, store: Optional[Path] = _STORE,
        dataroot: Optional[Path] = _ROOT, out: Optional[Path] = _OUT, corrupt: Optional[str] = _CORRUPT,
        severity: int = _SEVERITY, corrupt_seed: int = _CSEED) -> None:
    """BEV map segmentation: seg_metrics.json (IoU per class and threshold), scores.json and table.md; under
    --corrupt, into a folder tagged with it."""
    _run("seg", checkpoint, split, store, dataroot, out, corrupt, severity, corrupt_seed)
