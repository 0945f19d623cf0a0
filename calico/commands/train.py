"""``calico train pretrain-prc | pretrain-rad | finetune | probe``: PRC pre-training of the PointPillars backbone,
RAD distillation into the camera branch, fine-tuning for 3-D detection or BEV map segmentation with a fraction of
the labels, and the probe of pre-trained features, on a store version.

Registered in ``calico/cli.py`` as ``calico train``; through ``torchrun``:
``torchrun --standalone --nproc-per-node 2 -m calico train pretrain-prc --store S ...`` (or ``pretrain-rad``).
Heavy imports happen inside the command. Ctrl-C / SIGTERM during training: a checkpoint of the last step is
written, the command says how to resume and exits 130 / 143 (:mod:`train.interrupt`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from calico.commands import checks

app = typer.Typer(help="Pre-train and fine-tune on a region-cache store.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Pre-train and fine-tune on a region-cache store (a group, so that `pretrain-prc` stays a subcommand)."""


def train_config(preset: str, task: str, store: Path, version: str | None, steps: int | None = None,
                 batch_size: int | None = None, overrides: list[str] | None = None, teacher: Path | None = None,
                 verify_shards: bool = True, modality: str | None = None):
    """The preset of ``task`` with the command's options and ``--set`` overrides applied (in that order); for RAD
    the LiDAR backbone (and PRC head) configuration comes from the teacher checkpoint. ``modality``: fine-tuning's
    BEV input (the preset adds the camera branch for camera / fusion)."""
    from shared.errors import ConfigError
    from train.checkpoint import load_checkpoint, resolve_checkpoint
    from train.config import PRESETS, with_overrides, with_teacher

    if preset not in PRESETS:
        raise ConfigError("--preset", preset, f"must be one of {', '.join(PRESETS)}")
    base = PRESETS[preset](task=task, **({} if modality is None else {"modality": modality}))
    if teacher is not None:
        path = resolve_checkpoint(teacher)
        base = with_teacher(base, path.resolve(), load_checkpoint(path)["config"])
    sets = [f"data.store={str(store)!r}", f"data.version={version!r}"]
    if steps is not None:
        sets.append(f"optim.max_steps={steps}")
    if batch_size is not None:
        sets.append(f"data.batch_size={batch_size}")
    if not verify_shards:
        sets.append("data.verify_shards=False")
    return with_overrides(base, sets + list(overrides or []))


def run_training(run, cfg, out: Path, resume: bool, allow_config_change: bool) -> None:
    """``run(cfg, out, ...)`` (``train.loop.pretrain_prc`` / ``pretrain_rad``); rank 0 prints the JSON summary. On
    SIGINT / SIGTERM: the loop's message (checkpoint written, how to resume) and exit status 128 + signal."""
    from train.interrupt import TrainingInterrupted

    try:
        summary = run(cfg, out, resume=resume, allow_config_change=allow_config_change)
    except TrainingInterrupted as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_status) from None
    if summary["rank"] == 0:
        typer.echo(json.dumps(summary))


_STORE = typer.Option(..., "--store", callback=checks.folder,
                      help="Store folder written by `calico preprocess run`.")
_VERSION = typer.Option(None, "--version", help="Store version id or unique prefix (default: the latest).")
_PRESET = typer.Option("small", "--preset", help="small (CPU, +-25.6 m, small camera model), small-wide (CPU, "
                                                 "+-51.2 m at 0.8 m pillars, for detection) or nuscenes "
                                                 "(+-51.2 m, 0.2 m pillars; Swin-T 256x704).")
_STEPS = typer.Option(None, "--steps", help="Optimizer steps (optim.max_steps).")
_BATCH = typer.Option(None, "--batch-size", help="Scans per step and process.")
_SETS = typer.Option(None, "--set", help="Config override key=value (repeatable), e.g. --set optim.lr=3e-4.")
_RESUME = typer.Option(True, "--resume/--no-resume", help="Continue from the latest checkpoint in --out.")
_ALLOW = typer.Option(False, "--allow-config-change",
                      help="Resume even when the configuration differs from the checkpoint's in fields that change "
                           "the result (logged in OUT/config_changes.jsonl); without it such a resume is refused.")
