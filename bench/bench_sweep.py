"""Benchmark: the whole per-sweep pipeline (``preprocess.sweep.process_sweep``), per-stage medians on the fixtures.

    python bench/bench_sweep.py [--repeat 20] [--threads 1] [--backend cpu]

For each real fixture sweep: median milliseconds of every stage (validate, ground, cluster, pooling, project,
augment, total) over ``--repeat`` runs after one warm-up run (which loads/compiles the Numba kernels), and two
reference tools on the same data for scale: scikit-learn ``DBSCAN`` on the same non-ground points (vs our
cluster stage) and the devkit ``view_points`` loop (vs our project stage).
"""
from __future__ import annotations

import argparse
import sys

import _common  # noqa: I001  (first: thread limits before numpy/numba load)


def _threads_from_argv() -> int:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 1


_common.limit_threads(_threads_from_argv())

import numpy as np  # noqa: E402

from preprocess.project import project_points_reference
from shared.fixtures import load_cameras  # noqa: E402
from preprocess.sweep import STAGES, SweepConfig, process_sweep  # noqa: E402
from shared.paths import fixtures_dir  # noqa: E402
from shared.pointcloud import load_points  # noqa: E402

N015 = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951"
N008 = "nuscenes/n008-2018-08-01-15-16-36-0400__LIDAR_TOP__1533151603597909"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="BLAS/Numba threads (read before numpy is imported)")
    ap.add_argument("--backend", default="cpu")
    _common.add_malloc_option(ap)
    args = ap.parse_args()
    malloc = _common.setup_malloc(args)
    fx = fixtures_dir()
    cases = [
        ("n015 nuScenes + 6 cams", fx / f"{N015}.pcd.bin", fx / f"{N015}.calib.json"),
        ("n008 nuScenes", fx / f"{N008}.pcd.bin", None),
        ("KITTI 000000 + CAM2", fx / "kitti/000000.bin", fx / "kitti/000000.calib.txt"),
        ("KITTI demo 000008 + CAM2", fx / "kitti/mmdet3d_demo_000008_reduced.bin",
         fx / "kitti/mmdet3d_demo_000008.calib.json"),
    ]
    print(f"machine: {_common.machine()}; threads {args.threads}; "
          f"backend {args.backend}; median of {args.repeat} runs (ms); {malloc}")
    print()
    cfg = SweepConfig()
    head = ["sweep", "points", *STAGES, "total", "sklearn DBSCAN", "devkit projection", "regions"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for name, scan, calib in cases:
        if not scan.is_file():
            print(f"| {name} | fixture missing: {scan} |")
            continue
        pts = load_points(scan)
        cams = load_cameras(calib) if calib else None
        res = process_sweep(pts, cams, cfg, backend=args.backend)  # warm-up
        runs = [process_sweep(pts, cams, cfg, backend=args.backend).timings_ms for _ in range(args.repeat)]
        med = {k: float(np.median([r[k] for r in runs])) for k in (*STAGES, "total")}
        from sklearn.cluster import DBSCAN

        ng = pts[res.valid & ~res.ground][:, :2].astype(np.float64)
        t_sk = _common.median_ms(lambda: DBSCAN(eps=cfg.cluster.eps, min_samples=cfg.cluster.min_samples).fit(ng),
                          max(3, args.repeat // 4))
        t_dev = (_common.median_ms(lambda: project_points_reference(pts, cams, cfg.project), max(3, args.repeat // 4))
                 if cams else float("nan"))
        cells = [name, f"{len(pts):,}", *(f"{med[k]:.2f}" for k in (*STAGES, "total")), f"{t_sk:.1f}",
                 "-" if cams is None else f"{t_dev:.2f}", str(res.stats.regions_kept)]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
