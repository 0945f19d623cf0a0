"""In-process benchmark of the store writer: encoding a sweep and committing a scene's shard, and where the
commit's time goes.

    python bench/bench_shard.py [--dataroot D --version V] [--scene NAME] [--sweeps all|keyframes]
                                [--repeats 5]

Processes one scene's sweeps once (``process_sweep``; generates the ``tiny`` synthetic preset when no dataroot
is given), then, with the preprocessing workers' settings (``preprocess.run.warm_worker``: malloc thresholds,
one Blosc thread, kernels loaded), times ``ShardWriter.add`` (encoding) per sweep and ``ShardWriter.commit`` per shard into a
fresh folder ``--repeats`` times, and prints medians in milliseconds per sweep, with the commit split into
concatenating the sweeps, zarr encoding the group into memory, the Parquet tables, and writing the files
(fsync and SHA-256 included). The kernel time of the same sweeps
is printed for scale: the issue's target is I/O <= 30 % of a run's wall time. Last, the floor of the format:
reading the point files, compressing the shard's arrays with the store's Blosc settings (numcodecs alone, no
Zarr, no files) and hashing the result, as a share of kernels + floor. Timings depend on the machine
and its load; nothing here is asserted by the tests.
"""
from __future__ import annotations

import _common

_common.limit_threads(1, pin=False)

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path



def _filled_writer(shard_writer, scene, vdir, items):
    w = shard_writer.ShardWriter(vdir, scene)
    for sw, res in items:
        w.add(sw, res)
    return w


def _floor(shard_writer, writer, repeats):
    """Median ms per sweep of compressing the shard's arrays with the store's Blosc settings and chunking
    (numcodecs directly: no Zarr, no files) and of SHA-256 over the compressed bytes: what any writer of this
    format pays."""
    import hashlib

    import numpy as np
    from numcodecs import Blosc

    arrays = writer._concat()
    n = len(writer)
    comp, hashed = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = []
        for name, data in arrays.items():
            data = np.ascontiguousarray(data)
            if data.nbytes < shard_writer.COMPRESS_MIN_BYTES:
                continue
            zc = shard_writer.compressors(name)[0]  # the store's own settings, applied through numcodecs alone
            codec = Blosc(cname=zc.cname.value, clevel=zc.clevel,
                          shuffle=Blosc.BITSHUFFLE if zc.shuffle.value == "bitshuffle" else Blosc.SHUFFLE)
            rows = shard_writer.array_layout(data)[0][0]
            out += [codec.encode(data[i:i + rows]) for i in range(0, data.shape[0], rows)]
        t1 = time.perf_counter()
        h = hashlib.sha256()
        for b in out:
            h.update(b)
        t2 = time.perf_counter()
        comp.append((t1 - t0) * 1e3 / n)
        hashed.append((t2 - t1) * 1e3 / n)
    return statistics.median(comp), statistics.median(hashed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataroot", type=Path, default=None, help="nuScenes dataroot (default: generate 'tiny')")
    ap.add_argument("--version", default=None, help="version folder (with --dataroot; default v1.0-trainval)")
    ap.add_argument("--scene", default=None, help="scene name (default: the first)")
    ap.add_argument("--sweeps", default="all", choices=["all", "keyframes"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from data_catalog import writer as shard_writer
    from data_catalog.format import SweepInput
    from data_catalog.writer import ShardWriter
    from preprocess.run import warm_worker
    from preprocess.sweep import SweepConfig, process_sweep
    from shared import nuscenes_io as nio

    tmp = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    try:
        if args.dataroot is None:
            from shared.synth import generate

            dataroot, version = generate(tmp / "data", preset="tiny", seed=0, progress=False)
        else:
            dataroot, version = args.dataroot, args.version or "v1.0-trainval"
        nusc = nio.open_nuscenes(dataroot, version)
        scene = next((s for s in nusc.scene if args.scene in (None, s["name"])), None)
        if scene is None:
            print(f"scene {args.scene!r} not in {dataroot} ({version})", file=sys.stderr)
            return 2
        infos = list(nio.iter_lidar_sweeps(nusc, scene, args.sweeps == "keyframes"))
        cfg = SweepConfig()
        warm_worker(cfg.to_dict(), "cpu", infos[0].cameras)  # the workers' settings, kernels loaded
        items, kernel_ms, load_ms = [], [], []
        for info in infos:
            t0 = time.perf_counter()
            pts = nio.load_sweep_points(info)
            load_ms.append((time.perf_counter() - t0) * 1e3)
            res = process_sweep(pts, info.cameras, cfg)
            kernel_ms.append(res.timings_ms["total"])
            items.append((SweepInput(token=info.token, points=pts, timestamp=info.timestamp,
                                     is_key_frame=info.is_key_frame, path=str(info.path),
                                     lidar2ego=info.lidar2ego, ego2global=info.ego2global,
                                     cameras=info.cameras), res))
        totals = defaultdict(float)
        for name in ("encode_group", "write_files", "table_bytes"):
            _common.add_timer(totals, shard_writer, name)
        _common.add_timer(totals, ShardWriter, "_concat")
        add_ms, commit_ms, parts = [], [], defaultdict(list)
        for r in range(args.repeats + 1):
            vdir = tmp / f"v{r}"
            w = ShardWriter(vdir, scene["name"])
            t0 = time.perf_counter()
            for sw, res in items:
                w.add(sw, res)
            t1 = time.perf_counter()
            totals.clear()
            w.commit()
            t2 = time.perf_counter()
            shutil.rmtree(vdir)
            if r == 0:
                continue  # warm-up
            add_ms.append((t1 - t0) * 1e3 / len(items))
            commit_ms.append((t2 - t1) * 1e3 / len(items))
            for k, v in totals.items():
                parts[k].append(v * 1e3 / len(items))
        med = statistics.median
        n = len(items)
        print(f"machine: {_common.machine()}")
        print(f"data: {dataroot} ({version}), {scene['name']}, {args.sweeps}: {n} sweeps, "
              f"{sum(len(sw.points) for sw, _ in items) / n:.0f} points a sweep; medians of {args.repeats}")
        print()
        print("| ms per sweep | median |")
        print("|---|---:|")
        rows = [("kernels (process_sweep total, for scale)", med(kernel_ms)), ("read point file", med(load_ms)),
                ("encode (ShardWriter.add)", med(add_ms)), ("commit (ShardWriter.commit)", med(commit_ms)),
                ("  of which: concatenate sweeps", med(parts["_concat"])),
                ("  of which: Zarr encoding the group in memory", med(parts["encode_group"])),
                ("  of which: Parquet tables", med(parts["_table_bytes"])),
                ("  of which: writing, fsync and SHA-256 of the files", med(parts["write_files"]))]
        for name, v in rows:
            print(f"| {name} | {v:.2f} |")
        io = med(load_ms) + med(add_ms) + med(commit_ms)
        print(f"\nI/O (read + encode + commit) {io:.2f} ms per sweep = {io / (io + med(kernel_ms)):.0%} of "
              f"kernels + I/O in one process (orchestration not included)")
        comp_ms, hash_ms = _floor(shard_writer, _filled_writer(shard_writer, scene["name"], tmp / "floor", items), args.repeats)
        floor = med(load_ms) + comp_ms + hash_ms
        print(f"floor of the store format here: read {med(load_ms):.2f} + Blosc alone {comp_ms:.2f} + SHA-256 of "
              f"its output {hash_ms:.2f} = {floor:.2f} ms per sweep = {floor / (floor + med(kernel_ms)):.0%} of "
              f"kernels + floor (no encoding, Zarr, files, fsync or orchestration)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