_VERIFY = typer.Option(True, "--verify-shards/--no-verify-shards",
                       help="Check every shard against the SHA-256 of its manifest when first read (sizes are "
                            "always checked); data.verify_shards.")


@app.command("pretrain-prc")
def pretrain_prc(
    store: Path = _STORE,
    version: Optional[str] = _VERSION,
    out: Path = typer.Option(Path("runs/prc"), "--out", callback=checks.out_folder,
                             help="Run folder: checkpoints, metrics.jsonl, loss.png."),
    preset: str = _PRESET,
    steps: Optional[int] = _STEPS,
    batch_size: Optional[int] = _BATCH,
    overrides: Optional[List[str]] = _SETS,
    resume: bool = _RESUME,
    allow_config_change: bool = _ALLOW,
    verify_shards: bool = _VERIFY,
) -> None:
    """Train PRC (point-region contrast) for --steps steps; resumes from --out's latest checkpoint. Ctrl-C or
    SIGTERM writes a checkpoint of the last step and exits 130 / 143; rerunning the same command resumes.
    Several processes: `torchrun --nproc-per-node 2 -m calico train pretrain-prc ...`."""
    from train.loop import pretrain_prc as run

    cfg = train_config(preset, "prc", store, version, steps, batch_size, overrides, verify_shards=verify_shards)
    run_training(run, cfg, out, resume, allow_config_change)


@app.command("pretrain-rad")
def pretrain_rad(
    store: Path = _STORE,
    teacher: Path = typer.Option(..., "--teacher", callback=checks.file_or_folder,
                                 help="The PRC run folder (its latest checkpoint) or checkpoint "
                                                        "file to distil from; frozen."),
    version: Optional[str] = _VERSION,
    out: Path = typer.Option(Path("runs/rad"), "--out", callback=checks.out_folder,
                             help="Run folder: checkpoints, metrics.jsonl, loss.png."),
    preset: str = _PRESET,
    steps: Optional[int] = _STEPS,
    batch_size: Optional[int] = _BATCH,
    overrides: Optional[List[str]] = _SETS,
    resume: bool = _RESUME,
    allow_config_change: bool = _ALLOW,
    verify_shards: bool = _VERIFY,
) -> None:
    """Train RAD (region-aware distillation of the frozen PRC LiDAR backbone into the camera branch) for --steps
    steps; the images are read from the dataroot the store version names (--set images.dataroot=... to move it).
    --set model.rad.weighting=uniform gives the plain point-wise distillation baseline. Resumes from --out.
    Several processes: `torchrun --nproc-per-node 2 -m calico train pretrain-rad ...`."""
    from train.loop import pretrain_rad as run

    cfg = train_config(preset, "rad", store, version, steps, batch_size, overrides, teacher=teacher,
                       verify_shards=verify_shards)
    run_training(run, cfg, out, resume, allow_config_change)


