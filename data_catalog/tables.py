"""The Parquet tables of a store: the per-sweep table (statistics, stage timings, the audit columns of
:mod:`data_catalog.audit`) and the errors table of each shard, their schemas, and the version-level tables derived
from the shards by :func:`finalize` (sweeps, errors, the per-scene table) with their manifest ``tables.json``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from data_catalog import audit
from data_catalog.layout import (ERRORS_TABLE, SCENES_TABLE, SWEEPS_TABLE, TABLES_MANIFEST, committed_scenes,
                                 read_manifest, replace_file, shard_dir, shard_failures)
from data_catalog.version import FORMAT_VERSION


#: Stage timing columns of the sweeps table (milliseconds): ``load`` is reading the point file, the others
#: are ``SweepResult.timings_ms``.
TIMING_STAGES: tuple[str, ...] = ("load", "validate", "ground", "cluster", "pooling", "project", "augment",
                                  "total")


def _pa():
    import pyarrow as pa

    return pa


def sweeps_schema():
    """Columns of ``sweeps.parquet``: statistics, stage timings (``t_<stage>_ms``) and the audit columns
    (:data:`data_catalog.audit.SWEEP_COLUMNS`; a shard written before them reads them as nulls)."""
    pa = _pa()
    cols = [
        ("token", pa.string()), ("scene", pa.string()), ("index", pa.int32()), ("timestamp", pa.int64()),
        ("is_key_frame", pa.bool_()), ("file", pa.string()), ("backend", pa.string()),
        ("points", pa.int64()), ("nonfinite_points", pa.int64()), ("clipped_points", pa.int64()),
        ("ground_points", pa.int64()), ("ground_fraction", pa.float64()), ("clusters", pa.int64()),
        ("regions_kept", pa.int64()), ("region_points", pa.int64()), ("noise_points", pa.int64()),
        ("noise_fraction", pa.float64()), ("projected_pairs", pa.int64()), ("visible_points", pa.int64()),
        ("region_size_min", pa.float64()), ("region_size_p10", pa.float64()), ("region_size_p50", pa.float64()),
        ("region_size_p90", pa.float64()), ("region_size_max", pa.float64()),
    ]
    cols += [(f"t_{s}_ms", pa.float64()) for s in TIMING_STAGES]
    cols += audit.schema_fields(audit.SWEEP_COLUMNS)  # null but for audited keyframes (data_catalog.audit)
    return pa.schema(cols)


#: Levels of a row of the errors table: ``error``, the sweep is not in the shard (its point file is missing or
#: unreadable, its calibration is broken, ...); ``warning``, the sweep is in the shard without something
#: (a camera image missing: that camera is marked absent for the sweep, NaN calibration and no projections).
LEVELS: tuple[str, ...] = ("error", "warning")


def errors_schema():
    """Columns of ``errors.parquet``. ``level`` (:data:`LEVELS`) came with format version 2; an older table
    without it reads as all ``error`` (:func:`read_shard_tables`), which is what its rows were."""
    pa = _pa()
    return pa.schema([("token", pa.string()), ("scene", pa.string()), ("file", pa.string()),
                      ("stage", pa.string()), ("reason", pa.string()), ("level", pa.string())])


QUANTILE_NAMES = ("region_size_min", "region_size_p10", "region_size_p50", "region_size_p90", "region_size_max")


_QUANTILES = np.array([0.0, 0.1, 0.5, 0.9, 1.0])


def size_quantiles(sizes: np.ndarray) -> dict[str, float]:
    """``np.quantile(sizes, [0, .1, .5, .9, 1])`` (method "linear"), value for value, in about a tenth of its time
    (numpy's generic machinery cost 0.1 ms a sweep): the same virtual indices and the same interpolation
    (numpy's ``_lerp``, which interpolates from the upper neighbour for fractions >= 0.5). Tested against
    ``np.quantile`` for equality."""
    if sizes.size == 0:
        return {k: float("nan") for k in QUANTILE_NAMES}
    a = np.sort(sizes.astype(np.float64))
    n = a.size
    q = _QUANTILES
    virtual = (n - 1) * q  # numpy's "linear" virtual index
    lo = np.floor(virtual)
    t = virtual - lo
    lo_i = np.clip(lo.astype(np.intp), 0, n - 1)
    hi_i = np.clip(lo_i + 1, 0, n - 1)
    below, above = a[lo_i], a[hi_i]
    diff = above - below
    out = np.where(t >= 0.5, above - diff * (1.0 - t), below + diff * t)
    return dict(zip(QUANTILE_NAMES, (float(v) for v in out)))


def table_bytes(rows: list[dict], schema):
    """A Parquet file (zstd) of ``rows`` with ``schema``, in memory (a ``pyarrow.Buffer``)."""
    import pyarrow as pa

    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return parquet_bytes(pa.table(cols, schema=schema))


def parquet_bytes(table):
    """``table`` as a Parquet file (zstd), in memory (a ``pyarrow.Buffer``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_shard_tables(vdir: str | Path, name: str, scenes: Iterable[str] | None = None):
    """Concatenate ``name`` (sweeps.parquet or errors.parquet) over the committed shards (a pyarrow Table).
    Errors tables of format 1 (no ``level`` column) read with ``level`` = ``error``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = sweeps_schema() if name == SWEEPS_TABLE else errors_schema()
    scenes = committed_scenes(vdir) if scenes is None else list(scenes)
    tables = [pq.read_table(Path(vdir) / "shards" / s / name, schema=schema) for s in scenes]
    out = pa.concat_tables(tables) if tables else schema.empty_table()
    if name == ERRORS_TABLE:
        i = out.schema.get_field_index("level")
        out = out.set_column(i, "level", pc.fill_null(out.column("level"), "error"))
    return out


def scene_table(vdir: str | Path, scenes: Iterable[str] | None = None):
    """Per-scene statistics (a pyarrow Table) derived from the shards' sweeps/errors tables and manifests.

    Columns: scene, sweeps, errors (sweeps that failed), warnings (sweeps kept without something, e.g. a
    camera), points, ground_fraction (ground / finite points of the scene),
    noise_fraction (noise / non-ground finite points), clusters_mean, regions_kept_mean, regions_total,
    region_size_p50_median (median over sweeps), t_total_ms (sum of stage totals), t_load_ms, store_bytes,
    bytes_per_point (store bytes of the shard / points), then the audit columns summed over the scene's audited
    keyframes, rates from the sums (:func:`data_catalog.audit.aggregate`; null for a scene without any).
    """
    import pyarrow as pa

    rows = []
    for s in committed_scenes(vdir) if scenes is None else scenes:
        sw = read_shard_tables(vdir, SWEEPS_TABLE, [s]).to_pydict()
        man = read_manifest(Path(vdir) / "shards" / s)
        errors, warnings = shard_failures(vdir, s)
        pts = np.asarray(sw["points"], np.float64)
        finite = pts - np.asarray(sw["nonfinite_points"], np.float64)
        ground = np.asarray(sw["ground_points"], np.float64)
        noise = np.asarray(sw["noise_points"], np.float64)
        nonground = finite - ground
        n = len(sw["token"])
        p50 = np.asarray([v for v in sw["region_size_p50"] if v is not None and not np.isnan(v)])
        rows.append({
            "scene": s, "sweeps": n, "errors": errors, "warnings": warnings, "points": int(pts.sum()),
            "ground_fraction": float(ground.sum() / finite.sum()) if finite.sum() else 0.0,
            "noise_fraction": float(noise.sum() / nonground.sum()) if nonground.sum() else 0.0,
            "clusters_mean": float(np.mean(sw["clusters"])) if n else 0.0,
            "regions_kept_mean": float(np.mean(sw["regions_kept"])) if n else 0.0,
            "regions_total": int(np.sum(sw["regions_kept"])) if n else 0,
            "region_size_p50_median": float(np.median(p50)) if p50.size else float("nan"),
            "t_total_ms": float(np.nansum(sw["t_total_ms"])) if n else 0.0,
            "t_load_ms": float(np.nansum(sw["t_load_ms"])) if n else 0.0,
            "store_bytes": int(man["bytes"]),
            "bytes_per_point": float(man["bytes"] / pts.sum()) if pts.sum() else float("nan"),
            **audit.aggregate(dict(zip(sw, vals)) for vals in zip(*sw.values())),
        })
    schema = pa.schema([("scene", pa.string()), ("sweeps", pa.int64()), ("errors", pa.int64()),
                        ("warnings", pa.int64()),
                        ("points", pa.int64()), ("ground_fraction", pa.float64()), ("noise_fraction", pa.float64()),
                        ("clusters_mean", pa.float64()), ("regions_kept_mean", pa.float64()),
                        ("regions_total", pa.int64()), ("region_size_p50_median", pa.float64()),
                        ("t_total_ms", pa.float64()), ("t_load_ms", pa.float64()), ("store_bytes", pa.int64()),
                        ("bytes_per_point", pa.float64()), *audit.schema_fields(audit.SCENE_COLUMNS)])
    return pa.table({f.name: [r[f.name] for r in rows] for f in schema}, schema=schema)


FINALIZE_LOCK = ".finalize.lock"


def finalize(vdir: str | Path) -> dict[str, Path]:
    """Write the version-level ``sweeps.parquet``, ``errors.parquet`` and ``scenes.parquet`` (derived from the
    committed shards; each replaced atomically), then ``tables.json``: each table's bytes, SHA-256 and rows and
    the ``content_sha256`` of every shard they were derived from (what ``verify`` checks them against). Runs
    that finish at once on one version take turns (an exclusive lock on ``.finalize.lock``). Returns the
    tables' paths."""
    import fcntl

    vdir = Path(vdir)
    with open(vdir / FINALIZE_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        scenes = committed_scenes(vdir)
        shards = {s: read_manifest(shard_dir(vdir, s))["content_sha256"] for s in scenes}
        out, entries = {}, {}
        for name, table in ((SWEEPS_TABLE, read_shard_tables(vdir, SWEEPS_TABLE, scenes)),
                            (ERRORS_TABLE, read_shard_tables(vdir, ERRORS_TABLE, scenes)),
                            (SCENES_TABLE, scene_table(vdir, scenes))):
            entries[name] = {**replace_file(vdir / name, parquet_bytes(table)), "rows": table.num_rows}
            out[name] = vdir / name
        doc = {"calico_format_version": FORMAT_VERSION, "tables": entries, "shards": shards}
        replace_file(vdir / TABLES_MANIFEST, json.dumps(doc, indent=1, sort_keys=True).encode())
    return out
