"""A static HTML report of one store version: spec, configuration, lineage, counts, per-scene statistics,
errors, plots and bird's-eye pictures of the regions of chosen sweeps.

>>> path = write_report("STORE", version=None, out_dir="STORE/reports")   # the latest version
>>> path                                                                     # STORE/reports/<id>.html

The page is one self-contained file: the pictures are PNGs rendered with matplotlib's Agg backend and embedded
as ``data:image/png;base64`` URIs; there is no JavaScript, no external CSS or font, nothing fetched from the
network. Every string taken from the store (scene names, tokens, file names, error reasons, configuration
values, lineage) is HTML-escaped.

Elements carry ``id`` / ``data-*`` attributes so that a test (or a script) can find them without parsing the
layout: ``table#counts`` (``td[data-key]``), ``table#scenes`` (rows ``tr[data-scene]``, cells ``td[data-col]``,
``data-value`` holds the exact number), ``table#errors``, ``figure.plot[data-plot]`` and ``figure.bev``
(``data-scene``, ``data-index``, ``data-token``, ``data-points``, ``data-regions``).

When the version was audited (:mod:`data_catalog.audit`: keyframes of an annotated dataroot), the section
``#audit-title`` holds ``table#audit`` (``td[data-key]`` with ``data-value``: recall, purity, over- and
under-segmentation, ground share over every audited keyframe), ``table#audit-classes`` and ``table#audit-bands``
(rows ``tr[data-class]`` / ``tr[data-band]``: objects, recovered, recall), ``table#audit-misses`` and the worst
sweeps (lowest recall, at least :data:`WORST_MIN_OBJECTS` objects) as ``figure.bev-audit`` (``data-token``,
``data-recall``, ``data-objects``, ``data-missed``, ``data-boxes``): regions coloured, annotated boxes drawn
(recovered green, missed red with a cross, objects with too few points grey). The boxes come from the version's
dataroot through the devkit; without it the pictures are drawn without boxes and the page says so.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_catalog.reader import StoreVersion, open_version
from shared.errors import ConfigError, InputError

#: Per-scene columns shown in the report (name, format).
SCENE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sweeps", "{:,}"), ("errors", "{:,}"), ("points", "{:,}"), ("ground_fraction", "{:.3f}"),
    ("noise_fraction", "{:.3f}"), ("clusters_mean", "{:.1f}"), ("regions_kept_mean", "{:.1f}"),
    ("regions_total", "{:,}"), ("region_size_p50_median", "{:.0f}"), ("t_total_ms", "{:.0f}"),
    ("bytes_per_point", "{:.2f}"),
)

#: At most this many error rows are written (the count is always given in full).
MAX_ERROR_ROWS = 500

#: Box plots per scene up to this many scenes; beyond, one point per scene (mean) over the scene index.
MAX_BOX_SCENES = 40

#: A sweep is among the worst of the audit only with at least this many counted objects.
WORST_MIN_OBJECTS = 3


@dataclass(frozen=True)
class ReportConfig:
    """What to draw.

    sweeps: sweep tokens to draw as bird's-eye pictures (empty: ``n_sweeps`` chosen by :func:`pick_sweeps`);
    n_sweeps: number of sweeps picked when ``sweeps`` is empty (0: none); n_worst: the audit's worst sweeps
    drawn (0: none); bev_range_m: half width of the
    bird's-eye window in metres (points outside are not drawn); max_ground_points: ground points drawn per
    picture at most (a deterministic subsample; regions are always drawn whole); dpi: of every figure.
    """

    sweeps: tuple[str, ...] = ()
    n_sweeps: int = 4
    n_worst: int = 4
    bev_range_m: float = 40.0
    max_ground_points: int = 40_000
    dpi: int = 80

    def __post_init__(self):
        if self.n_sweeps < 0:
            raise ConfigError("n_sweeps", self.n_sweeps, "must be >= 0")
        if self.n_worst < 0:
            raise ConfigError("n_worst", self.n_worst, "must be >= 0")
        if not self.bev_range_m > 0:
            raise ConfigError("bev_range_m", self.bev_range_m, "must be > 0")
        if self.max_ground_points < 0:
            raise ConfigError("max_ground_points", self.max_ground_points, "must be >= 0")
        if not 20 <= self.dpi <= 300:
            raise ConfigError("dpi", self.dpi, "must be in [20, 300]")


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def pick_sweeps(sweeps_rows: Sequence[dict], n: int) -> list[tuple[str, int, str]]:
    """``n`` sweeps spread over the version: (scene, index, token), one per scene first (scenes evenly spaced),
    then the middle sweeps of the scenes again. ``sweeps_rows``: rows of the sweeps table (scene, index, token),
    in store order."""
    by_scene: dict[str, list[dict]] = {}
    for r in sweeps_rows:
        by_scene.setdefault(r["scene"], []).append(r)
    scenes = sorted(by_scene)
    if n <= 0 or not scenes:
        return []
    picked: list[tuple[str, int, str]] = []
    seen = set()
    rounds = 0
    while len(picked) < n and rounds < 64:
        k = min(n - len(picked), len(scenes))
        for si in np.unique(np.linspace(0, len(scenes) - 1, k).round().astype(int)):
            rows = by_scene[scenes[si]]
            # round 0: the middle sweep, then spread around it
            j = (len(rows) // 2 + rounds * max(1, len(rows) // 3)) % len(rows)
            r = rows[j]
            if r["token"] not in seen:
                seen.add(r["token"])
                picked.append((r["scene"], int(r["index"]), r["token"]))
        rounds += 1
    return picked[:n]


def region_sizes(v: StoreVersion, progress: Callable[[Iterable], Iterable] = iter) -> np.ndarray:
    """(R,) int64 points per region over every sweep of the committed shards (the ``region_points`` arrays;
    only those are read)."""
    from data_catalog.layout import shard_dir
    from data_catalog.reader import Shard

    parts = [np.asarray(Shard(shard_dir(v.path, s)).array("region_points"), np.int64)
             for s in progress(v.scenes())]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


def _png(fig) -> str:
    """A matplotlib figure as a base64 PNG string (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_region_sizes(sizes: np.ndarray, dpi: int) -> str:
    """Histogram of points per region (log-spaced bins). Returns a base64 PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=dpi)
    if sizes.size:
        hi = max(2.0, float(sizes.max()) + 1)
        bins = np.unique(np.geomspace(1, hi, 40).round())
        ax.hist(sizes, bins=bins, color="#3b75af", edgecolor="white", linewidth=0.4)
        ax.set_xscale("log")
        ax.axvline(float(np.median(sizes)), color="#c44e52", ls="--", lw=1,
                   label=f"median {np.median(sizes):.0f}")
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no regions", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("points per region")
    ax.set_ylabel("regions")
    ax.set_title(f"cluster (region) sizes: {sizes.size:,} regions")
    return _png(fig)


def plot_per_scene(rows: Sequence[dict], column: str, label: str, dpi: int) -> str:
    """Box plot over sweeps of ``column`` per scene (up to :data:`MAX_BOX_SCENES` scenes), else the per-scene
    mean with the 10-90 % range over the scene index. ``rows``: sweeps table rows. Returns a base64 PNG."""
    plt = _plt()
    by_scene: dict[str, list[float]] = {}
    for r in rows:
        val = r[column]
        if val is not None and np.isfinite(val):
            by_scene.setdefault(r["scene"], []).append(float(val))
    scenes = sorted(by_scene)
    width = min(14.0, max(5.0, 0.45 * len(scenes) + 2)) if len(scenes) <= MAX_BOX_SCENES else 10.0
    fig, ax = plt.subplots(figsize=(width, 3.6), dpi=dpi)
    if not scenes:
        ax.text(0.5, 0.5, "no sweeps", ha="center", va="center", transform=ax.transAxes)
    elif len(scenes) <= MAX_BOX_SCENES:
        ax.boxplot([by_scene[s] for s in scenes], showmeans=True, widths=0.6)
        ax.set_xticks(range(1, len(scenes) + 1), scenes, rotation=60 if len(scenes) > 6 else 0,
                      ha="right" if len(scenes) > 6 else "center", fontsize=8)
    else:
        x = np.arange(len(scenes))
        mean = np.array([np.mean(by_scene[s]) for s in scenes])
        lo = np.array([np.percentile(by_scene[s], 10) for s in scenes])
        hi = np.array([np.percentile(by_scene[s], 90) for s in scenes])
        ax.fill_between(x, lo, hi, color="#3b75af", alpha=0.25, label="10-90 % over sweeps")
        ax.plot(x, mean, ".", color="#3b75af", ms=3, label="mean")
        ax.set_xlabel("scene (sorted by name)")
        ax.legend(frameon=False)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per scene ({len(scenes)} scene(s), over sweeps)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def region_colours(ids: np.ndarray) -> np.ndarray:
    """(K, 4) float RGBA, a distinct colour per region id (golden-ratio hues, so neighbours differ)."""
    import matplotlib.colors as mcolors

    ids = np.asarray(ids, np.int64)
    hue = (ids * 0.618033988749895) % 1.0
    sat = 0.65 + 0.3 * ((ids * 7) % 3) / 2
    val = 0.95 - 0.2 * ((ids * 5) % 2)
    rgb = mcolors.hsv_to_rgb(np.stack([hue, sat, val], axis=1)) if ids.size else np.zeros((0, 3))
    return np.concatenate([rgb, np.ones((ids.size, 1))], axis=1)


#: Edge colours of the audit's boxes: recovered, missed, not counted (too few points).
BOX_COLOURS = {"recovered": "#2ca02c", "missed": "#d62728", "uncounted": "#999999"}


def box_corners(boxes) -> np.ndarray:
    """(M, 4, 2) x, y of the bottom corners of :class:`shared.region_quality.Boxes`, in order around the box."""
    w, l = boxes.size[:, 0] / 2, boxes.size[:, 1] / 2
    local = np.stack([np.stack([l, w], 1), np.stack([-l, w], 1), np.stack([-l, -w], 1), np.stack([l, -w], 1)], 1)
    local = np.concatenate([local, np.zeros(local.shape[:2] + (1,))], axis=2)  # (M, 4, 3) box frame
    return (np.einsum("mij,mkj->mki", boxes.rotation, local) + boxes.center[:, None, :])[:, :, :2]


def plot_bev(xyz: np.ndarray, ground: np.ndarray, finite: np.ndarray, region: np.ndarray, title: str,
             cfg: ReportConfig, boxes=None, status: Sequence[str] | None = None) -> str:
    """Bird's-eye picture of one sweep: ground grey, points of no region light, each region its own colour;
    with ``boxes`` (:class:`shared.region_quality.Boxes`), their outlines coloured by ``status`` (M,) (a key of
    :data:`BOX_COLOURS`), missed ones with a cross at the centre.

    xyz (N, 3) float32 metres; ground, finite (N,) bool; region (N,) int16 (-1: none). Returns a base64 PNG.
    """
    plt = _plt()
    r = cfg.bev_range_m
    inside = finite & (np.abs(xyz[:, 0]) <= r) & (np.abs(xyz[:, 1]) <= r)
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=cfg.dpi)
    g = np.flatnonzero(inside & ground)
    if g.size > cfg.max_ground_points:
        g = g[np.linspace(0, g.size - 1, cfg.max_ground_points).astype(np.int64)]
    ax.scatter(xyz[g, 0], xyz[g, 1], s=0.8, c="#a8a8a8", linewidths=0, rasterized=True)
    other = np.flatnonzero(inside & ~ground & (region < 0))
    ax.scatter(xyz[other, 0], xyz[other, 1], s=0.4, c="#404040", alpha=0.35, linewidths=0, rasterized=True)
    reg = np.flatnonzero(inside & (region >= 0))
    if reg.size:
        ids, inv = np.unique(region[reg], return_inverse=True)
        ax.scatter(xyz[reg, 0], xyz[reg, 1], s=2.5, c=region_colours(ids)[inv], linewidths=0, rasterized=True)
    if boxes is not None and len(boxes):
        for corners, st_ in zip(box_corners(boxes), status):
            ring = np.vstack([corners, corners[:1]])
            ax.plot(ring[:, 0], ring[:, 1], color=BOX_COLOURS[st_], lw=1.6 if st_ == "missed" else 0.8)
        missed = np.asarray(status) == "missed"
        ax.plot(boxes.center[missed, 0], boxes.center[missed, 1], "x", color=BOX_COLOURS["missed"], ms=7, mew=1.6)
    ax.plot([0], [0], marker="^", color="red", ms=6)
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, LiDAR frame)")
    ax.set_ylabel("y (m)")
    ax.set_title(title, fontsize=9)
    return _png(fig)


# ----------------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 7px} th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto;max-height:420px}
figure{display:inline-block;margin:6px;vertical-align:top} figcaption{font-size:12px;max-width:520px}
.muted{color:#777}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _kv_table(tid: str, items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f'<tr><th>{_e(k)}</th><td data-key="{_e(k)}">{_e(v)}</td></tr>' for k, v in items)
    return f'<table id="{tid}">{rows}</table>'


def _fmt(fmt: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return fmt.format(v)


def _non_default_html(config: dict, defaults: Mapping[str, Any] | None) -> str:
    """The parameters of ``config`` that differ from ``defaults`` (the preprocessing defaults, which the caller
    passes: data_catalog does not import preprocess), as HTML."""
    from data_catalog.version import non_default

    if defaults is None:
        return "(not compared: no defaults given)"
    nd = non_default(defaults, config)
    return ", ".join(f"<code>{_e(k)}={_e(val)}</code>" for k, val in nd.items()) or "(defaults)"


def _kv_values(tid: str, items: Iterable[tuple[str, Any, str]]) -> str:
    """A key-value table whose cells carry the exact value (``data-value``) beside the formatted one."""
    rows = "".join(f'<tr><th>{_e(k)}</th><td class="num" data-key="{_e(k)}" data-value="{_e(v)}">'
                   f"{_e(_fmt(f, v))}</td></tr>" for k, v, f in items)
    return f'<table id="{tid}">{rows}</table>'


def _recall_table(tid: str, attr: str, rows: Mapping[str, tuple[int, int, float | None]]) -> str:
    body = "".join(f'<tr data-{attr}="{_e(k)}"><td>{_e(k)}</td><td class="num">{n:,}</td><td class="num">{r:,}'
                   f'</td><td class="num" data-value="{_e(rec)}">{_e(_fmt("{:.3f}", rec))}</td></tr>'
                   for k, (n, r, rec) in rows.items())
    return (f'<table id="{tid}"><tr><th>{_e(attr)}</th><th>objects</th><th>recovered</th><th>recall</th></tr>'
            f"{body}</table>")


def audit_boxes(v: StoreVersion) -> tuple[Callable[[str], Any] | None, str]:
    """(token -> :class:`shared.region_quality.Boxes` of that keyframe in its LiDAR frame, read from the
    version's dataroot through the devkit; '') or (None, why not) when the dataroot cannot be opened."""
    ds = v.info.get("dataset") or {}
    if not ds.get("dataroot") or not ds.get("version"):
        return None, "version.json names no dataroot"
    from shared.nuscenes_io import open_nuscenes
    from shared.region_quality import boxes_from_nuscenes

    try:
        nusc = open_nuscenes(ds["dataroot"], ds["version"], validate=False)
    except InputError as exc:
        return None, f"the dataroot cannot be opened ({exc})"
    return (lambda token: boxes_from_nuscenes(nusc, token)), ""


def box_status(xyz: np.ndarray, region: np.ndarray, ground: np.ndarray, boxes) -> np.ndarray:
    """(M,) ``recovered`` / ``missed`` / ``uncounted`` of each box against a stored sweep (the audit's rule)."""
    from shared.region_quality import evaluate_sweep

    obj = evaluate_sweep(xyz, np.asarray(region, np.int64), boxes, ground=np.asarray(ground, bool)).objects
    return np.where(~obj.counted, "uncounted", np.where(obj.recovered, "recovered", "missed"))


def audit_html(v: StoreVersion, sweeps: Sequence[dict], cfg: ReportConfig,
               wrap: Callable[[Iterable, str], Iterable]) -> list[str]:
    """The audit section of the page (see the module docstring)."""
    from data_catalog import audit

    out = ['<h2 id="audit-title">Object recovery (audit)</h2>']
    summ = audit.summary(sweeps)
    if not summ.audited:
        out.append('<p id="no-audit">Not audited: the version has no annotated keyframes (the dataroot has no '
                   "<code>sample_annotation</code> rows, or the store was written before the audit).</p>")
        return out
    o = summ.overall
    out.append('<p class="muted">Annotated objects with at least 20 points in their box; recovered when 80 % of '
               "their points above the box bottom + 0.3 m lie in one region that lies at least half inside the "
               "box (shared/region_quality.py); rates are ratios of sums over every audited keyframe.</p>")
    out.append(_kv_values("audit", [
        ("audited_sweeps", o["audited_sweeps"], "{:,}"), ("objects", o["audit_objects"], "{:,}"),
        ("recovered", o["audit_recovered"], "{:,}"), ("recall", o["audit_recall"], "{:.3f}"),
        ("purity", o["audit_purity"], "{:.3f}"), ("over_segmentation", o["audit_over_seg"], "{:.3f}"),
        ("under_segmentation", o["audit_under_seg"], "{:.3f}"), ("ground_share", o["audit_ground_share"], "{:.3f}"),
    ]))
    out.append("<h3>Recall by class</h3>" + _recall_table("audit-classes", "class", summ.by_class))
    out.append("<h3>Recall by distance (m)</h3>" + _recall_table("audit-bands", "band", summ.by_band))
    out.append('<h3>Missed objects by kind</h3><table id="audit-misses"><tr><th>kind</th><th>objects</th></tr>'
               + "".join(f'<tr data-kind="{_e(k)}"><td>{_e(k)}</td><td class="num">{n:,}</td></tr>'
                         for k, n in summ.misses.items()) + "</table>")
    worst = audit.worst_sweeps(sweeps, cfg.n_worst, WORST_MIN_OBJECTS)
    out.append(f'<h3 id="audit-worst-title">Worst sweeps ({len(worst)}: lowest recall, at least '
               f"{WORST_MIN_OBJECTS} objects)</h3>")
    get_boxes, why = audit_boxes(v) if worst else (None, "")
    if worst and get_boxes is None:
        out.append(f'<p id="audit-no-boxes">Drawn without boxes: {_e(why)}.</p>')
    out.append('<p class="muted">Regions coloured; boxes green: recovered, red: missed (a cross at the centre), '
               "grey: fewer than 20 points (not counted).</p>")
    for r in wrap(worst, "worst sweeps"):
        sw = v.scene(r["scene"]).sweep(int(r["index"]), arrays=("xyz", "flags", "region"))
        xyz, region = sw.xyz, np.asarray(sw.region)
        boxes = get_boxes(r["token"]) if get_boxes is not None else None
        status = box_status(xyz, region, sw.ground, boxes) if boxes is not None else None
        missed = int((status == "missed").sum()) if status is not None else r["audit_objects"] - r["audit_recovered"]
        b64 = plot_bev(xyz, sw.ground, sw.finite, region, f"{r['scene']} #{r['index']}: recall "
                       f"{r['audit_recall']:.2f} ({r['audit_recovered']}/{r['audit_objects']})", cfg, boxes, status)
        out.append(f'<figure class="bev-audit" data-scene="{_e(r["scene"])}" data-index="{r["index"]}" '
                   f'data-token="{_e(r["token"])}" data-recall="{r["audit_recall"]}" '
                   f'data-objects="{r["audit_objects"]}" data-missed="{missed}" '
                   f'data-boxes="{0 if boxes is None else len(boxes)}">'
                   f'{_img(b64, "audit " + str(r["scene"]) + " " + str(r["index"]))}'
                   f'<figcaption>{_e(r["scene"])} sweep {r["index"]} <code>{_e(r["token"])}</code>: recall '
                   f'{r["audit_recall"]:.3f}, {missed} of {r["audit_objects"]} object(s) missed, purity '
                   f'{_e(_fmt("{:.3f}", r["audit_purity"]))}</figcaption></figure>')
    return out


@dataclass(frozen=True)
class ReportResult:
    path: Path
    version: str
    sweeps_drawn: tuple[tuple[str, int, str], ...]
    seconds: float


def build_html(v: StoreVersion, cfg: ReportConfig = ReportConfig(),
               progress: Callable[[Iterable, str], Iterable] | None = None,
               defaults: Mapping[str, Any] | None = None) -> tuple[str, list]:
    """The report page of version ``v`` (a string) and the sweeps drawn [(scene, index, token)].

    ``progress(iterable, description)`` wraps the slow loops (reading shards, drawing sweeps). ``defaults``: the
    preprocessing configuration's defaults (``preprocess.sweep.SweepConfig().to_dict()``), to list the
    version's non-default parameters."""
    wrap = progress or (lambda it, desc: it)
    sweeps = v.sweeps_table().to_pylist()
    errors = v.errors_table().to_pylist()
    scenes = v.scenes_table().to_pylist()
    if cfg.sweeps:
        tok = {r["token"]: r for r in sweeps}
        unknown = [t for t in cfg.sweeps if t not in tok]
        if unknown:
            raise InputError(f"sweep token(s) not in version {v.id}: {', '.join(unknown)}", v.path)
        chosen = [(tok[t]["scene"], int(tok[t]["index"]), t) for t in cfg.sweeps]
    else:
        chosen = pick_sweeps(sweeps, cfg.n_sweeps)

    spec, info = v.spec, v.info
    lin = info.get("lineage", {}) or {}
    counts = {"scenes_committed": len(v.scenes()), "scenes_expected": len(v.expected_scenes()),
              "sweeps": len(sweeps), "errors": len(errors),
              "points": int(sum(r["points"] for r in sweeps))}
    missing = sorted(set(v.expected_scenes()) - set(v.scenes()))

    parts: list[str] = []
    add = parts.append
    add(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<title>calico store version {_e(v.id)}</title><style>{_CSS}</style></head><body>')
    add(f'<h1 id="title">Store version <code>{_e(v.id)}</code></h1>')
    add(f'<p class="muted">{_e(v.path)} &middot; report written '
        f'{_e(time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()))}</p>')

    add('<h2 id="summary">Summary</h2>')
    add(_kv_table("spec", [
        ("created", info.get("created", "")), ("dataset_version", spec.get("dataset_version")),
        ("manifest_sha256", spec.get("manifest_sha256")), ("sweeps", spec.get("sweeps")),
        ("seed", spec.get("seed")), ("code_sha256", spec.get("code_sha256")),
        ("format_version", spec.get("format_version")),
    ]))
    add("<p>Non-default parameters: " + _non_default_html(v.config, defaults) + "</p>")
    add('<h2 id="counts-title">Counts</h2>')
    add(_kv_table("counts", [(k, f"{val:,}") for k, val in counts.items()]))
    if missing:
        add(f'<p id="missing">Missing scenes (expected, not committed): {_e(", ".join(missing))}</p>')

    add('<h2 id="scenes-title">Per-scene statistics</h2><table id="scenes"><tr><th>scene</th>'
        + "".join(f"<th>{_e(c)}</th>" for c, _ in SCENE_COLUMNS) + "</tr>")
    for r in scenes:
        cells = "".join(f'<td class="num" data-col="{c}" data-value="{_e(r[c])}">{_e(_fmt(f, r[c]))}</td>'
                        for c, f in SCENE_COLUMNS)
        add(f'<tr data-scene="{_e(r["scene"])}"><td>{_e(r["scene"])}</td>{cells}</tr>')
    add("</table>")

    add(f'<h2 id="errors-title">Errors ({len(errors):,})</h2>')
    if errors:
        add('<table id="errors"><tr><th>scene</th><th>token</th><th>stage</th><th>file</th><th>reason</th></tr>')
        for r in errors[:MAX_ERROR_ROWS]:
            add("<tr>" + "".join(f"<td>{_e(r[k] if r[k] is not None else '')}</td>"
                                 for k in ("scene", "token", "stage", "file", "reason")) + "</tr>")
        add("</table>")
        if len(errors) > MAX_ERROR_ROWS:
            add(f"<p>... {len(errors) - MAX_ERROR_ROWS:,} more in errors.parquet</p>")
    else:
        add('<p id="no-errors">No errors: every sweep went through.</p>')

    add('<h2 id="plots-title">Plots</h2>')
    sizes = region_sizes(v, progress=lambda it: wrap(it, "region sizes"))
    for key, b64, cap in (
            ("region_sizes", plot_region_sizes(sizes, cfg.dpi),
             f"Points per region over all {len(sweeps):,} sweeps ({sizes.size:,} regions)."),
            ("ground_fraction", plot_per_scene(sweeps, "ground_fraction", "ground fraction", cfg.dpi),
             "Ground fraction of each sweep (ground / finite points), per scene."),
            ("clusters", plot_per_scene(sweeps, "clusters", "clusters", cfg.dpi),
             "DBSCAN clusters of each sweep, per scene."),
            ("regions_kept", plot_per_scene(sweeps, "regions_kept", "regions kept", cfg.dpi),
             "Regions kept after semantic pooling, per sweep, per scene.")):
        add(f'<figure class="plot" data-plot="{key}">{_img(b64, key)}<figcaption>{_e(cap)}</figcaption></figure>')

    parts.extend(audit_html(v, sweeps, cfg, wrap))

    add(f'<h2 id="bev-title">Bird\'s-eye view of regions ({len(chosen)} sweep(s))</h2>')
    add('<p class="muted">Ground grey, points of no region dark, each region its own colour; '
        f'+-{cfg.bev_range_m:g} m around the sensor (red triangle).</p>')
    for scene, idx, token in wrap(chosen, "bird's-eye pictures"):
        sw = v.scene(scene).sweep(idx, arrays=("xyz", "flags", "region"))
        xyz, region = sw.xyz, np.asarray(sw.region)
        n_regions = int(np.unique(region[region >= 0]).size)
        b64 = plot_bev(xyz, sw.ground, sw.finite, region, f"{scene} #{idx}: {len(sw):,} points, "
                       f"{n_regions} regions", cfg)
        add(f'<figure class="bev" data-scene="{_e(scene)}" data-index="{idx}" data-token="{_e(token)}" '
            f'data-points="{len(sw)}" data-regions="{n_regions}">{_img(b64, f"bev {scene} {idx}")}'
            f'<figcaption>{_e(scene)} sweep {idx} <code>{_e(token)}</code>: {len(sw):,} points, '
            f'{n_regions} regions, ground fraction {sw.ground[sw.finite].mean() if sw.finite.any() else 0:.3f}'
            f'</figcaption></figure>')

    add('<h2 id="config-title">Configuration</h2>')
    add(f'<pre id="config">{_e(json.dumps(v.config, indent=1, sort_keys=True))}</pre>')
    add('<h2 id="lineage-title">Lineage</h2>')
    add(_kv_table("lineage", [("command", " ".join(map(str, lin.get("command", []) or []))),
                              ("host", lin.get("host", "")), ("user", lin.get("user", "")),
                              ("git_commit", lin.get("git_commit", "")),
                              *[(k, val) for k, val in (lin.get("packages", {}) or {}).items()]]))
    add(f'<details><summary>version.json</summary><pre id="version-json">'
        f'{_e(json.dumps(info, indent=1, sort_keys=True, default=str))}</pre></details>')
    add("</body></html>")
    return "\n".join(parts), chosen


def write_report(store: str | Path, version: str | None = None, out_dir: str | Path | None = None,
                 cfg: ReportConfig = ReportConfig(), progress: bool = False,
                 defaults: Mapping[str, Any] | None = None) -> ReportResult:
    """Write ``<out_dir>/<id>.html`` (default ``out_dir``: ``STORE/reports``) for version ``version`` (an id or
    unique prefix; the latest when None). The file is written aside and renamed. ``progress``: tqdm bars on
    stderr for the slow loops. ``defaults``: see :func:`build_html`."""
    t0 = time.perf_counter()
    v = open_version(store, version)
    out = Path(out_dir) if out_dir is not None else Path(store) / "reports"
    out.mkdir(parents=True, exist_ok=True)
    wrap = None
    if progress:
        from tqdm import tqdm

        wrap = (lambda it, desc: tqdm(it, desc=desc, unit="", leave=False, delay=0.5))
    page, chosen = build_html(v, cfg, progress=wrap, defaults=defaults)
    path = out / f"{v.id}.html"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return ReportResult(path=path, version=v.id, sweeps_drawn=tuple(chosen), seconds=time.perf_counter() - t0)


INDEX = "index.html"


def write_index(store: str | Path, out_dir: str | Path | None = None,
                defaults: Mapping[str, Any] | None = None) -> Path:
    """Write ``<out_dir>/index.html`` (default ``STORE/reports``): every version of the store, oldest first, with
    its dataset, sweep selection, seed, non-default parameters, scenes committed / expected, and a link to its
    page when ``<out_dir>/<id>.html`` exists. Self-contained like the pages (no script, nothing fetched); written
    aside and renamed. ``calico catalog report`` rewrites it after each page. ``defaults``: see
    :func:`build_html`."""
    from data_catalog.layout import committed_scenes, version_dir
    from data_catalog.versions import list_versions

    out = Path(out_dir) if out_dir is not None else Path(store) / "reports"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for doc in list_versions(store):
        vid, spec = doc["id"], doc.get("spec", {})
        vdir = version_dir(store, vid)
        page = out / f"{vid}.html"
        link = f'<a href="{_e(page.name)}">{_e(vid)}</a>' if page.is_file() else _e(vid)
        rows.append(f'<tr data-version="{_e(vid)}" data-page="{int(page.is_file())}"><td><code>{link}</code></td>'
                    f'<td>{_e(doc.get("created", ""))}</td><td>{_e(spec.get("dataset_version", ""))}</td>'
                    f'<td>{_e(spec.get("sweeps", ""))}</td><td class="num">{_e(spec.get("seed", ""))}</td>'
                    f'<td class="num">{len(committed_scenes(vdir))} / {len(doc.get("scenes", []) or [])}</td>'
                    f'<td>{_non_default_html(spec.get("config", {}), defaults)}</td></tr>')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>calico store {_e(Path(store))}'
            f'</title><style>{_CSS}</style></head><body><h1 id="title">Store <code>{_e(Path(store))}</code></h1>'
            f'<p class="muted">{len(rows)} version(s), oldest first; index written '
            f'{_e(time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()))}. A version links to its page when one was '
            f"written (<code>calico catalog report</code>).</p>"
            '<table id="versions"><tr><th>version</th><th>created</th><th>dataset</th><th>sweeps</th><th>seed</th>'
            "<th>scenes</th><th>non-default parameters</th></tr>" + "".join(rows) + "</table></body></html>")
    path = out / INDEX
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
