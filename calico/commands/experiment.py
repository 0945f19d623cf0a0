"""``calico experiment label-efficiency | report | robustness``: the CALICO experiment, resumable, from one command.

``label-efficiency`` builds (or reuses) the store, runs the pre-training stages once per seed (PRC; RAD with
region weighting = CALICO; RAD with uniform weighting = plain distillation), then one fine-tuning run per (init,
fraction, seed, task, modality) and the alpha ablation, each in its own folder under ``--out``
(:mod:`calico.experiment`), and writes the tables, plots and listing (``report``). Rerunning the same command
continues where it stopped: finished units are skipped, started ones resume from their checkpoints, changed ones
are refused. Ctrl-C / SIGTERM during a training run: a checkpoint of its last step is written and the command exits
130 / 143. Registered in ``calico/cli.py`` as ``calico experiment``; see docs/experiments.md.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from calico.commands import checks

app = typer.Typer(help="The CALICO experiment: the label-efficiency table, the alpha ablation and the robustness "
                       "table, resumable.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """The CALICO experiment (a group, so that `label-efficiency` stays a subcommand)."""


def _items(text: str, option: str) -> list[str]:
    from shared.errors import ConfigError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(option, text, "must be a comma-separated list of at least one value")
    return items


def _numbers(text: str, option: str, kind=float) -> tuple:
    from shared.errors import ConfigError

    out = []
    for t in _items(text, option):
        try:
            out.append(kind(t))
        except ValueError:
            raise ConfigError(option, t, f"is not {'an integer' if kind is int else 'a number'}") from None
    return tuple(out)


@app.command("label-efficiency")
def label_efficiency(
    out: Path = typer.Option(..., "--out", callback=checks.out_folder,
                             help="Experiment folder: store/, pretrain/, cells/, report/ (rerun to resume)."),
    dataroot: Optional[Path] = typer.Option(None, "--dataroot", callback=checks.folder,
                                            help="nuScenes dataroot to preprocess into OUT/store (e.g. from "
                                                 "`calico synth`)."),
    version: Optional[str] = typer.Option(None, "--version", help="nuScenes version of --dataroot "
                                                                  "(v1.0-mini, v1.0-trainval)."),
    store: Optional[Path] = typer.Option(None, "--store", callback=checks.folder,
                                         help="Use this existing store instead of preprocessing --dataroot."),
    store_version: Optional[str] = typer.Option(None, "--store-version",
                                                help="Version id (or unique prefix) of --store (default: latest)."),
    sweeps: str = typer.Option("keyframes", "--sweeps", help="What OUT/store holds: keyframes (cells then use one "
                                                             "LiDAR sweep) or all."),
    fractions: str = typer.Option("0.05,0.1,0.2,0.5,1.0", "--fractions", help="Label fractions, comma-separated."),
    fraction_by: str = typer.Option("scenes", "--fraction-by", help="Stride over the training scenes or keyframes "
                                                                    "(samples: for small generated sets)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds (data order and initial weights of every stage)."),
    inits: str = typer.Option("scratch,prc,prc+uniform,calico", "--inits",
                              help="scratch (random), prc (PRC backbone), prc+uniform (RAD with uniform weighting), "
                                   "calico (RAD with region weighting)."),
    task: str = typer.Option("det,seg", "--task", help="det (3-D detection), seg (BEV map segmentation), or both."),
    preset: str = typer.Option("small", "--preset", help="small, small-wide (CPU) or nuscenes (the paper's "
                                                         "setting, for GPUs)."),
    modality: str = typer.Option("auto", "--modality",
                                 help="Fine-tuning inputs: auto (lidar; plus fusion when the grid holds a RAD init, "
                                      "which is fine-tuned in fusion only), or a list of lidar, camera, fusion."),
    pretrain_steps: Optional[int] = typer.Option(None, "--pretrain-steps", help="PRC steps (default: the preset's)."),
    rad_steps: Optional[int] = typer.Option(None, "--rad-steps", help="RAD steps (default: the preset's)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Fine-tuning steps (default: the preset's)."),
    alphas: str = typer.Option("", "--alphas", help="Alpha ablation: PRC at each alpha (per seed), fine-tuned with "
                                                    "the prc init at --alpha-fractions, e.g. 0.1,0.5,0.9."),
    alpha_fractions: str = typer.Option("0.05,0.5", "--alpha-fractions",
                                        help="Label fractions of the alpha ablation's cells."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override key=value for every stage, or "
                                                                      "STAGE:key=value with STAGE prc, rad, det, seg "
                                                                      "or ft (det and seg); repeatable."),
    workers: int = typer.Option(0, "--workers", help="0: the units one after another in this process; N: as Dask "
                                                     "tasks on a local cluster of N workers (one unit each)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run the units (and the preprocessing) on this "
                                                                      "Dask scheduler, tcp://HOST:8786."),
    preprocess_workers: int = typer.Option(2, "--preprocess-workers", help="Dask workers of the preprocessing "
                                                                           "(without --scheduler; 0: in this "
                                                                           "process)."),
    connect_timeout: float = typer.Option(10.0, "--connect-timeout", help="Seconds to wait for --scheduler."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change",
                                             help="Continue units recorded with another configuration (recorded in "
                                                  "their cell.json) instead of refusing."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the units of the grid and exit."),
    select: str = typer.Option("last", "--select", help="Scores in the table: last (the final checkpoint's) or best "
                                                        "(selected on the validation split)."),
) -> None:
    """Run the label-efficiency grid (and the alpha ablation) into --out, then write its tables and plots
    (OUT/report). Rerun the same command to resume: finished units are skipped, started ones resume from their
    checkpoints, a unit whose configuration changed is refused."""
    from calico.experiment.plan import ExperimentSpec, make_plan
    from calico.experiment.report import SELECT
    from calico.experiment.run import elapsed, run_experiment
    from calico.commands.output import to_stderr
    from shared.errors import ConfigError
    from train.interrupt import TrainingInterrupted

    if select not in SELECT:
        raise ConfigError("--select", select, f"must be one of {', '.join(SELECT)}")
    if sweeps not in ("keyframes", "all"):
        raise ConfigError("--sweeps", sweeps, "must be keyframes or all")
    if workers < 0 or preprocess_workers < 0:
        raise ConfigError("--workers", min(workers, preprocess_workers), "must be >= 0")
    spec = ExperimentSpec(
        fractions=_numbers(fractions, "--fractions"), fraction_by=fraction_by, seeds=_numbers(seeds, "--seeds", int),
        inits=tuple(_items(inits, "--inits")), tasks=tuple(_items(task, "--task")), preset=preset,
        modality=tuple(_items(modality, "--modality")), pretrain_steps=pretrain_steps, rad_steps=rad_steps,
        steps=steps, alphas=_numbers(alphas, "--alphas") if alphas.strip() else (),
        alpha_fractions=_numbers(alpha_fractions, "--alpha-fractions"), overrides=tuple(overrides or ()))
    log = typer.echo
    # every unit's configuration, checked before anything is built (the store version is not known yet)
    draft = make_plan(spec, out, store if store is not None else out / "store", "0" * 16, sweeps)
    if dry_run:
        for note in draft.notes:
            log(f"note: {note}")
        for u in draft.units:
            log(f"{u.folder}  ({u.steps} steps{'; from ' + ', '.join(u.deps) if u.deps else ''})")
        log(f"{len(draft.units)} unit(s): {len(draft.stages)} pre-training stage(s), {len(draft.cells)} cell(s)")
        return
    if store is None and (dataroot is None or version is None):
        raise ConfigError("--dataroot", dataroot, "give --dataroot and --version to preprocess a store, or --store")
    try:
        done = run_experiment(spec, out, dataroot=dataroot, dataset_version=version, store=store,
                              store_version=store_version, sweeps=sweeps, allow_config_change=allow_config_change,
                              workers=workers, scheduler=scheduler, preprocess_workers=preprocess_workers,
                              connect_timeout=connect_timeout, select=select, log=log, argv=sys.argv)
    except TrainingInterrupted as exc:
        to_stderr(str(exc))
        raise typer.Exit(exc.exit_status) from None
    result, rep = done["result"], done["report"]
    log(f"experiment: {len(result['finished'])} unit(s) run, {len(result['skipped'])} skipped (done earlier), "
        f"{len(result['failed'])} failed, {len(result['not_run'])} not run, {elapsed(result['wall_s'])}")
    log(f"report: {rep['out'] / 'table.md'} (also table.csv, table.json, listing.md, plots)"
        + (f"; {len(rep['missing'])} unit(s) missing" if rep["missing"] else ""))
    if result["failed"] or result["not_run"]:
        for uid, msg in result["failed"].items():
            to_stderr(f"failed: {uid}: {msg}")
        raise typer.Exit(1)


@app.command("report")
def report(
    experiment: Path = typer.Argument(..., callback=checks.folder, help="The experiment folder (--out of the run)."),
    out: Optional[Path] = typer.Option(None, "--out", callback=checks.out_folder,
                                       help="Where the report goes (default: EXPERIMENT/report)."),
    select: str = typer.Option("last", "--select", help="last (the final checkpoint's scores) or best (selected on "
                                                        "the validation split)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of the Markdown table."),
) -> None:
    """Rebuild the tables (Markdown, CSV, JSON), the plots and the listing from the run folders alone."""
    from calico.experiment.report import write_report

    rep = write_report(experiment, out, select=select)
    if as_json:
        typer.echo((rep["out"] / "table.json").read_text())
    else:
        typer.echo((rep["out"] / "table.md").read_text())
        typer.echo(f"written: {', '.join(p.name for p in rep['files'])} in {rep['out']}")


@app.command("run-cell", hidden=True)
def run_cell(
    unit_dir: Path = typer.Argument(..., callback=checks.folder, help="A unit folder (holding cell.json)."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change"),
) -> None:
    """Run one unit of an experiment from its cell.json (what a Dask task runs); prints {"how", "done"} as JSON."""
    from calico.experiment.run import run_unit
    from train.interrupt import TrainingInterrupted

    try:
        how, done = run_unit(unit_dir, allow_config_change)
    except TrainingInterrupted as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_status) from None
    typer.echo(json.dumps({"how": how, "done": done}))


@app.command("robustness")
def robustness(
    experiment: Path = typer.Argument(..., callback=checks.folder, help="The experiment folder (--out of "
                                                                        "label-efficiency)."),
    inits: str = typer.Option("scratch,calico", "--inits", help="Inits whose cells are scored (scratch, prc, "
                                                                "prc+uniform, calico)."),
    task: str = typer.Option("det,seg", "--task", help="det, seg, or both."),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="Label fraction of the cells (default: the "
                                                                      "largest of the experiment)."),
    corruptions: str = typer.Option("beam_missing,point_dropping,fog,brightness,low_light", "--corruptions",
                                    help="Corruptions (`calico eval --corrupt` names; '' for none)."),
    severities: str = typer.Option("1,3,5", "--severities", help="Severities 1..5 of every corruption."),
    spoof_ranges: str = typer.Option("10,20", "--spoof-ranges", help="LiDAR spoofing: metres ahead of the fake car "
                                                                     "(det cells; '' for none)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds (default: every seed in EXPERIMENT)."),
    select: str = typer.Option("last", "--select", help="last (the final checkpoint) or best (the cell's best by "
                                                        "NDS / mIoU on the validation split)."),
    corrupt_seed: int = typer.Option(0, "--corrupt-seed", help="Seed of the corruption and spoofing draws."),
) -> None:
    """Scratch vs CALICO under LiDAR / camera corruptions and LiDAR spoofing: every finished cell matching the
    options is scored clean and under every (corruption, severity) and spoofing range, each result stored in
    EXPERIMENT/robustness/<cell>/<tag>.json (a rerun skips those), then tabulated (table.md, table.csv,
    table.json in EXPERIMENT/robustness/). Exit 1 when an evaluation failed."""
    from calico.commands.output import to_stderr
    from calico.experiment.robustness import RobustnessSpec, run_robustness
    from calico.experiment.run import elapsed

    spec = RobustnessSpec(
        inits=tuple(_items(inits, "--inits")), tasks=tuple(_items(task, "--task")), fraction=fraction,
        corruptions=tuple(t.strip() for t in corruptions.split(",") if t.strip()),
        severities=_numbers(severities, "--severities", int) if severities.strip() else (),
        spoof_ranges=_numbers(spoof_ranges, "--spoof-ranges") if spoof_ranges.strip() else (),
        seeds=_numbers(seeds, "--seeds", int) if seeds is not None else None, select=select,
        corrupt_seed=corrupt_seed)
    log = typer.echo
    result = run_robustness(experiment, spec, log=log)
    table = result["table"]
    log(f"robustness: {len(result['evaluated'])} evaluation(s) run, {len(result['recomputed'])} recomputed, "
        f"{len(result['skipped'])} skipped (done earlier), {len(result['failed'])} failed, "
        f"{len(result['not_applicable'])} not applicable, {elapsed(result['wall_s'])}")
    log(f"table: {table['out'] / 'table.md'} (also table.csv, table.json)"
        + (f"; {len(table['missing'])} evaluation(s) missing" if table["missing"] else ""))
    if result["failed"]:
        for (cid, t), msg in result["failed"].items():
            to_stderr(f"failed: {cid} {t}: {msg}")
        raise typer.Exit(1)
