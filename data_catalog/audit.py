"""The object-recovery audit of a store version: columns of the per-sweep and per-scene tables that say how well
the stored regions recover the dataset's annotated objects (rules: :mod:`shared.region_quality`).

The Dask stage (``preprocess.run``) computes them for every keyframe when the dataroot has annotations (a
non-empty nuScenes ``sample_annotation`` table): :func:`audit_sweep` evaluates the keyframe's boxes (through the
devkit, in the sweep's LiDAR frame) against the points *as stored* (quantised to centimetres, a non-finite point
at the origin), the stored region ids and ground flags, with the default :class:`~shared.region_quality.
RecoveryRule` (code, not configuration: it is not part of the version id, which changes with the code version
when :mod:`shared.region_quality` does). Non-keyframes, and every sweep of a dataroot without annotations, have
nulls in every audit column.

Columns (:data:`COUNT_COLUMNS`, int64, sums over sweeps; :data:`RATE_COLUMNS`, float64, ratios of those sums,
null where the denominator is 0; ``t_audit_ms``, the metrics' time):

* ``audit_objects`` / ``audit_recovered``: counted objects (>= ``min_points`` points in the box) / recovered ones;
  ``audit_recall`` = recovered / objects. Per class (:data:`AUDIT_CLASSES`: the ten detection classes and
  ``other``): ``audit_objects_<class>``, ``audit_recovered_<class>``; per distance band (xy distance of the box
  centre): ``audit_objects_0_20``, ``..._20_40``, ``..._40_plus`` and the ``audit_recovered_*`` of each.
* ``audit_over_segmented`` (objects split over >= 2 regions) -> ``audit_over_seg`` = / objects.
* ``audit_object_regions`` (regions holding >= ``cover_share`` of some counted object), ``audit_under_segmented``
  (of those, covering >= 2 objects) -> ``audit_under_seg``.
* ``audit_regions``, ``audit_background_regions``; ``audit_purity_points`` (points of the non-background regions
  in their majority box) and ``audit_fg_region_points`` (points of those regions) -> ``audit_purity``
  (point-weighted purity).
* ``audit_object_points`` (points in the boxes of the counted objects), ``audit_ground_points`` (of them,
  labelled ground) -> ``audit_ground_share``.
* ``audit_miss_<kind>``: missed objects by kind (:data:`shared.region_quality.MISS_KINDS`).

The per-scene table (:func:`data_catalog.tables.scene_table`) holds the same columns, summed over the scene's
audited sweeps and the rates recomputed from the sums (:func:`aggregate`), null for a scene with none.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.region_quality import (DETECTION_CLASSES, DISTANCE_BANDS, MISS_KINDS, OTHER, Boxes, RecoveryRule,
                                   SweepQuality, classify_misses, evaluate_sweep)

#: Classes with their own columns (objects of a class outside them count as ``other``).
AUDIT_CLASSES: tuple[str, ...] = (*DETECTION_CLASSES, OTHER)
#: Column suffix of each distance band of :data:`shared.region_quality.DISTANCE_BANDS`.
BAND_SUFFIX: Mapping[str, str] = {"0-20": "0_20", "20-40": "20_40", "40+": "40_plus"}

_BASE_COUNTS = ("audit_objects", "audit_recovered", "audit_over_segmented", "audit_regions",
                "audit_background_regions", "audit_object_regions", "audit_under_segmented", "audit_purity_points",
                "audit_fg_region_points", "audit_object_points", "audit_ground_points")
#: Integer columns (sums over sweeps).
COUNT_COLUMNS: tuple[str, ...] = (
    *_BASE_COUNTS,
    *(f"audit_{w}_{c}" for c in AUDIT_CLASSES for w in ("objects", "recovered")),
    *(f"audit_{w}_{BAND_SUFFIX[b]}" for b, _, _ in DISTANCE_BANDS for w in ("objects", "recovered")),
    *(f"audit_miss_{k}" for k in MISS_KINDS),
)
#: Rate columns: name -> (numerator, denominator) count columns.
RATES: Mapping[str, tuple[str, str]] = {
    "audit_recall": ("audit_recovered", "audit_objects"),
    "audit_purity": ("audit_purity_points", "audit_fg_region_points"),
    "audit_over_seg": ("audit_over_segmented", "audit_objects"),
    "audit_under_seg": ("audit_under_segmented", "audit_object_regions"),
    "audit_ground_share": ("audit_ground_points", "audit_object_points"),
}
RATE_COLUMNS: tuple[str, ...] = tuple(RATES)
#: Every audit column of the per-sweep table, in order.
SWEEP_COLUMNS: tuple[str, ...] = (*COUNT_COLUMNS, *RATE_COLUMNS, "t_audit_ms")
#: Every audit column of the per-scene table, in order.
SCENE_COLUMNS: tuple[str, ...] = (*COUNT_COLUMNS, *RATE_COLUMNS, "audited_sweeps")


def schema_fields(columns: Sequence[str]) -> list[tuple[str, Any]]:
    """(name, pyarrow type) of audit ``columns`` (counts int64, the rest float64)."""
    import pyarrow as pa

    ints = set(COUNT_COLUMNS) | {"audited_sweeps"}
    return [(c, pa.int64() if c in ints else pa.float64()) for c in columns]


def _ratio(a, b) -> float | None:
    return float(a) / float(b) if b else None


def rates(counts: Mapping[str, int]) -> dict[str, float | None]:
    """The rate columns of a row of counts (ratios of sums; None where the denominator is 0)."""
    return {name: _ratio(counts[a], counts[b]) for name, (a, b) in RATES.items()}


def quality_columns(q: SweepQuality, rule: RecoveryRule = RecoveryRule()) -> dict[str, Any]:
    """The audit columns of one sweep's :class:`~shared.region_quality.SweepQuality` (``t_audit_ms`` left out)."""
    obj, reg = q.objects, q.regions
    c = obj.counted
    rec = c & obj.recovered
    cls = np.where(np.isin(obj.cls, DETECTION_CLASSES), obj.cls, OTHER)
    fg = ~reg.background
    kinds = classify_misses(obj, rule)
    out: dict[str, Any] = {
        "audit_objects": int(c.sum()), "audit_recovered": int(rec.sum()),
        "audit_over_segmented": int(obj.over_segmented.sum()), "audit_regions": len(reg),
        "audit_background_regions": int(reg.background.sum()), "audit_object_regions": int((reg.n_boxes >= 1).sum()),
        "audit_under_segmented": int(reg.under_segmented.sum()),
        "audit_purity_points": int(reg.n_majority[fg].sum()), "audit_fg_region_points": int(reg.n_points[fg].sum()),
        "audit_object_points": int(obj.n_points[c].sum()), "audit_ground_points": int(obj.n_ground[c].sum()),
    }
    for k in AUDIT_CLASSES:
        m = c & (cls == k)
        out[f"audit_objects_{k}"], out[f"audit_recovered_{k}"] = int(m.sum()), int((m & rec).sum())
    for band, lo, hi in DISTANCE_BANDS:
        m = c & (obj.distance >= lo) & (obj.distance < hi)
        s = BAND_SUFFIX[band]
        out[f"audit_objects_{s}"], out[f"audit_recovered_{s}"] = int(m.sum()), int((m & rec).sum())
    for k in MISS_KINDS:
        out[f"audit_miss_{k}"] = int((kinds == k).sum())
    out.update(rates(out))
    return out


