"""Where a preprocessing run spends its time per sweep, and its memory: ``preprocess.run.run`` on a few scenes.

    python bench/bench_run.py --dataroot D --version V [--scenes 3] [--sweeps all|keyframes] [--workers 0|1]
                              [--numpy-hugepages] [--dask-profiler]

``--workers 0`` (default) runs the scenes in this process, so the store writer's steps can be timed: the
encoding (``ShardWriter.add``), the commit and its parts (concatenating the sweeps, zarr encoding the group in
memory, writing + fsync + SHA-256 of the files), in milliseconds per sweep over the whole run, and the peak
resident memory of the process (``ru_maxrss``: the planning, one scene's columns and its compressed files).
``--workers 1`` runs them on one Dask worker and prints the run's own per-sweep split (kernels, reading,
writing, the rest) and each scene task's wall time (the first pays what the warm-up did not).

Switches that undo one of the worker settings, to measure it: ``--numpy-hugepages`` leaves numpy's huge-page
advice on (``shared.malloc.numpy_hugepages``); ``--dask-profiler`` leaves Dask's statistical profiler on in the
workers (``preprocess.run.LOCAL_WORKER_CONFIG``). Timings depend on the machine and its load; rerun to compare.
"""
from __future__ import annotations

import _common

import argparse
import resource
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path



def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataroot", type=Path, required=True)
    ap.add_argument("--version", default="v1.0-trainval")
    ap.add_argument("--scenes", type=int, default=3, help="the first N scenes")
    ap.add_argument("--sweeps", default="all", choices=["all", "keyframes"])
    ap.add_argument("--workers", type=int, default=0, choices=[0, 1])
    ap.add_argument("--numpy-hugepages", action="store_true", help="leave numpy's huge-page advice on")
    ap.add_argument("--dask-profiler", action="store_true", help="leave Dask's profiler on in the workers")
    args = ap.parse_args(argv)

    import preprocess.run as R
    import shared.malloc
    from data_catalog import writer as shard_writer
    from data_catalog.writer import ShardWriter
    from shared.nuscenes_io import iter_scenes, open_nuscenes

    if args.numpy_hugepages:
        shared.malloc.numpy_hugepages = lambda enabled: None  # setup_worker then leaves numpy's default
    if args.dask_profiler:
        R.LOCAL_WORKER_CONFIG = {}
    totals: dict[str, float] = defaultdict(float)
    for name in ("encode_group", "write_files"):
        _common.add_timer(totals, shard_writer, name)
    for name in ("add", "commit", "_concat"):
        _common.add_timer(totals, ShardWriter, name)
    scenes = [s["name"] for s in iter_scenes(open_nuscenes(args.dataroot, args.version))][:args.scenes]

    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    try:
        s = R.run(args.dataroot, args.version, tmp / "store", sweeps=args.sweeps, workers=args.workers,
                  backend="cpu", scenes=scenes, progress=False, log=None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = max(1, s.sweeps_done)
    wall = s.tasks_s * max(1, args.workers)
    print(f"machine: {_common.machine()}")
    print(f"data: {args.dataroot} ({args.version}), {len(scenes)} scene(s), {args.sweeps}: {s.sweeps_done} sweeps; "
          f"workers {args.workers}; numpy huge pages {'on' if args.numpy_hugepages else 'off'}; "
          f"Dask profiler {'on' if args.dask_profiler else 'off'}")
    print(f"tasks {s.tasks_s:.2f} s = {s.sweeps_done / s.tasks_s:.1f} sweeps/s; ms per sweep: kernels "
          f"{s.kernel_s / n * 1e3:.2f}, read {s.load_s / n * 1e3:.2f}, write {s.write_s / n * 1e3:.2f}, rest "
          f"{(wall - s.kernel_s - s.load_s - s.write_s) / n * 1e3:.2f}")
    if args.workers == 0:
        print("writer, ms per sweep: " + ", ".join(
            f"{k} {totals[k] / n * 1e3:.2f}" for k in ("add", "commit", "_concat", "encode_group", "write_files")
            if k in totals))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak resident memory of this process: {peak_mb:.0f} MB")
    for t in sorted(s.tasks, key=lambda t: t["started"]):
        print(f"  {t['scene']}: task {1e3 * (t['ended'] - t['started']):.0f} ms, {t['sweeps']} sweeps")


if __name__ == "__main__":
    main()
