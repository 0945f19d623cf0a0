"""``calico preprocess run|verify`` and ``calico catalog list|show|stats|diff``: the region-cache store.

``run`` preprocesses a nuScenes dataroot into a versioned store with Dask (:mod:`preprocess.run`), ``verify``
checks a store version against its manifests (:mod:`data_catalog.verify`), and the ``catalog`` sub-app lists
the versions of a store, shows one (configuration, lineage, counts), prints its per-scene statistics and
diffs two versions.
Heavy imports happen inside the commands. Also runnable on its own: ``python -m calico.commands.store``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

catalog_app = typer.Typer(help="Find and audit region-cache store versions.", no_args_is_help=True)


def run(
    store: Path = typer.Option(..., "--store", help="Store folder (created if missing)."),
    dataroot: Optional[Path] = typer.Option(None, "--dataroot",
                                            help="nuScenes dataroot (default $NUSCENES or /data/sets/nuscenes)."),
    version: str = typer.Option("v1.0-trainval", "--version", help="nuScenes version folder, e.g. v1.0-mini."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                            help="Address of a running Dask scheduler (tcp://host:8786)."),
    workers: int = typer.Option(2, "--workers", help="Worker processes of the local Dask cluster "
                                                     "(0: scenes one by one in this process, no Dask)."),
    threads: bool = typer.Option(False, "--threads", help="Local cluster of threads in this process "
                                                          "(debugging, tests) instead of worker processes."),
    backend: str = typer.Option("auto", "--backend", help="auto|cpu|gpu for ground removal and DBSCAN."),
    sweeps: str = typer.Option("keyframes", "--sweeps", help="keyframes|all LiDAR sweeps."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", help="Config override section.field=value (repeatable), e.g. --set cluster.eps=0.5."),
    seed: int = typer.Option(0, "--seed", help="Global seed of the augmentation parameters."),
    scenes: Optional[str] = typer.Option(None, "--scenes", help="Comma-separated scene names (default: all)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Preprocess every scene into a versioned store; committed scenes are skipped (resume). Exit status 1
    when some sweeps or scenes failed (listed in the version's errors table)."""
    import sys

    from preprocess.run import run as run_stage
    from preprocess.sweep import SweepConfig
    from shared.paths import default_nuscenes_dataroot

    cfg = SweepConfig.from_overrides(overrides or [])
    names = [s.strip() for s in scenes.split(",") if s.strip()] if scenes else None
    log = (lambda *a: typer.echo(" ".join(str(x) for x in a), err=True))
    summary = run_stage(dataroot if dataroot is not None else default_nuscenes_dataroot(), version, store, cfg,
                        sweeps=sweeps, backend=backend, seed=seed, workers=workers, scheduler=scheduler,
                        processes=not threads, scenes=names, progress=progress, log=log, argv=sys.argv)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=1))
    else:
        s = summary
        typer.echo(f"version {s.version}: {s.scenes_done} scene(s) written, {s.scenes_skipped} skipped "
                   f"(already committed), {len(s.failed_scenes)} failed; {s.sweeps_done} sweep(s) done, "
                   f"{s.failed_sweeps} failed; {s.wall_s:.1f} s")
        for scene, why in s.failed_scenes.items():
            typer.echo(f"  scene {scene} failed: {why}")
        if s.failed_sweeps:
            typer.echo(f"  failed sweeps are listed in {s.path}/errors.parquet")
    raise typer.Exit(summary.exit_code)


def verify(
    store: Path = typer.Option(..., "--store", help="Store folder."),
    version: Optional[str] = typer.Option(None, "--version", help="Version id or unique prefix (default: all)."),
) -> None:
    """Check every shard against its manifest (counts and checksums); name missing and corrupt shards.
    Exit status 1 when anything is missing or corrupt."""
    from data_catalog import store as st
    from data_catalog.reader import open_version
    from data_catalog.verify import verify_version

    if version is not None:
        paths = [open_version(store, version).path]
    else:
        docs = st.list_versions(store)
        if not docs:
            from shared.errors import InputError

            raise InputError("no store versions here (expected versions/<id>/version.json)", store)
        paths = [st.version_dir(store, d["id"]) for d in docs]
    bad = 0
    for p in paths:
        rep = verify_version(p)
        for line in rep.lines():
            typer.echo(line)
        bad += not rep.ok
    raise typer.Exit(1 if bad else 0)


def _console():
    """A rich Console; when the output is not a terminal (a pipe, a file), wide enough not to cut columns."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=200)


def _non_default(config: dict) -> dict:
    from data_catalog.version import diff_specs
    from preprocess.sweep import SweepConfig

    return {k: v[1] for k, v in diff_specs(SweepConfig().to_dict(), config).items()}


@catalog_app.command("list")
def list_versions(
    store: Path = typer.Option(..., "--store", help="Store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the versions of a store (oldest first) with their parameters' differences from the defaults."""
    from rich.table import Table

    from data_catalog import store as st

    rows = []
    for d in st.list_versions(store):
        spec = d["spec"]
        vdir = st.version_dir(store, d["id"])
        rows.append({"id": d["id"], "created": d.get("created", ""), "dataset": spec["dataset_version"],
                     "sweeps": spec["sweeps"], "seed": spec["seed"],
                     "scenes": f"{len(st.committed_scenes(vdir))}/{len(d.get('scenes', []))}",
                     "params": _non_default(spec["config"])})
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    t = Table(title=f"store {store}: {len(rows)} version(s)", header_style="bold")
    for c in ("id", "created", "dataset", "sweeps", "seed", "scenes", "non-default parameters"):
        t.add_column(c)
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "(defaults)"
        t.add_row(r["id"], r["created"], r["dataset"], r["sweeps"], str(r["seed"]), r["scenes"], params)
    _console().print(t)


