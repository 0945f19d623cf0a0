"""``calico preprocess ...``: the per-sweep preprocessing on point files.

``calico preprocess sweep FILE`` runs ground removal, DBSCAN, semantic pooling, camera projection (with
``--calib``) and the augmentation sampling on one point file, prints per-stage timings and statistics, and with
``--save`` writes the per-point results to an ``.npz``. ``calico preprocess tune`` scores the pipeline over a grid
of settings against a dataroot's annotated objects (:mod:`preprocess.tune`). Heavy imports (numba kernels) happen
inside the commands.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from calico.commands import checks

app = typer.Typer(help="Preprocess LiDAR sweeps: ground removal, clustering, projection, augmentation.",
                  no_args_is_help=True)

FORMATS = ("nuscenes", "kitti")


@app.command("sweep")
def sweep(
    file: Path = typer.Argument(..., help="Point file: nuScenes *.pcd.bin (5 float32) or KITTI *.bin (4 float32)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="nuscenes|kitti (default: from the file name)."),
    calib: Optional[Path] = typer.Option(
        None, "--calib", callback=checks.file,
        help="Camera calibration: nuScenes fixture *.calib.json, KITTI calib .txt or KITTI demo *.calib.json. "
             "Enables the projection into the cameras."),
    backend: str = typer.Option("auto", "--backend", help="auto|cpu|gpu for ground removal and DBSCAN."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write per-point results to this .npz."),
    as_json: bool = typer.Option(False, "--json", help="Print the timings and statistics as JSON."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", help="Config override section.field=value (repeatable), e.g. --set cluster.eps=0.5."),
    seed: int = typer.Option(0, "--seed", help="Global seed of the augmentation parameters."),
    token: Optional[str] = typer.Option(
        None, "--token", help="Sweep token for the augmentation seed (default: the file name)."),
    warmup: bool = typer.Option(
        True, "--warmup/--no-warmup", help="Load (or compile) the Numba kernels on a small synthetic sweep "
                                           "first, so that the stage timings are steady-state."),
) -> None:
    """Run the whole per-sweep computation on one point file; print timings (ms) and statistics. A file with no
    finite point (empty, or every x, y, z NaN or infinite) is an error (exit status 2)."""
    import numpy as np

    from shared.fixtures import load_cameras
    from preprocess.sweep import SweepConfig, process_sweep, warm_up
    from shared.backend import resolve_backend
    from calico.commands.output import to_stderr
    from shared.compile_notice import PREPROCESS_COMPILE_S, announce_compilation
    from shared.errors import ConfigError, InputError
    from shared.malloc import tune_malloc
    from shared.paths import check_file
    from shared.pointcloud import finite_mask, load_points

    tune_malloc()  # as the preprocessing workers do: the stage timings are theirs
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError("--format", fmt, f"expected one of {', '.join(FORMATS)}")
    if save is not None and save.suffix != ".npz":
        raise ConfigError("--save", str(save), "must be a path ending in .npz")
    cfg = SweepConfig.from_overrides(overrides or [])
    resolved = resolve_backend(backend)
    check_file(file, "point file")
    points = load_points(file, fmt)
    if not finite_mask(points).any():
        raise InputError("no point to preprocess: " + (f"all {len(points):,} points have a non-finite x, y or z"
                                                       if len(points) else "the file is empty"), file)
    cameras = load_cameras(calib) if calib is not None else None
    token = file.name if token is None else token
    with announce_compilation(to_stderr, seconds=PREPROCESS_COMPILE_S):
        warm_ms = warm_up(cfg, resolved, cameras, points.shape[1]) if warmup else None
        res = process_sweep(points, cameras, cfg, backend=resolved, seed=seed, token=token)

    if save is not None:
        arrays = {
            "ground": res.ground,
            "region": res.region,
            "labels": res.labels,
            "valid": res.valid,
            "aug_params": res.aug_params,
            "config_json": np.array(json.dumps(cfg.to_dict())),
            "stats_json": np.array(json.dumps(res.stats.to_dict())),
        }
        if res.projection is not None:
            p = res.projection
            arrays.update(proj_point=p.point, proj_cam=p.cam, proj_uv=p.uv, proj_depth=p.depth,
                          proj_channels=np.array(p.channels))
        try:
            save.parent.mkdir(parents=True, exist_ok=True)
            with open(save, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        except OSError as exc:
            raise InputError(f"cannot write the results ({exc.strerror or exc})", save) from None

    report = {
        "file": str(file),
        "format": fmt or ("nuscenes" if file.name.endswith(".pcd.bin") else "kitti"),
        "backend": resolved,
        "stats": res.stats.to_dict(),
        "timings_ms": {k: round(v, 3) for k, v in res.timings_ms.items()},
        "warmup_ms": None if warm_ms is None else round(warm_ms, 3),
        "cameras": None,
        "aug_params": res.aug_params.tolist(),
        "saved": None if save is None else str(save),
        "config": cfg.to_dict(),
    }
    if res.projection is not None:
        report["cameras"] = dict(zip(res.projection.channels, res.projection.counts().tolist()))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_table(report)


def _print_table(report: dict) -> None:
    from rich.table import Table

    from calico.commands.output import console as make_console

    console = make_console()
    s = report["stats"]
    console.print(f"[bold]{report['file']}[/bold] ({report['format']}, {s['points']:,} points, "
                  f"backend {report['backend']})")
    t = Table(show_header=True, header_style="bold")
    t.add_column("stage")
    t.add_column("ms", justify="right")
    for k, v in report["timings_ms"].items():
        t.add_row(k, f"{v:.2f}")
    if report["warmup_ms"] is not None:
        t.add_row("(warm-up, not in total)", f"{report['warmup_ms']:.2f}")
    console.print(t)
    st = Table(show_header=True, header_style="bold")
    st.add_column("statistic")
    st.add_column("value", justify="right")
    rows = [
        ("points", f"{s['points']:,}"),
        ("non-finite points (masked)", f"{s['nonfinite_points']:,}"),
        ("out-of-range points (masked)", f"{s['out_of_range_points']:,}"),
        ("ground fraction", f"{s['ground_fraction']:.3f}"),
        ("clusters (DBSCAN)", f"{s['clusters']:,}"),
        ("regions kept", f"{s['regions_kept']:,}"),
        ("clusters dropped", f"{sum(s['dropped'].values()):,}"),
        *((f"  {k}", f"{v:,}") for k, v in s["dropped"].items() if v),
        ("points in regions", f"{s['region_points']:,}"),
        ("noise fraction (of non-ground)", f"{s['noise_fraction']:.3f}"),
    ]
    if report["cameras"] is not None:
        rows.append(("projected (point, camera) pairs", f"{s['projected_pairs']:,}"))
        rows.append(("points in >= 1 camera", f"{s['visible_points']:,}"))
        for ch, c in report["cameras"].items():
            rows.append((f"  {ch}", f"{c:,}"))
    for r in rows:
        st.add_row(*r)
    console.print(st)
    if report["saved"]:
        console.print(f"saved {report['saved']}")


@app.command("tune")
def tune(
    grid: List[str] = typer.Option(
        ..., "--grid", help="A grid axis section.field=v1,v2,... (repeatable; the grid is their Cartesian "
                            "product), e.g. --grid cluster.eps=0.5,0.75,1.0."),
    dataroot: Optional[Path] = typer.Option(None, "--dataroot", callback=checks.folder,
                                            help="nuScenes dataroot with annotations (default $NUSCENES or "
                                                 "/data/sets/nuscenes)."),
    version: str = typer.Option("v1.0-trainval", "--version", help="nuScenes version folder, e.g. v1.0-mini."),
    scenes: Optional[str] = typer.Option(None, "--scenes", help="Comma-separated scene names (default: all)."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Keyframes to score, drawn once with --seed and "
                                                                "shared by every setting (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the keyframe sample."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", help="Base config override section.field=value (repeatable), as for preprocess run."),
    workers: int = typer.Option(2, "--workers", help="Worker processes of the local Dask cluster "
                                                     "(0: in this process, no Dask)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler "
                                                                      "(tcp://host:8786) instead."),
    connect_timeout: float = typer.Option(10.0, "--connect-timeout", help="Seconds to wait for --scheduler to "
                                                                          "answer and for a first worker."),
    backend: str = typer.Option("cpu", "--backend", help="auto|cpu|gpu for ground removal and DBSCAN."),
    min_points: int = typer.Option(20, "--min-points", help="Objects count with at least this many points."),
    out: Optional[Path] = typer.Option(None, "--out", callback=checks.out_folder,
                                       help="Write tune.csv, tune.json and tune.md into this folder."),
    best: Optional[str] = typer.Option(None, "--best", help="recall: print the `calico preprocess run` command "
                                                            "of the highest recall; pareto: those of the Pareto "
                                                            "front."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of tables."),
) -> None:
    """Run the per-sweep pipeline over a grid of settings on a sample of annotated keyframes and score each
    setting's regions against the boxes: recall, purity, over/under-segmentation, regions and ms per sweep,
    recall by class; the Pareto front (recall, purity, ms) is marked *. Each row gives the --set flags that
    reproduce it with `calico preprocess run`."""
    from preprocess.tune import BEST, best_rows, markdown_table, run_command, tune as run_tune, write_outputs
    from shared.errors import ConfigError
    from shared.paths import default_nuscenes_dataroot
    from shared.region_quality import RecoveryRule

    from calico.commands.output import to_stderr

    if best is not None and best not in BEST:
        raise ConfigError("--best", best, f"expected one of {', '.join(BEST)}")
    if min_points < 1:
        raise ConfigError("--min-points", min_points, "must be an integer >= 1")
    rule = RecoveryRule(min_points=min_points)
    names = [s.strip() for s in scenes.split(",") if s.strip()] if scenes else None
    root = dataroot if dataroot is not None else default_nuscenes_dataroot()
    result = run_tune(root, version, grid, overrides or [], scenes=names, sample=sample, seed=seed,
                      workers=workers, scheduler=scheduler, connect_timeout=connect_timeout, backend=backend,
                      rule=rule, progress=progress, log=to_stderr)
    written = write_outputs(result, out) if out is not None else []
    chosen = best_rows(result.rows, best) if best is not None else []
    if as_json:
        d = result.to_dict()
        d["written"] = [str(p) for p in written]
        d["best"] = [{"setting": r.setting, "command": run_command(r.flags, result.dataroot, result.version)}
                     for r in chosen]
        typer.echo(json.dumps(d, indent=1, default=str))
        return
    typer.echo(result.sample_line())
    typer.echo("")
    typer.echo(markdown_table(result.rows), nl=False)
    if written:
        typer.echo(f"\nwrote {', '.join(str(p) for p in written)}")
    for r in chosen:
        typer.echo(f"\n# setting {r.setting} ({best}): recall {r.recall:.3f}, purity {r.purity:.3f}, "
                   f"{r.ms_per_sweep:.2f} ms / sweep\n{run_command(r.flags, result.dataroot, result.version)}")


# `calico preprocess run|verify`: the distributed stage and the store check (see calico/commands/store.py)
from calico.commands import store as _store  # noqa: E402

app.command("run")(_store.run)
app.command("verify")(_store.verify)