def stored_points(xyz: np.ndarray) -> np.ndarray:
    """The x, y, z of ``xyz`` (N, >= 3) as the store holds them: quantised to centimetres and back (float32), a
    non-finite point at the origin (what the reader returns)."""
    from data_catalog.format import dequantise_xyz, quantise_xyz

    q, _, _ = quantise_xyz(xyz)
    return dequantise_xyz(q)


def audit_sweep(xyz: np.ndarray, region: np.ndarray, ground: np.ndarray, boxes: Boxes,
                dropped_reason: np.ndarray | None = None, rule: RecoveryRule = RecoveryRule()) -> dict[str, Any]:
    """The audit columns of one keyframe: ``boxes`` (sensor frame) against the points as stored
    (:func:`stored_points` of ``xyz`` (N, >= 3)), ``region`` (N,) ids (-1 none), ``ground`` (N,) bool and, when
    known, ``dropped_reason`` (N,) (0: not in a dropped cluster; lets the misses of dropped clusters be told from
    DBSCAN noise). ``t_audit_ms`` is the time it took."""
    t0 = time.perf_counter()
    q = evaluate_sweep(stored_points(xyz), np.asarray(region, np.int64), boxes, ground=np.asarray(ground, bool),
                       dropped_reason=dropped_reason, rule=rule)
    out = quality_columns(q, rule)
    out["t_audit_ms"] = (time.perf_counter() - t0) * 1e3
    return out


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The audit columns of several sweeps' rows (a scene, a version) or scenes' rows: counts summed over the
    audited rows (``audit_objects`` not null), rates from the sums, ``audited_sweeps`` (a sweep row counts 1, a
    scene row its own); every column None when no row is audited."""
    audited = [r for r in rows if r.get("audit_objects") is not None]
    if not audited:
        return {c: None for c in SCENE_COLUMNS}
    out: dict[str, Any] = {c: int(sum(r[c] for r in audited)) for c in COUNT_COLUMNS}
    out.update(rates(out))
    out["audited_sweeps"] = int(sum(r.get("audited_sweeps") or 1 for r in audited))  # scene rows carry theirs
    return out


@dataclass(frozen=True)
class AuditSummary:
    """The audit of a set of sweeps, for ``calico catalog stats|report|diff``: ``overall`` (the aggregated
    columns), ``by_class`` / ``by_band``: name -> (objects, recovered, recall or None), only those with objects;
    ``misses``: kind -> count (non-zero)."""

    overall: dict[str, Any]
    by_class: dict[str, tuple[int, int, float | None]]
    by_band: dict[str, tuple[int, int, float | None]]
    misses: dict[str, int]

    @property
    def audited(self) -> bool:
        return self.overall.get("audited_sweeps") is not None

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall, "by_class": self.by_class, "by_band": self.by_band, "misses": self.misses}


def summary(rows: Iterable[Mapping[str, Any]]) -> AuditSummary:
    """:class:`AuditSummary` of sweeps-table rows (or scene-table rows: the counts add up the same way)."""
    o = aggregate(rows)
    if o["audited_sweeps"] is None:
        return AuditSummary(o, {}, {}, {})

    def table(keys: Iterable[tuple[str, str]]) -> dict[str, tuple[int, int, float | None]]:
        return {name: (o[f"audit_objects_{s}"], o[f"audit_recovered_{s}"],
                       _ratio(o[f"audit_recovered_{s}"], o[f"audit_objects_{s}"]))
                for name, s in keys if o[f"audit_objects_{s}"]}

    return AuditSummary(o, table((c, c) for c in AUDIT_CLASSES), table(BAND_SUFFIX.items()),
                        {k: o[f"audit_miss_{k}"] for k in MISS_KINDS if o[f"audit_miss_{k}"]})


def worst_sweeps(rows: Sequence[Mapping[str, Any]], n: int, min_objects: int = 3) -> list[Mapping[str, Any]]:
    """The ``n`` audited sweeps with the lowest recall among those with at least ``min_objects`` counted objects
    (ties: more objects first, then scene and index)."""
    cand = [r for r in rows if r.get("audit_objects") is not None and r["audit_objects"] >= min_objects]
    return sorted(cand, key=lambda r: (r["audit_recall"], -r["audit_objects"], r["scene"], r["index"]))[:n]


def fmt_rate(v: float | None, digits: int = 3) -> str:
    """A rate for printing: ``-`` for None or NaN."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
