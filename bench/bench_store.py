"""End-to-end benchmark of ``calico preprocess run`` (the Dask stage writing the region-cache store).

For each sweep selection (keyframes, all) and worker count (1, 2 by default), runs the whole stage into a fresh
store ``--repeats`` times and prints the medians of:

* sweeps/s over the scene tasks' wall time (the steady state) and over the whole run (driver, cluster start
  and stop, workers' warm-up included), and the one-off startup (cluster start + warm-up + stop) in seconds;
* the share of worker time spent in the kernels (``process_sweep``'s total), in I/O (reading point files,
  encoding and committing shards), and the rest (orchestration: scheduling, serialisation, idle workers):
  shares of ``tasks wall x workers``; ``idle``, the part of orchestration outside any scene task, and ``f+d``
  the part of that before each worker's first task and after its last (filling the pipeline: the first scene
  plans pickled and shipped; draining it: the other workers finishing the last scenes), a one-off per run that
  a run of hundreds of scenes amortises; and the same shares with the one-off startup counted as orchestration
  (``+start``), which is what a run this small sees;
* store bytes per point (all shard files) against the raw ``.pcd.bin`` (20 bytes a point);
* the speed-up of each worker count over one worker.

Then projects the time to preprocess nuScenes trainval (34,149 keyframes; ~390k sweeps) at the measured
2-worker rate, and on a 16-core machine assuming the measured per-worker efficiency holds (an estimate, say so
in the docs). Targets (issue 4): 2 workers >= 1.7x one; I/O + orchestration <= 30 % of wall; <= 20 B/point.

    python bench/bench_store.py                                # generates the 'small' preset, 8 scenes
    python bench/bench_store.py --dataroot D --version v1.0-mini --workers 1 2 --sweeps keyframes all

Timings on a shared machine are indicative; the lead reruns it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

TRAINVAL_KEYFRAMES = 34_149
TRAINVAL_SWEEPS = 390_000
RAW_BYTES_PER_POINT = 20.0


def _hours(h: float) -> str:
    if h >= 1:
        return f"{h:.1f} h"
    return f"{h * 60:.0f} min" if h * 60 >= 10 else f"{h * 60:.1f} min"


def _fill_drain_s(s) -> float:
    """Worker seconds idle before each worker's first task (plans shipped, pipeline filling) and after its last
    one (the other workers finishing the last scenes): one-off per run, unlike the gaps between tasks."""
    t_start, t_end = s.tasks_window
    if not s.tasks or t_end <= t_start:
        return 0.0
    by_worker: dict = {}
    for t in s.tasks:
        first, last = by_worker.get(t["pid"], (t["started"], t["ended"]))
        by_worker[t["pid"]] = (min(first, t["started"]), max(last, t["ended"]))
    idle_workers = max(0, s.workers - len(by_worker)) * (t_end - t_start)
    return idle_workers + sum((first - t_start) + (t_end - last) for first, last in by_worker.values())


def store_bytes(path: str) -> int:
    total = 0
    for d in (Path(path) / "shards").iterdir():
        man = d / "manifest.json"
        if man.is_file():
            total += json.loads(man.read_text())["bytes"]
    return total


def one_run(dataroot, version, sweeps, workers, tmp):
    from preprocess.run import run

    store = Path(tmp) / f"store-{sweeps}-{workers}-{time.monotonic_ns()}"
    s = run(dataroot, version, store, sweeps=sweeps, workers=workers, backend="cpu", progress=False, log=None)
    if s.failed_scenes or s.scenes_done != s.scenes_total:
        raise SystemExit(f"run failed: {s.failed_scenes or s}")
    worker_time = s.tasks_s * max(1, workers)
    io = s.load_s + s.write_s
    out = {
        "sweeps": s.sweeps_done, "points": s.points, "wall_s": s.wall_s, "tasks_s": s.tasks_s,
        "prepare_s": s.prepare_s, "startup_s": s.startup_s, "sweeps_per_s": s.sweeps_done / s.tasks_s,
        "sweeps_per_s_total": s.sweeps_done / s.wall_s,
        "kernel_share": s.kernel_s / worker_time, "io_share": io / worker_time,
        "orchestration_share": max(0.0, 1.0 - (s.kernel_s + io) / worker_time),
        "idle_share": max(0.0, 1.0 - s.busy_s / worker_time),
        "fill_drain_share": _fill_drain_s(s) / worker_time,
        "orchestration_share_start": max(0.0, 1.0 - (s.kernel_s + io)
                                         / ((s.tasks_s + s.startup_s) * max(1, workers))),
        "bytes_per_point": store_bytes(s.path) / max(1, s.points),
    }
    shutil.rmtree(store, ignore_errors=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataroot", type=Path, default=None, help="nuScenes dataroot (default: generate one)")
    ap.add_argument("--version", default=None, help="nuScenes version folder (with --dataroot)")
    ap.add_argument("--preset", default="small", help="synthetic preset to generate without --dataroot")
    ap.add_argument("--scenes", type=int, default=8,
                    help="scenes to generate without --dataroot (the default preset has 4: too few tasks to "
                         "keep 2 workers busy to the end)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sweeps", nargs="+", default=["keyframes", "all"], choices=["keyframes", "all"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="bench-store-")
    try:
        if args.dataroot is None:
            import subprocess
            import sys

            # generate in a child process: the generator's numba kernels stay out of this one
            code = ("import sys; from shared.synth import generate; "
                    f"r, v = generate(sys.argv[1], preset={args.preset!r}, scenes={args.scenes}, seed=0, progress=False); "
                    "print(v)")
            out = subprocess.run([sys.executable, "-c", code, f"{tmp}/data"], capture_output=True, text=True,
                                 check=True)
            dataroot, version = Path(tmp) / "data", out.stdout.strip().splitlines()[-1]
        else:
            dataroot, version = args.dataroot, args.version or "v1.0-trainval"
        print(f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
        print(f"data: {dataroot} ({version})")
        rows = []
        for sweeps in args.sweeps:
            base = None
            for w in args.workers:
                runs = [one_run(dataroot, version, sweeps, w, tmp) for _ in range(args.repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                med.update(sweeps_mode=sweeps, workers=w)
                if base is None:
                    base = med["sweeps_per_s"]
                med["speedup"] = med["sweeps_per_s"] / base
                rows.append(med)
        hdr = (f"{'sweeps':9s} {'wk':>2s} {'n':>5s} {'sw/s':>7s} {'x1wk':>5s} {'sw/s all':>8s} {'start':>5s} "
               f"{'kernel':>6s} {'io':>5s} {'orch':>5s} {'idle':>5s} {'f+d':>5s} {'+start':>6s} {'B/pt':>5s} {'vs raw':>6s}")
        print(hdr)
        for r in rows:
            print(f"{r['sweeps_mode']:9s} {r['workers']:2d} {int(r['sweeps']):5d} {r['sweeps_per_s']:7.2f} "
                  f"{r['speedup']:5.2f} {r['sweeps_per_s_total']:8.2f} {r['startup_s']:5.1f} "
                  f"{r['kernel_share']:6.1%} {r['io_share']:5.1%} {r['orchestration_share']:5.1%} {r['idle_share']:5.1%} "
                  f"{r['fill_drain_share']:5.1%} "
                  f"{r['orchestration_share_start']:6.1%} {r['bytes_per_point']:5.2f} "
                  f"{r['bytes_per_point'] / RAW_BYTES_PER_POINT:6.1%}")
        for mode, n in (("keyframes", TRAINVAL_KEYFRAMES), ("all", TRAINVAL_SWEEPS)):
            mine = [r for r in rows if r["sweeps_mode"] == mode]
            if not mine:
                continue
            best = max(mine, key=lambda r: r["workers"])
            per_worker = best["sweeps_per_s"] / best["workers"]
            h_here = n / best["sweeps_per_s"] / 3600
            h_16 = n / (per_worker * 16) / 3600
            print(f"trainval {mode} ({n:,} sweeps): {_hours(h_here)} at {best['workers']} worker(s) here; "
                  f"~{_hours(h_16)} on 16 cores at the same per-worker rate")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
