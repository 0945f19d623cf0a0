"""Benchmark of the synthetic dataset generator (``shared.synth.generate`` / ``calico synth``).

For each preset (``tiny`` and ``small``; ``mini`` too with ``--mini``) generates the dataset ``--repeats``
times (seed 0, into a fresh temporary folder each time) and prints a table of the medians of:

* wall seconds of ``generate()`` (Numba compilation is warmed up first on a one-sweep dataset, so it is
  not counted; it is cached on disk after the first run anyway);
* LiDAR sweeps written per second (keyframes and intermediate sweeps; camera images, maps and tables are part
  of the time);
* bytes written (all files of the dataroot) and per sweep;
* the share of the time spent seeing to it that every scene shows all ten detection classes
  (``ensure_all_classes``: keyframe check casts and anchor placement), against a run with
  ``all_classes=False``.

    python bench/bench_synth.py                 # tiny and small, 3 repeats
    python bench/bench_synth.py --mini --repeats 1

Timings on a shared machine are indicative (no test asserts one); the docs say which machine gave them.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def dir_bytes(path: Path) -> int:
    """Total size (bytes) of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def time_generate(cfg, seed: int = 0) -> tuple[float, int]:
    """(wall seconds, bytes written) of one ``generate`` run into a fresh temporary folder."""
    from shared.synth import generate

    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        t0 = time.perf_counter()
        root, _ = generate(tmp / cfg.name, cfg, seed=seed, progress=False)
        wall = time.perf_counter() - t0
        return wall, dir_bytes(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    from shared.synth import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mini", action="store_true", help="also time the 'mini' preset (minutes, 3 GB)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per preset (median reported)")
    ap.add_argument("--no-compare", action="store_true", help="skip the all_classes=False comparison runs")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    presets = ["tiny", "small"] + (["mini"] if args.mini else [])
    # warm-up: compile (or load cached) Numba kernels outside the timed runs
    time_generate(replace(PRESETS["tiny"], name="warmup", scenes=1, keyframes=2, sweeps_per_keyframe=1,
                          image_width=64, image_height=36))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; {args.repeats} run(s) per row, medians")
    header = ("preset", "scenes x kf", "sweeps", "wall s", "sweeps/s", "MB written", "kB/sweep",
              "wall s w/o all_classes", "all_classes share")
    rows = []
    for name in presets:
        cfg = PRESETS[name]
        sweeps = cfg.scenes * cfg.sweeps_per_scene
        runs = [time_generate(cfg) for _ in range(args.repeats)]
        wall = statistics.median(r[0] for r in runs)
        nbytes = int(statistics.median(r[1] for r in runs))
        if args.no_compare:
            base, share = "-", "-"
        else:
            base_wall = statistics.median(time_generate(replace(cfg, all_classes=False))[0]
                                          for _ in range(args.repeats))
            base, share = f"{base_wall:.1f}", f"{(wall - base_wall) / wall:+.0%}"
        rows.append((name, f"{cfg.scenes} x {cfg.keyframes}", str(sweeps), f"{wall:.1f}", f"{sweeps / wall:.1f}",
                     f"{nbytes / 1e6:.1f}", f"{nbytes / sweeps / 1e3:.0f}", base, share))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    main()
