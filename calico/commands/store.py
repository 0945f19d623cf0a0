"""``calico preprocess run|verify``, ``calico catalog list|show|stats|errors|diff|report|gc``: the region-cache store.

``run`` preprocesses a nuScenes dataroot into a versioned store with Dask (:mod:`preprocess.run`), ``verify``
checks a store version against its manifests (:mod:`data_catalog.verify`), and the ``catalog`` sub-app lists
the versions of a store, shows one (configuration, lineage, counts), prints its per-scene statistics and its
failed sweeps and warnings, diffs two versions, writes an HTML report of one (:mod:`data_catalog.report`) and
removes versions no longer wanted (:mod:`data_catalog.gc`).
Heavy imports happen inside the commands. Also runnable on its own: ``python -m calico.commands.store``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from calico.commands import checks
from calico.commands.output import console

catalog_app = typer.Typer(help="Find and audit region-cache store versions.", no_args_is_help=True)


def run(
    store: Path = typer.Option(..., "--store", callback=checks.out_folder,
                               help="Store folder (created if missing)."),
    dataroot: Optional[Path] = typer.Option(None, "--dataroot", callback=checks.folder,
                                            help="nuScenes dataroot (default $NUSCENES or /data/sets/nuscenes)."),
    version: str = typer.Option("v1.0-trainval", "--version", help="nuScenes version folder, e.g. v1.0-mini."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                            help="Address of a running Dask scheduler (tcp://host:8786); its "
                                                 "workers must see --dataroot and --store (checked first)."),
    connect_timeout: float = typer.Option(10.0, "--connect-timeout", help="Seconds to wait for --scheduler to "
                                                                          "answer and for a first worker."),
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
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Also recompute the committed scenes whose shards hold failed sweeps (each "
                                      "new shard swapped in for the old one); over repaired inputs (a new "
                                      "version), reuse the intact shards of the earlier version."),
) -> None:
    """Preprocess every scene into a versioned store; committed scenes are skipped (resume). Exit status 1
    while the scenes' shards hold failed sweeps (this run's or an earlier one's: `calico catalog errors` lists
    them, --retry-failed recomputes them) or a scene failed; warnings alone (a sweep kept without a missing
    camera image) exit 0."""
    import sys

    from preprocess.run import run as run_stage
    from preprocess.sweep import SweepConfig
    from shared.paths import default_nuscenes_dataroot

    cfg = SweepConfig.from_overrides(overrides or [])
    names = [s.strip() for s in scenes.split(",") if s.strip()] if scenes else None
    log = (lambda *a: typer.echo(" ".join(str(x) for x in a), err=True))
    summary = run_stage(dataroot if dataroot is not None else default_nuscenes_dataroot(), version, store, cfg,
                        sweeps=sweeps, backend=backend, seed=seed, workers=workers, scheduler=scheduler,
                        processes=not threads, scenes=names, progress=progress, log=log, argv=sys.argv,
                        retry_failed=retry_failed, connect_timeout=connect_timeout)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=1))
    else:
        for line in summary_lines(summary, store):
            typer.echo(line)
    raise typer.Exit(summary.exit_code)


def summary_lines(s, store: Path) -> list[str]:
    """What ``run`` prints of a :class:`preprocess.run.RunSummary`."""
    out = [f"version {s.version}: {s.scenes_done} scene(s) written, {s.scenes_skipped} skipped (already "
           f"committed), {len(s.failed_scenes)} failed; {s.sweeps_done} sweep(s) done; {s.wall_s:.1f} s"]
    if s.retried_scenes:
        out.append(f"  retried in place: {', '.join(s.retried_scenes)}")
    if s.reused_scenes:
        out.append(f"  reused from version {s.reused_from} (same inputs, no failed sweep): "
                   f"{', '.join(s.reused_scenes)}")
    out += [f"  scene {scene} failed: {why}" for scene, why in s.failed_scenes.items()]
    out.append(f"  the shards of these scenes hold {s.failed_sweeps} failed sweep(s) and {s.warnings} warning(s)"
               + (f": calico catalog errors --store {store} --version {s.version}" if s.failed_sweeps or s.warnings
                  else ""))
    if s.failed_sweeps:
        out.append("  repair the files named there, then rerun with --retry-failed")
    return out


def verify(
    store: Path = typer.Option(..., "--store", callback=checks.folder, help="Store folder."),
    version: Optional[str] = typer.Option(None, "--version", help="Version id or unique prefix (default: all)."),
) -> None:
    """Check every shard against its manifest (counts and checksums); name missing and corrupt shards.
    Exit status 1 when anything is missing or corrupt."""
    from data_catalog.reader import open_version
    from data_catalog.verify import verify_version
    from data_catalog.versions import version_dirs

    if version is not None:
        paths = [open_version(store, version).path]
    else:
        paths = version_dirs(store)  # also those whose version.json does not parse: verify says so
        if not paths:
            from shared.errors import InputError

            raise InputError("no store versions here (expected versions/<id>/version.json)", store)
    bad = 0
    for p in paths:
        rep = verify_version(p)
        for line in rep.lines():
            typer.echo(line)
        bad += not rep.ok
    raise typer.Exit(1 if bad else 0)


def _defaults() -> dict:
    """The preprocessing defaults that versions are compared with (the CLI may import every wing)."""
    from preprocess.sweep import SweepConfig

    return SweepConfig().to_dict()


def _non_default(config: dict) -> dict:
    from data_catalog.version import non_default

    return non_default(_defaults(), config)


@catalog_app.command("list")
def list_versions(
    store: Path = typer.Option(..., "--store", callback=checks.folder, help="Store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the versions of a store (oldest first) with their parameters' differences from the defaults."""
    from rich.table import Table

    from data_catalog import versions
    from data_catalog.layout import committed_scenes, version_dir

    rows = []
    for d in versions.list_versions(store):
        spec = d["spec"]
        vdir = version_dir(store, d["id"])
        rows.append({"id": d["id"], "created": d.get("created", ""), "dataset": spec["dataset_version"],
                     "sweeps": spec["sweeps"], "seed": spec["seed"],
                     "scenes": f"{len(committed_scenes(vdir))}/{len(d.get('scenes', []))}",
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
    console().print(t)


@catalog_app.command("show")
def show(
    store: Path = typer.Option(..., "--store", callback=checks.folder, help="Store folder."),
    version: Optional[str] = typer.Argument(None, help="Version id or unique prefix (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One version's configuration, lineage and counts."""
    import numpy as np

    from data_catalog.reader import open_version

    v = open_version(store, version)
    sw = v.sweeps_table()
    err = v.errors_table()
    n_warn = err.column("level").to_pylist().count("warning")
    counts = {"scenes_committed": len(v.scenes()), "scenes_expected": len(v.expected_scenes()),
              "sweeps": sw.num_rows, "errors": err.num_rows - n_warn, "warnings": n_warn,
              "points": int(np.sum(sw.column("points").to_numpy())) if sw.num_rows else 0}
    doc = {"id": v.id, "path": str(v.path), "created": v.info.get("created"), "spec": v.spec,
           "dataset": v.info.get("dataset"), "code": v.info.get("code"), "lineage": v.info.get("lineage"),
           "counts": counts}
    if as_json:
        typer.echo(json.dumps(doc, indent=1, default=str))
        return
    c = console()
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
    store: Path = typer.Option(..., "--store", callback=checks.folder, help="Store folder."),
    version: Optional[str] = typer.Argument(None, help="Version id or unique prefix (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
) -> None:
    """Per-scene statistics of a version (derived from its shards' tables) and, when its keyframes were audited
    against annotated objects, the audit: recall by class and distance band, purity, over- and
    under-segmentation, ground share and the kinds of misses (ratios of sums over the audited keyframes). --json:
    the per-scene rows (audit columns included)."""
    from rich.table import Table

    from data_catalog import audit
    from data_catalog.reader import open_version

    v = open_version(store, version)
    rows = v.scenes_table().to_pylist()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    summ = audit.summary(rows)
    cols = [("scene", "{}"), ("sweeps", "{:,}"), ("errors", "{:,}"), ("points", "{:,}"),
            ("ground_fraction", "{:.3f}"), ("noise_fraction", "{:.3f}"), ("clusters_mean", "{:.1f}"),
            ("regions_kept_mean", "{:.1f}"), ("region_size_p50_median", "{:.0f}"), ("t_total_ms", "{:.0f}"),
            ("bytes_per_point", "{:.2f}")]
    cols += [("audit_recall", "{:.3f}"), ("audit_purity", "{:.3f}")] if summ.audited else []
    t = Table(title=f"version {v.id}: {len(rows)} scene(s)", header_style="bold")
    for name, _ in cols:
        t.add_column(name.replace("audit_", ""), justify="left" if name == "scene" else "right")
    for r in rows:
        t.add_row(*[fmt.format(r[name]) if r[name] is not None else "-" for name, fmt in cols])
    console().print(t)
    for line in audit_lines(summ):
        typer.echo(line)


def audit_lines(summ) -> list[str]:
    """The audit of ``summ`` (:class:`data_catalog.audit.AuditSummary`) as lines of text."""
    from data_catalog.audit import fmt_rate

    o = summ.overall
    if not summ.audited:
        return ["audit: none (no annotated keyframes: the dataroot has no sample_annotation rows)"]
    out = [f"audit over {o['audited_sweeps']} keyframe(s): recall {fmt_rate(o['audit_recall'])} "
           f"({o['audit_recovered']}/{o['audit_objects']} objects), purity {fmt_rate(o['audit_purity'])}, "
           f"over-segmentation {fmt_rate(o['audit_over_seg'])}, "
           f"under-segmentation {fmt_rate(o['audit_under_seg'])}, ground share {fmt_rate(o['audit_ground_share'])}"]
    for title, table in (("class", summ.by_class), ("distance (m)", summ.by_band)):
        out.append(f"  recall by {title}: " + ", ".join(f"{k} {fmt_rate(rec, 2)} ({r}/{n})"
                                                       for k, (n, r, rec) in table.items()))
    out.append("  misses: " + (", ".join(f"{k} {n}" for k, n in summ.misses.items()) or "none"))
    return out


@catalog_app.command("errors")
def errors(
    store: Path = typer.Option(..., "--store", callback=checks.folder, help="Store folder."),
    version: Optional[str] = typer.Option(None, "--version", help="Version id or unique prefix (default: latest)."),
    level: Optional[str] = typer.Option(None, "--level", help="Only rows of this level: error|warning."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
) -> None:
    """The failed sweeps (level error: not in the store) and warnings (kept without something, e.g. a camera
    image) of a version, read from its shards: one line each, level, scene, sweep token, stage, file, reason.
    Exit status 0 (the listing is the answer; `calico preprocess run` exits 1 while failures exist)."""
    from data_catalog.layout import ERRORS_TABLE
    from data_catalog.reader import open_version
    from data_catalog.tables import LEVELS, read_shard_tables
    from shared.errors import ConfigError

    if level is not None and level not in LEVELS:
        raise ConfigError("--level", level, f"expected one of {', '.join(LEVELS)}")
    v = open_version(store, version)
    rows = [r for r in read_shard_tables(v.path, ERRORS_TABLE).to_pylist()
            if level is None or r["level"] == level]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    n_err = sum(r["level"] == "error" for r in rows)
    typer.echo(f"version {v.id}: {n_err} failed sweep(s), {len(rows) - n_err} warning(s)"
               + (f" in {len({r['scene'] for r in rows})} scene(s)" if rows else ""))
    if rows:
        typer.echo("level\tscene\tsweep\tstage\tfile\treason")
    for r in rows:
        typer.echo("\t".join(" ".join(str(r[k]).split()) for k in ("level", "scene", "token", "stage", "file",
                                                                   "reason")))


@catalog_app.command("diff")
def diff(
    a: str = typer.Argument(..., help="First version id or unique prefix."),
    b: str = typer.Argument(..., help="Second version id or unique prefix."),
    store: Path = typer.Option(..., "--store", callback=checks.folder, help="Store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Differences between two versions: their spec (parameters, sweeps, seed, inputs, code), per scene
    committed in both the change of the main statistics, and the audit of both (recall overall, per class and
    distance band, purity, over/under-segmentation, ground share: a, b and the change b - a)."""
    from data_catalog import audit
    from data_catalog.reader import open_version
    from data_catalog.version import diff_specs

    va, vb = open_version(store, a), open_version(store, b)
    spec = {k: list(v) for k, v in diff_specs(va.spec, vb.spec).items()}
    ra = {r["scene"]: r for r in va.scenes_table().to_pylist()}
    rb = {r["scene"]: r for r in vb.scenes_table().to_pylist()}
    keys = ("ground_fraction", "noise_fraction", "clusters_mean", "regions_kept_mean", "region_size_p50_median")
    scenes = {s: {k: [ra[s][k], rb[s][k]] for k in keys} for s in sorted(set(ra) & set(rb))}
    doc = {"a": va.id, "b": vb.id, "spec": spec, "scenes": scenes,
           "only_in_a": sorted(set(ra) - set(rb)), "only_in_b": sorted(set(rb) - set(ra)),
           "audit": audit_diff(audit.summary(ra.values()), audit.summary(rb.values()))}
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
        return
    from rich.table import Table

    c = console()
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
    if not doc["audit"]:
        typer.echo("audit: neither version was audited (no annotated keyframes)")
        return
    t = Table(title="audit (a -> b, change)", header_style="bold")
    for col in ("measure", "a", "b", "change"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for k, (x, y, d) in doc["audit"].items():
        t.add_row(k, audit.fmt_rate(x), audit.fmt_rate(y), "-" if d is None else f"{d:+.3f}")
    c.print(t)


def audit_diff(a, b) -> dict[str, list]:
    """{measure: [a, b, b - a]} of two :class:`data_catalog.audit.AuditSummary`: recall, purity, over/under-
    segmentation, ground share, then recall per class and per distance band present in either (None where a
    version has no value); empty when neither was audited."""
    if not (a.audited or b.audited):
        return {}
    out = {}
    names = {"recall": "audit_recall", "purity": "audit_purity", "over_segmentation": "audit_over_seg",
             "under_segmentation": "audit_under_seg", "ground_share": "audit_ground_share"}
    pairs = [(k, a.overall.get(c), b.overall.get(c)) for k, c in names.items()]
    for title, ta, tb in (("class", a.by_class, b.by_class), ("band", a.by_band, b.by_band)):
        pairs += [(f"recall {title} {k}", ta.get(k, (0, 0, None))[2], tb.get(k, (0, 0, None))[2])
                  for k in list(ta) + [k for k in tb if k not in ta]]
    for k, x, y in pairs:
        out[k] = [x, y, None if x is None or y is None else y - x]
    return out


@catalog_app.command("report")
def report(
    store: Path = typer.Option(..., "--store", callback=checks.folder, help="Store folder."),
    version: Optional[str] = typer.Argument(None, help="Version id or unique prefix (default: latest)."),
    out: Optional[Path] = typer.Option(None, "--out", callback=checks.out_folder,
                                       help="Output folder (default STORE/reports); the page is "
                                            "<out>/<id>.html."),
    all_versions: bool = typer.Option(False, "--all", help="One page per version of the store."),
    sweeps: Optional[List[str]] = typer.Option(None, "--sweeps", help="Sweep token to draw in bird's-eye view "
                                                                      "(repeatable; default: --n-sweeps picked)."),
    n_sweeps: int = typer.Option(4, "--n-sweeps", help="Sweeps picked for bird's-eye pictures when no "
                                                       "--sweeps is given (spread over the scenes)."),
    n_worst: int = typer.Option(4, "--n-worst", help="Audited sweeps of lowest recall drawn with their boxes "
                                                     "(0: none)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Write a static, self-contained HTML page of a version: spec, counts, per-scene statistics, errors,
    plots (region sizes, ground fraction and clusters per scene), the audit (recall by class and distance, the
    worst sweeps with their boxes) and bird's-eye pictures of regions; then the
    folder's index.html, every version of the store linked to its page."""
    from data_catalog import versions
    from data_catalog.report import ReportConfig, write_index, write_report

    cfg = ReportConfig(sweeps=tuple(sweeps or ()), n_sweeps=n_sweeps, n_worst=n_worst)
    ids = [d["id"] for d in versions.list_versions(store)] if all_versions else [version]
    if all_versions and version is not None:
        from shared.errors import ConfigError

        raise ConfigError("version", version, "give a version id or --all, not both")
    for vid in ids:
        r = write_report(store, vid, out, cfg, progress=progress, defaults=_defaults())
        typer.echo(f"version {r.version}: {r.path} ({r.path.stat().st_size / 1e3:.0f} kB, "
                   f"{len(r.sweeps_drawn)} sweep(s) drawn, {r.seconds:.1f} s)")
    typer.echo(f"index of the store's versions: {write_index(store, out, defaults=_defaults())}")


@catalog_app.command("gc")
def gc(
    store: Path = typer.Option(..., "--store", callback=checks.folder, help="Store folder."),
    keep: Optional[List[str]] = typer.Option(None, "--keep", help="Version id or unique prefix to keep "
                                                                  "(repeatable)."),
    keep_latest: int = typer.Option(1, "--keep-latest", help="Keep the N most recently created versions "
                                                             "(0: none, only --keep)."),
    grace: float = typer.Option(600.0, "--grace", help="Seconds: a version modified more recently may have a "
                                                       "live writer and is kept."),
    dry_run: bool = typer.Option(True, "--dry-run/--yes", help="Only list what would be removed (default); "
                                                               "--yes removes it."),
) -> None:
    """Remove store versions no longer wanted: all but --keep and the --keep-latest latest ones, never one with
    a live writer. Dry run by default. Versions are renamed into STORE/trash/ and then deleted, so a crash
    leaves no half-deleted version; the next gc empties trash/. Exit status 1 when a version to remove was kept
    because it is busy."""
    from rich.table import Table

    from data_catalog.gc import collect, human_bytes, plan_gc

    plan = plan_gc(store, keep=keep or (), keep_latest=keep_latest, grace_s=grace)
    t = Table(title=f"store {store}: {len(plan.versions)} version(s)" + (" (dry run)" if dry_run else ""),
              header_style="bold")
    for c in ("id", "created", "size", "action", "why"):
        t.add_column(c, justify="right" if c == "size" else "left")
    for v in plan.versions:
        t.add_row(v.id, v.created, human_bytes(v.bytes), v.action, v.reason)
    console().print(t)
    if plan.trash:
        typer.echo(f"trash/: {len(plan.trash)} leftover folder(s) of an earlier gc, {human_bytes(plan.trash_bytes)}")
    if dry_run:
        typer.echo(f"would remove {len(plan.to_remove)} version(s) and free {human_bytes(plan.bytes_freed)}; "
                   "rerun with --yes to do it")
        raise typer.Exit(1 if plan.busy else 0)
    res = collect(store, plan, grace_s=grace)
    for vid, why in res.skipped.items():
        typer.echo(f"  kept {vid}: {why}")
    typer.echo(f"removed {len(res.removed)} version(s)" + (f" ({', '.join(res.removed)})" if res.removed else "")
               + (f", emptied {len(res.trash_emptied)} trash folder(s)" if res.trash_emptied else "")
               + f"; freed {human_bytes(res.bytes_freed)}")
    raise typer.Exit(1 if plan.busy or any(w.startswith("busy") for w in res.skipped.values()) else 0)
