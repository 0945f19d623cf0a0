"""Benchmark: object recovery of the regions (shared.region_quality) for calico's pipeline and the prototype's.

    calico synth --out /tmp/q13/data --preset small --scenes 12 --seed 1   # once, ~1.5 min
    OMP_NUM_THREADS=1 python bench/bench_quality.py --dataroot /tmp/q13/data [--max-sweeps N]
        [--pipelines calico] [--set section.field=value ...]

Two pipelines on the same keyframes:

* ``calico``: :func:`preprocess.sweep.process_sweep` with the default :class:`SweepConfig` (local-plane ground,
  DBSCAN, the pooling filters), or the defaults with the ``--set`` overrides (as ``calico preprocess --set``);
  the drop reason of each filtered point comes from ``PoolingResult.cluster_reason``.
* ``prototype``: Open3D ``segment_plane`` RANSAC (distance 0.2 m, 3 points, 1000 iterations, Open3D seed 0) over
  all points, then scikit-learn ``DBSCAN`` (eps 0.75, min_samples 5) over the x, y of the non-ground points; every
  cluster is a region, no filters. Without Open3D (``pip install 'open3d>=0.18'``, the ``bench`` extra) a numpy
  RANSAC with the same parameters stands in, and the output says so.

Datasets: the generated dataroot's keyframes (boxes through devkit's ``get_sample_data``) and the KITTI fixture
scan ``kitti/000000`` with its ``label_2`` and calib (skipped when the fixtures are absent). Printed: recall per
class and distance band, purity, over/under-segmentation, ground share and the kinds of misses (see
:mod:`shared.region_quality` for every rule), under the default rule (bottom margin 0.3 m) and, for comparison,
the overall recall with no bottom margin; median milliseconds per sweep of each pipeline (no timing is asserted).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _common  # noqa: I001  (first: thread limits before numpy/numba load)

_common.limit_threads(1)

import numpy as np  # noqa: E402

from shared.paths import fixtures_dir  # noqa: E402
from shared.region_quality import (DISTANCE_BANDS, MISS_KINDS, RecoveryRule, boxes_from_kitti,  # noqa: E402
                                   evaluate_sweep, summarize)

PIPELINES = ("calico", "prototype")
RULES = {"default": RecoveryRule(), "margin 0": RecoveryRule(bottom_margin=0.0)}


def calico_pipeline(overrides=()):
    from preprocess.pooling import REASONS
    from preprocess.sweep import SweepConfig, warm_up
    from preprocess.tune import run_pipeline

    cfg = SweepConfig.from_overrides(list(overrides))
    warm_up(cfg)

    def run(pts: np.ndarray):
        out = run_pipeline(pts, cfg)
        return out.region, out.ground, out.reason

    how = "process_sweep, default SweepConfig" + (f" with {' '.join(overrides)}" if overrides else "")
    return run, how, REASONS


def numpy_ransac(xyz: np.ndarray, dist: float = 0.2, iters: int = 1000, seed: int = 0) -> np.ndarray:
    """Inlier mask of the plane with most points within ``dist`` among ``iters`` planes through 3 random points
    (Open3D ``segment_plane``'s algorithm, without its early stop)."""
    rng = np.random.default_rng(seed)
    best, best_n = np.zeros(len(xyz), dtype=bool), -1
    for _ in range(iters):
        p = xyz[rng.choice(len(xyz), 3, replace=False)]
        n = np.cross(p[1] - p[0], p[2] - p[0])
        norm = np.linalg.norm(n)
        if norm == 0:
            continue
        inl = np.abs((xyz - p[0]) @ (n / norm)) <= dist
        if inl.sum() > best_n:
            best, best_n = inl, int(inl.sum())
    return best


def prototype_pipeline():
    from sklearn.cluster import DBSCAN

    try:
        import open3d as o3d

        o3d.utility.random.seed(0)

        def ground_of(xyz):
            pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
            _, inliers = pc.segment_plane(distance_threshold=0.2, ransac_n=3, num_iterations=1000)
            g = np.zeros(len(xyz), dtype=bool)
            g[np.asarray(inliers, dtype=np.int64)] = True
            return g

        how = f"Open3D {o3d.__version__} segment_plane(0.2, 3, 1000)"
    except Exception as exc:  # not installed, or a missing system library (libusb-1.0)
        ground_of = numpy_ransac
        how = f"numpy RANSAC (0.2 m, 3 points, 1000 iterations) standing in for Open3D ({type(exc).__name__}: {exc})"

    def run(pts: np.ndarray):
        xyz = pts[:, :3].astype(np.float64)
        g = ground_of(xyz)
        region = np.full(len(xyz), -1, dtype=np.int64)
        ng = np.flatnonzero(~g)
        if len(ng):
            region[ng] = DBSCAN(eps=0.75, min_samples=5).fit(xyz[ng, :2]).labels_
        return region, g, np.zeros(len(xyz), dtype=np.int64)  # no filters: every unlabelled point is noise

    return run, how + " + sklearn DBSCAN(eps 0.75, min_samples 5) over x-y, no filters", ()


def synth_sweeps(dataroot: Path, version: str, max_sweeps: int | None):
    from preprocess.tune import keyframe_tokens, load_keyframes
    from shared.nuscenes_io import open_nuscenes

    nusc = open_nuscenes(dataroot, version)
    items = keyframe_tokens(nusc)
    if max_sweeps and len(items) > max_sweeps:  # evenly over the scenes
        items = [items[i] for i in np.linspace(0, len(items) - 1, max_sweeps).round().astype(int)]
    for kf in load_keyframes(nusc, items, log=print)[0]:
        yield kf.token, kf.points, kf.boxes


def kitti_sweeps():
    from shared.pointcloud import load_points

    fx = fixtures_dir() / "kitti"
    if not (fx / "000000.bin").is_file():
        return
    yield "000000", load_points(fx / "000000.bin"), boxes_from_kitti(fx / "000000.label_2.txt",
                                                                      fx / "000000.calib.txt")


def measure(sweeps, pipelines):
    """{pipeline: {rule: (objects tables, regions tables)}}, {pipeline: ms per sweep}, sweep count."""
    tables = {p: {r: ([], []) for r in RULES} for p in pipelines}
    times = {k: [] for p in pipelines for k in (p, p + " metrics")}
    n = 0
    for _, pts, boxes in sweeps:
        n += 1
        for name, (run, _, _) in pipelines.items():
            t0 = time.perf_counter()
            region, ground, reason = run(pts)
            times[name].append((time.perf_counter() - t0) * 1e3)
            for rname, rule in RULES.items():
                t0 = time.perf_counter()
                q = evaluate_sweep(pts, region, boxes, ground=ground, dropped_reason=reason, rule=rule)
                if rname == "default":
                    times[name + " metrics"].append((time.perf_counter() - t0) * 1e3)
                tables[name][rname][0].append(q.objects)
                tables[name][rname][1].append(q.regions)
    return tables, times, n


def fmt(x: float) -> str:
    return "-" if x != x else f"{x:.2f}"


def report(title: str, tables, times, n_sweeps: int, pipelines) -> None:
    names = list(pipelines)
    sums = {p: {r: summarize(*tables[p][r], rule=RULES[r], reason_names=pipelines[p][2]) for r in RULES}
            for p in names}
    first = sums[names[0]]["default"]
    print(f"\n## {title}: {n_sweeps} sweeps, {first.objects} objects with >= {RULES['default'].min_points} points")
    print("\n| pipeline | method | ms / sweep (median) | metrics ms / sweep (median) |\n|---|---|---:|---:|")
    for p in names:
        print(f"| {p} | {pipelines[p][1]} | {np.median(times[p]):.1f} | {np.median(times[p + ' metrics']):.1f} |")
    cols = [(p, r) for p in names for r in RULES]
    hdr = " | ".join(f"{p}" if r == "default" else f"{p}, {r}" for p, r in cols)
    print(f"\n### Recall by class (default rule: bottom margin {RULES['default'].bottom_margin} m; "
          "'margin 0': every point in the box scored)\n")
    print(f"| class | objects | {hdr} |\n|---|---:|" + "---:|" * len(cols))
    for cls, (n, _, _) in first.by_class.items():
        print(f"| {cls} | {n} | " + " | ".join(fmt(sums[p][r].by_class[cls][2]) for p, r in cols) + " |")
    print(f"| **all** | {first.objects} | " + " | ".join(fmt(sums[p][r].recall) for p, r in cols) + " |")
    print("\n### Recall by distance (xy, m)\n")
    print(f"| band | objects | {hdr} |\n|---|---:|" + "---:|" * len(cols))
    for band, _, _ in DISTANCE_BANDS:
        n = first.by_distance[band][0]
        print(f"| {band} | {n} | " + " | ".join(fmt(sums[p][r].by_distance[band][2]) for p, r in cols) + " |")
    print("\n### Regions and points\n")
    print("| measure | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    rows = [("regions / sweep", lambda s: s.regions / max(n_sweeps, 1)),
            ("background regions (share)", lambda s: s.background_regions / max(s.regions, 1)),
            ("purity (point-weighted, non-background)", lambda s: s.purity),
            ("purity (region mean, non-background)", lambda s: s.purity_region_mean),
            ("over-segmentation (objects over >= 2 regions)", lambda s: s.over_segmentation),
            ("under-segmentation (object regions covering >= 2)", lambda s: s.under_segmentation),
            ("object points labelled ground", lambda s: s.ground_share),
            ("object points in no region, not ground", lambda s: s.unlabelled_share)]
    for label, get in rows:
        print(f"| {label} | " + " | ".join(fmt(get(sums[p]["default"])) for p in names) + " |")
    kinds = [k for k in MISS_KINDS if any(k in sums[p]["default"].misses for p in names)]
    for p in names:
        s = sums[p]["default"]
        print(f"\n### Misses of {p} by kind and class ({s.objects - s.recovered} missed)\n")
        print("| class | objects | missed |" + "".join(f" {k} |" for k in kinds) + "\n|---|---:|---:|"
              + "---:|" * len(kinds))
        for cls, (n, r, _) in s.by_class.items():
            m = s.misses_by_class.get(cls, {})
            print(f"| {cls} | {n} | {n - r} |" + "".join(f" {m.get(k, 0)} |" for k in kinds))
        print(f"| **all** | {s.objects} | {s.objects - s.recovered} |"
              + "".join(f" {s.misses.get(k, 0)} |" for k in kinds))
        if s.dropped_reasons:
            filters = list(s.dropped_reasons)
            print("\nMisses of kind 'dropped' by the filter that dropped most of their points:\n")
            print("| class |" + "".join(f" {f} |" for f in filters) + "\n|---|" + "---:|" * len(filters))
            for cls, d in s.dropped_by_class.items():
                print(f"| {cls} |" + "".join(f" {d.get(f, 0)} |" for f in filters))
            print("| **all** |" + "".join(f" {s.dropped_reasons[f]} |" for f in filters))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataroot", type=Path, default=Path("/tmp/q13/data"),
                    help="generated dataroot (calico synth --out D --preset small --scenes 12 --seed 1)")
    ap.add_argument("--version", default="v1.0-trainval")
    ap.add_argument("--max-sweeps", type=int, default=None, help="keyframes to use, spread evenly (default all)")
    ap.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated subset of calico,prototype")
    ap.add_argument("--no-kitti", action="store_true", help="skip the KITTI fixture scan")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="config override of the calico pipeline (repeatable), e.g. --set cluster.eps=0.5")
    args = ap.parse_args()
    chosen = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    bad = [p for p in chosen if p not in PIPELINES]
    if bad or not chosen:
        print(f"error: --pipelines {args.pipelines!r}: expected a subset of {','.join(PIPELINES)}", file=sys.stderr)
        return 2
    if not (args.dataroot / args.version).is_dir():
        print(f"error: {args.dataroot}: no generated dataroot with {args.version}; build it with\n  calico synth "
              f"--out {args.dataroot} --preset small --scenes 12 --seed 1", file=sys.stderr)
        return 2
    print(f"machine: {_common.machine()}; one thread")
    from shared.errors import ConfigError

    builders = {"calico": lambda: calico_pipeline(args.overrides), "prototype": prototype_pipeline}
    try:
        pipelines = {p: builders[p]() for p in chosen}
    except ConfigError as exc:
        print(f"error: --set: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    tables, times, n = measure(synth_sweeps(args.dataroot, args.version, args.max_sweeps), pipelines)
    report(f"generated keyframes ({args.dataroot})", tables, times, n, pipelines)
    if not args.no_kitti:
        tables, times, n = measure(kitti_sweeps(), pipelines)
        if n:
            report("KITTI fixture scan 000000", tables, times, n, pipelines)
        else:
            print(f"\n## KITTI fixture scan: not found under {fixtures_dir()} (skipped)")
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
