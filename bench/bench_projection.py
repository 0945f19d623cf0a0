"""Benchmark: projection of a LiDAR sweep into its cameras, single thread.

Ours (``preprocess.project.project_points``, a Numba kernel) against the devkit reference
(``project_points_reference``: per camera a numpy transform + nuscenes-devkit ``view_points``, as
``render_pointcloud_in_image`` does) and a batched plain-numpy version (one matmul for all cameras).
Prints a table of medians over ``--repeat`` runs (after one warm-up run, which also loads/compiles the kernel)
and the ratio to ours. Target (issue): <= 2 ms for six cameras on the 34.7k-point n015 nuScenes sweep.

    python bench/bench_projection.py [--repeat 200]

Threads are pinned to one (BLAS, Numba, and the process's CPU affinity where the OS allows).
"""
from __future__ import annotations

import _common  # noqa: I001  (first: thread limits before numpy/numba load)

_common.limit_threads(1)

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from preprocess.project import (  # noqa: E402
    ProjectConfig,
    camera_matrices,
    project_points,
    project_points_reference,
)
from shared.fixtures import load_cameras  # noqa: E402
from shared.paths import fixtures_dir  # noqa: E402
from shared.pointcloud import load_points  # noqa: E402

N015 = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951"


def numpy_batched(points, cameras, cfg=ProjectConfig()):
    """All cameras in one (C*3, 4) @ (4, N) matmul, then masks: the fastest plain-numpy formulation."""
    mats, sizes = camera_matrices(cameras)
    xyz = points[:, :3].astype(np.float64)
    h = np.matmul(xyz[None], mats[:, :, :3].transpose(0, 2, 1)) + mats[:, None, :, 3]  # (C, N, 3)
    d = h[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        u = h[..., 0] / d
        v = h[..., 1] / d
    ok = (d > cfg.min_depth) & (u >= 0) & (u < sizes[:, 0:1]) & (v >= 0) & (v < sizes[:, 1:2])
    pt, cam = np.nonzero(ok.T)  # sorted by point then camera
    return pt.astype(np.int32), cam.astype(np.uint8), np.stack([u.T[pt, cam], v.T[pt, cam]], 1), d.T[pt, cam]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    _common.add_malloc_option(ap)
    args = ap.parse_args()
    malloc = _common.setup_malloc(args)
    fx = fixtures_dir()
    cases = [
        ("n015 nuScenes, 6 cams", fx / f"{N015}.pcd.bin", fx / f"{N015}.calib.json"),
        ("KITTI 000000, 1 cam", fx / "kitti/000000.bin", fx / "kitti/000000.calib.txt"),
    ]
    print(f"machine: {_common.machine()}; single thread; median of {args.repeat}; {malloc}")
    print()
    print("| sweep | points | pairs | ours (numba) ms | numpy batched ms | devkit view_points loop ms "
          "| devkit / ours |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, scan, calib in cases:
        if not scan.is_file():
            print(f"| {name} | (fixture missing: {scan}) |")
            continue
        pts = load_points(scan)
        cams = load_cameras(calib)
        ours = project_points(pts, cams)
        ref = project_points_reference(pts, cams)
        assert np.array_equal(ours.point, ref.point) and np.array_equal(ours.cam, ref.cam)
        t_ours = _common.median_ms(lambda: project_points(pts, cams), args.repeat)
        t_np = _common.median_ms(lambda: numpy_batched(pts, cams), max(args.repeat // 4, 5))
        t_ref = _common.median_ms(lambda: project_points_reference(pts, cams), max(args.repeat // 4, 5))
        print(f"| {name} | {len(pts):,} | {len(ours):,} | {t_ours:.3f} | {t_np:.3f} | {t_ref:.3f} "
              f"| {t_ref / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