@catalog_app.command("show")
def show(
    store: Path = typer.Option(..., "--store", help="Store folder."),
    version: Optional[str] = typer.Argument(None, help="Version id or unique prefix (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One version's configuration, lineage and counts."""
    import numpy as np

    from data_catalog.reader import open_version

    v = open_version(store, version)
    sw = v.sweeps_table()
    err = v.errors_table()
    counts = {"scenes_committed": len(v.scenes()), "scenes_expected": len(v.expected_scenes()),
              "sweeps": sw.num_rows, "errors": err.num_rows,
              "points": int(np.sum(sw.column("points").to_numpy())) if sw.num_rows else 0}
    doc = {"id": v.id, "path": str(v.path), "created": v.info.get("created"), "spec": v.spec,
           "dataset": v.info.get("dataset"), "code": v.info.get("code"), "lineage": v.info.get("lineage"),
           "counts": counts}
    if as_json:
        typer.echo(json.dumps(doc, indent=1, default=str))
        return
    c = _console()
    c.print(f"[bold]version {v.id}[/bold]  {v.path}")
    c.print(f"created {doc['created']}; dataset {v.spec['dataset_version']} (manifest "
            f"{v.spec['manifest_sha256'][:16]}), sweeps {v.spec['sweeps']}, seed {v.spec['seed']}, code "
            f"{v.spec['code_sha256'][:16]} (format {v.spec['format_version']})")
    c.print("counts: " + ", ".join(f"{k} {val:,}" for k, val in counts.items()))
    non_default = _non_default(v.config)
    c.print("non-default parameters: " + (", ".join(f"{k}={val}" for k, val in non_default.items())
                                          or "(none)"))
    c.print("configuration:")
    c.print_json(json.dumps(v.config))
    lin = v.info.get("lineage", {})
    c.print(f"lineage: {' '.join(lin.get('command', []))} on {lin.get('host')} by {lin.get('user')}, "
            f"git {lin.get('git_commit', '')[:12]}, " + ", ".join(f"{k} {val}" for k, val in
                                                                   lin.get("packages", {}).items()))


@catalog_app.command("stats")
def stats(
    store: Path = typer.Option(..., "--store", help="Store folder."),
    version: Optional[str] = typer.Argument(None, help="Version id or unique prefix (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
) -> None:
    """Per-scene statistics of a version (derived from its shards' tables)."""
    from rich.table import Table

    from data_catalog.reader import open_version

    v = open_version(store, version)
    rows = v.scenes_table().to_pylist()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    cols = [("scene", "{}"), ("sweeps", "{:,}"), ("errors", "{:,}"), ("points", "{:,}"),
            ("ground_fraction", "{:.3f}"), ("noise_fraction", "{:.3f}"), ("clusters_mean", "{:.1f}"),
            ("regions_kept_mean", "{:.1f}"), ("region_size_p50_median", "{:.0f}"), ("t_total_ms", "{:.0f}"),
            ("bytes_per_point", "{:.2f}")]
    t = Table(title=f"version {v.id}: {len(rows)} scene(s)", header_style="bold")
    for name, _ in cols:
        t.add_column(name, justify="left" if name == "scene" else "right")
    for r in rows:
        t.add_row(*[fmt.format(r[name]) for name, fmt in cols])
    _console().print(t)


@catalog_app.command("diff")
def diff(
    a: str = typer.Argument(..., help="First version id or unique prefix."),
    b: str = typer.Argument(..., help="Second version id or unique prefix."),
    store: Path = typer.Option(..., "--store", help="Store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Differences between two versions: their spec (parameters, sweeps, seed, inputs, code) and, per scene
    committed in both, the change of the main statistics."""
    from data_catalog.reader import open_version
    from data_catalog.version import diff_specs

    va, vb = open_version(store, a), open_version(store, b)
    spec = {k: list(v) for k, v in diff_specs(va.spec, vb.spec).items()}
    ra = {r["scene"]: r for r in va.scenes_table().to_pylist()}
    rb = {r["scene"]: r for r in vb.scenes_table().to_pylist()}
    keys = ("ground_fraction", "noise_fraction", "clusters_mean", "regions_kept_mean", "region_size_p50_median")
    scenes = {s: {k: [ra[s][k], rb[s][k]] for k in keys} for s in sorted(set(ra) & set(rb))}
    doc = {"a": va.id, "b": vb.id, "spec": spec, "scenes": scenes,
           "only_in_a": sorted(set(ra) - set(rb)), "only_in_b": sorted(set(rb) - set(ra))}
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
        return
    from rich.table import Table

    c = _console()
    c.print(f"[bold]{va.id}[/bold] -> [bold]{vb.id}[/bold]")
    for k, (x, y) in spec.items():
        c.print(f"  {k}: {x!r} -> {y!r}")
    if not spec:
        c.print("  same spec")
    t = Table(title="per scene (a -> b)", header_style="bold")
    t.add_column("scene")
    for k in keys:
        t.add_column(k, justify="right")
    for s, vals in scenes.items():
        t.add_row(s, *[f"{x:.3g} -> {y:.3g}" for x, y in vals.values()])
    c.print(t)
