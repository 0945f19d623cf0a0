"""Benchmark of the preprocessing kernels (ground removal, DBSCAN, pooling) on the real fixture scans, single
thread, against what users pick instead: Open3D ``segment_plane`` + scikit-learn ``DBSCAN`` on x, y.

    python bench/bench_kernels.py [--fixtures PATH] [--repeats 20] [--ref-repeats 5]

Prints, per scan, a table of median milliseconds (ours, reference, reference / ours) and the agreement of our
DBSCAN with scikit-learn's on the same input (Open3D's non-ground points): adjusted Rand index over all points
and whether the core points and their partition match exactly. Numba compile time is excluded (warm-up run).
Never used by the tests: timings are machine- and load-dependent.
"""
from __future__ import annotations

import _common  # noqa: I001  (first: thread limits before numpy/numba load)

_common.limit_threads(1, pin=False)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SCANS = (
    ("nuScenes n008", "nuscenes/n008-2018-08-01-15-16-36-0400__LIDAR_TOP__1533151603597909.pcd.bin"),
    ("nuScenes n015", "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"),
    ("KITTI 000000", "kitti/000000.bin"),
)


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median and minimum milliseconds of ``repeats`` calls, and the last result (warm-ups are explicit here)."""
    return _common.timed(fn, repeats, warmup=False)


def main(argv=None) -> int:
    from shared.paths import fixtures_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", type=Path, default=fixtures_dir(), help="folder of the real fixtures")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs of our kernels (median)")
    ap.add_argument("--ref-repeats", type=int, default=5,
                    help="timed runs of the reference tools (median; scikit-learn DBSCAN takes seconds)")
    ap.add_argument("--warmup-s", type=float, default=2.0,
                    help="seconds of untimed pipeline runs on each scan before its timings (steady state: caches, "
                         "allocator, CPU clock)")
    _common.add_malloc_option(ap)
    args = ap.parse_args(argv)
    if not (args.fixtures / "nuscenes").is_dir():
        print(f"fixtures not found at {args.fixtures} (pass --fixtures or set CALICO_FIXTURES)", file=sys.stderr)
        return 2

    import numba

    numba.set_num_threads(1)
    from shared.pointcloud import load_points
    from preprocess.cluster import (ClusterConfig, adjusted_rand_index, cluster_nonground, core_partition_equal,
                                    dbscan_core, dbscan_reference)
    from preprocess.ground import GroundConfig, fit_ground
    from preprocess.pooling import PoolingConfig, pool_regions

    try:
        import open3d as o3d
    except Exception as exc:  # noqa: BLE001 - report and go on without the Open3D column
        o3d = None
        print(f"note: open3d unavailable ({exc.__class__.__name__}: {exc}); reference ground = none",
              file=sys.stderr)
    from sklearn.cluster import DBSCAN

    malloc = _common.setup_malloc(args)
    gcfg, ccfg, pcfg = GroundConfig(), ClusterConfig(), PoolingConfig()
    print(f"machine: {_common.machine()}")
    print(malloc)
    print(f"command: python {' '.join(sys.argv)}  (threads: 1; ours x{args.repeats}, reference x{args.ref_repeats})")
    summary = []
    for title, rel in SCANS:
        path = args.fixtures / rel
        if not path.is_file():
            print(f"skip {title}: {path} missing", file=sys.stderr)
            continue
        xyz = load_points(path)[:, :3]

        def ours_ground():
            return fit_ground(xyz, gcfg)

        def ours_pipeline():
            g = fit_ground(xyz, gcfg)
            labels = cluster_nonground(xyz, g.mask, ccfg)
            return pool_regions(xyz, g, labels, pcfg)

        ours_pipeline()  # warm-up: numba compile / cache load
        t_warm = time.perf_counter()
        while time.perf_counter() - t_warm < args.warmup_s:  # steady state: caches, allocator, CPU clock
            ours_pipeline()
        t_ground, m_ground, g = timed(ours_ground, args.repeats)
        t_dbscan, m_dbscan, labels = timed(lambda: cluster_nonground(xyz, g.mask, ccfg), args.repeats)
        t_pool, m_pool, pooled = timed(lambda: pool_regions(xyz, g, labels, pcfg), args.repeats)
        t_total, m_total, _ = timed(ours_pipeline, args.repeats)

        # reference: Open3D RANSAC plane + sklearn DBSCAN on x, y of what Open3D calls non-ground
        if o3d is not None:
            pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
            o3d.utility.random.seed(0)
            t_ref_ground, _, (_, inliers) = timed(
                lambda: pcd.segment_plane(distance_threshold=0.2, ransac_n=3, num_iterations=200), args.ref_repeats)
            ref_ground = np.zeros(len(xyz), bool)
            ref_ground[np.asarray(inliers)] = True
        else:
            t_ref_ground, ref_ground = float("nan"), np.zeros(len(xyz), bool)
        ng = np.ascontiguousarray(xyz[~ref_ground])
        ng_xy = ng[:, :2].astype(np.float64)
        t_ref_db, _, _ = timed(lambda: DBSCAN(eps=0.75, min_samples=5).fit(ng_xy), args.ref_repeats)
        t_db_same, m_db_same, (lab_same, core_same) = timed(lambda: dbscan_core(ng, ccfg), args.repeats)
        ref_lab, ref_core = dbscan_reference(ng, ccfg)
        ari = adjusted_rand_index(lab_same, ref_lab)
        core_ok = core_partition_equal(lab_same, core_same, ref_lab, ref_core)
        n_core_diff = int((core_same != ref_core).sum())

        rows = [
            ("ground (ours: RANSAC per patch; ref: Open3D segment_plane)", t_ground, m_ground, t_ref_ground),
            ("DBSCAN xy, same input (Open3D non-ground)", t_db_same, m_db_same, t_ref_db),
            ("DBSCAN xy, our non-ground", t_dbscan, m_dbscan, float("nan")),
            ("pooling filters", t_pool, m_pool, float("nan")),
            ("total ground + DBSCAN + filters", t_total, m_total, t_ref_ground + t_ref_db),
        ]
        print(f"\n### {title}: {len(xyz)} points; ours: {g.n_ground} ground, {int(labels.max()) + 1} clusters, "
              f"{pooled.n_regions} regions; Open3D: {int(ref_ground.sum())} ground")
        print("| stage | ours ms (median) | ours ms (min) | reference ms (median) | ratio ref/ours |")
        print("|---|---:|---:|---:|---:|")
        for name, ours, ours_min, ref in rows:
            ratio = f"{ref / ours:.0f}x" if np.isfinite(ref) and ours > 0 else "-"
            ref_s = f"{ref:.1f}" if np.isfinite(ref) else "-"
            print(f"| {name} | {ours:.2f} | {ours_min:.2f} | {ref_s} | {ratio} |")
        print(f"agreement with sklearn on {len(ng)} non-ground points: ARI {ari:.6f}, core points identical and "
              f"same partition: {core_ok} ({n_core_diff} core flags differ)")
        summary.append((title, t_total, m_total, t_ref_ground + t_ref_db, ari, core_ok))
    print("\n| scan | ours total ms (median) | (min) | reference total ms | ratio | ARI | core match |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for title, ours, ours_min, ref, ari, ok in summary:
        print(f"| {title} | {ours:.2f} | {ours_min:.2f} | {ref:.1f} | {ref / ours:.0f}x | {ari:.6f} | {ok} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
