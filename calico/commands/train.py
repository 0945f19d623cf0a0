"""``calico train pretrain-prc``: PRC pre-training of the PointPillars backbone on a store version.

Registered in ``calico/cli.py`` as ``calico train``; through ``torchrun``:
``torchrun --standalone --nproc-per-node 2 -m calico train pretrain-prc --store S ...``.
Heavy imports happen inside the command.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Pre-train and fine-tune on a region-cache store.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Pre-train and fine-tune on a region-cache store (a group, so that `pretrain-prc` stays a subcommand)."""


@app.command("pretrain-prc")
def pretrain_prc(
    store: Path = typer.Option(..., "--store", help="Store folder written by `calico preprocess run`."),
    version: Optional[str] = typer.Option(None, "--version", help="Store version id or unique prefix "
                                                                  "(default: the latest)."),
    out: Path = typer.Option(Path("runs/prc"), "--out", help="Run folder: checkpoints, metrics.jsonl, loss.png."),
    preset: str = typer.Option("small", "--preset", help="small (CPU, tiny grid) or nuscenes (+-51.2 m, 0.2 m)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (optim.max_steps)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Scans per step and process."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", help="Config override key=value (repeatable), e.g. --set optim.lr=3e-4."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the latest checkpoint in --out."),
) -> None:
    """Train PRC (point-region contrast) for --steps steps; resumes from --out's latest checkpoint.
    Several processes: `torchrun --nproc-per-node 2 -m calico train pretrain-prc ...`."""
    from shared.errors import ConfigError
    from train.config import PRESETS, with_overrides
    from train.loop import pretrain_prc as run

    if preset not in PRESETS:
        raise ConfigError("--preset", preset, f"must be one of {', '.join(PRESETS)}")
    sets = [f"data.store={str(store)!r}", f"data.version={version!r}"]
    if steps is not None:
        sets.append(f"optim.max_steps={steps}")
    if batch_size is not None:
        sets.append(f"data.batch_size={batch_size}")
    cfg = with_overrides(PRESETS[preset](), sets + list(overrides or []))
    summary = run(cfg, out, resume=resume)
    if summary["rank"] == 0:
        typer.echo(json.dumps(summary))


@app.command("probe")
def probe(
    store: Path = typer.Option(..., "--store", help="Store folder to probe on (scenes split train / held-out)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A PRC checkpoint file, or a run folder (its latest)."),
    version: Optional[str] = typer.Option(None, "--version", help="Store version id or unique prefix "
                                                                  "(default: the latest)."),
    dataroot: Optional[Path] = typer.Option(None, "--dataroot", help="nuScenes dataroot for the annotations "
                                                                     "(default: the one the store version records)."),
    points: int = typer.Option(512, "--points", help="Points sampled per sweep."),
    head: bool = typer.Option(False, "--head/--no-head", help="Features through the projection head."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
) -> None:
    """Linear probe (object classes) and nearest-neighbour (regions) accuracy on held-out scenes of a
    pre-trained backbone against the same backbone randomly initialised."""
    from train.eval.probe import ProbeConfig, compare, format_table

    result = compare(checkpoint, store, version=version, dataroot=dataroot,
                     cfg=ProbeConfig(points_per_sweep=points, seed=seed, use_head=head))
    typer.echo(json.dumps(result) if as_json else format_table(result))