@app.command("finetune")
def finetune(
    task: str = typer.Option(..., "--task", help="det (3-D detection, CenterPoint head) or seg (BEV map "
                                                 "segmentation)."),
    store: Path = _STORE,
    init: str = typer.Option("none", "--init", help="none (random backbone), or a PRC / RAD / fine-tuning run "
                                                    "folder or checkpoint file with the same backbone config; a "
                                                    "RAD run also gives the camera branch (same camera and LSS "
                                                    "config), a PRC run the LiDAR backbone only."),
    fraction: float = typer.Option(1.0, "--fraction", help="Share of the training labels in (0, 1]: 0.05, 0.1, "
                                                           "0.2, 0.5, 1.0 (a deterministic stride)."),
    fraction_by: str = typer.Option("scenes", "--fraction-by", help="Stride over the training scenes or keyframes "
                                                                    "(samples, for small generated sets)."),
    lidar_sweeps: Optional[int] = typer.Option(None, "--lidar-sweeps",
                                               help="LiDAR sweeps per keyframe (default 10; 1 for a store built "
                                                    "with --sweeps keyframes)."),
    modality: str = typer.Option("lidar", "--modality",
                                 help="The head's BEV input: lidar (PointPillars), camera (the six images lifted "
                                      "by LSS onto the same grid) or fusion (both, concatenated + a conv fuser). "
                                      "camera / fusion take the camera branch from a RAD --init (its student)."),
    seed: int = typer.Option(0, "--seed", help="Data order seed (data.seed) and initial weights."),
    version: Optional[str] = _VERSION,
    out: Optional[Path] = typer.Option(None, "--out", callback=checks.out_folder,
                                       help="Run folder (default runs/<task>): checkpoints, metrics.jsonl, "
                                            "eval.jsonl, loss.png."),
    preset: str = _PRESET,
    steps: Optional[int] = _STEPS,
    batch_size: Optional[int] = _BATCH,
    overrides: Optional[List[str]] = _SETS,
    resume: bool = _RESUME,
    allow_config_change: bool = _ALLOW,
    verify_shards: bool = _VERIFY,
) -> None:
    """Fine-tune for --task det|seg on --fraction of the training labels, from --modality lidar, camera or fusion
    BEV features (the images are read from the store version's dataroot), evaluating on the validation split every
    eval_every steps and at the end (the devkit's DetectionEval / BEVFusion's IoU, in OUT/eval.jsonl; the best
    checkpoint by NDS / mIoU is kept). The selected keyframes are recorded in every checkpoint. Resumes from --out.
    Score a checkpoint afterwards with `calico eval det|seg --checkpoint OUT`."""
    from shared.errors import ConfigError
    from train.checkpoint import resolve_checkpoint
    from train.config import FINETUNE_TASKS
    from train.loop import finetune as run

    if task not in FINETUNE_TASKS:
        raise ConfigError("--task", task, f"must be one of {', '.join(FINETUNE_TASKS)}")
    init_path = "none" if init.lower() == "none" else str(resolve_checkpoint(init).resolve())
    sets = [f"data.seed={seed}", f"model.finetune.fraction={fraction!r}", f"model.finetune.fraction_by={fraction_by!r}",
            f"model.finetune.init={init_path!r}"]
    if lidar_sweeps is not None:
        sets.append(f"model.finetune.lidar_sweeps={lidar_sweeps}")
    cfg = train_config(preset, task, store, version, steps, batch_size, sets + list(overrides or []),
                       verify_shards=verify_shards, modality=modality)
    run_training(run, cfg, out if out is not None else Path("runs") / task, resume, allow_config_change)


@app.command("probe")
def probe(
    store: Path = typer.Option(..., "--store", callback=checks.folder,
                               help="Store folder to probe on (scenes split train / held-out)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", callback=checks.file_or_folder,
                                    help="A PRC checkpoint file, or a run folder (its latest)."),
    version: Optional[str] = typer.Option(None, "--version", help="Store version id or unique prefix "
                                                                  "(default: the latest)."),
    dataroot: Optional[Path] = typer.Option(None, "--dataroot", callback=checks.folder,
                                            help="nuScenes dataroot for the annotations "
                                                 "(default: the one the store version records)."),
    points: int = typer.Option(512, "--points", help="Points sampled per sweep."),
    head: bool = typer.Option(False, "--head/--no-head", help="Features through the projection head."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
    verify_shards: bool = _VERIFY,
) -> None:
    """Linear probe (object classes) and nearest-neighbour (regions) accuracy on held-out scenes of a
    pre-trained backbone against the same backbone randomly initialised."""
    from train.eval.probe import ProbeConfig, compare, format_table

    result = compare(checkpoint, store, version=version, dataroot=dataroot,
                     cfg=ProbeConfig(points_per_sweep=points, seed=seed, use_head=head, verify_shards=verify_shards))
    typer.echo(json.dumps(result) if as_json else format_table(result))
