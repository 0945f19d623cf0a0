"""Benchmark: does the PRC loader keep up with training? Loader sweeps/s (``PRCStream`` + ``collate_prc`` through
a ``DataLoader``, the `small` preset's sampling and batch size) with the default worker count of
``train.config.DataConfig`` and with 0 workers, against the sweeps/s a training step consumes (batch size /
median time of forward + backward + gradient clipping + AdamW step of ``PRCModel`` on the small preset, on real
batches of the same store, measured in the same run). Headroom = loader sweeps/s / step sweeps/s (target >= 3).
Also the cost of checking the shards against their manifests (``data_catalog.reader.check_shard``: sizes, and
the SHA-256 of every file, which a process does once per shard; ``data.verify_shards`` / ``--no-verify-shards``):
ms per shard, MiB/s, and the whole version's check as a share of one loader epoch at 0 workers and of one
training epoch at the measured step rate (files in the page cache).

    python bench/bench_loader.py [--store S] [--version ID] [--workers 2,0] [--epochs 3] [--steps 10]
                                 [--threads 2] [--dataset tiny|small]

``--store``: a store folder (e.g. of the generated ``small`` preset); when absent or empty a dataset of
``--dataset`` is generated and preprocessed (keyframes, workers=0) in a temporary folder first. Loader timing:
``--epochs`` full epochs after one warm-up epoch, each epoch as the training loop runs it (``set_epoch``, a
fresh iteration of the same DataLoader: workers start again every epoch). Timings are machine- and
load-dependent; never used by the tests.
"""
from __future__ import annotations

import _common

_common.limit_threads(1, pin=False)  # numpy/BLAS single-threaded; torch's intra-op threads: --threads

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def ensure_store(store: str | None, dataset: str, tmp: Path) -> tuple[str, str | None]:
    """(store folder, version or None) to benchmark on: ``store`` when it holds a version, else a new one."""
    if store and (Path(store) / "versions").is_dir() and any((Path(store) / "versions").iterdir()):
        return store, None
    from preprocess.run import run
    from shared.synth import generate

    print(f"no store at {store!r}: generating the {dataset!r} dataset and its store in {tmp}")
    root, version = generate(tmp / dataset, preset=dataset, seed=0, progress=False)
    summary = run(root, version, tmp / "store", sweeps="keyframes", workers=0, progress=False, log=None)
    return str(tmp / "store"), summary.version


def loader_rate(cfg, workers: int, epochs: int) -> tuple[float, int]:
    """Sweeps/s of ``epochs`` epochs (after a warm-up epoch) with ``workers`` DataLoader workers; and sweeps/epoch."""
    import torch
    from torch.utils.data import DataLoader

    from train.data import PRCStream, collate_prc

    d = cfg.data
    stream = PRCStream(d.store, d.version, n_rich=d.n_rich, n_less=d.n_less, seed=d.seed,
                       point_range=d.point_range, shuffle_scenes=d.shuffle_scenes)
    loader = DataLoader(stream, batch_size=d.batch_size, collate_fn=collate_prc, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    n = 0
    t0 = None
    for epoch in range(epochs + 1):
        if epoch == 1:
            t0, n = time.perf_counter(), 0
        stream.set_epoch(epoch)
        for batch in loader:
            n += int(batch["batch_size"])
    return n / (time.perf_counter() - t0), len(stream)


def verify_cost(store: str, version: str | None, repeats: int = 3) -> tuple[list[float], list[float], int]:
    """(ms per shard with checksums, ms per shard sizes only, total bytes), each the median of ``repeats``
    checks of every shard of the version (hashing again each time: ``check_shard(cached=False)``)."""
    from data_catalog.reader import check_shard, open_version

    v = open_version(store, version, verify_checksums=False)
    shards = [v.scene(s) for s in v.scenes()]
    full, sizes = [], []
    for sh in shards:
        for checksums, out in ((True, full), (False, sizes)):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                check_shard(sh.path, sh.manifest, checksums, cached=False)
                times.append(time.perf_counter() - t0)
            out.append(statistics.median(times) * 1e3)
    return full, sizes, sum(f["bytes"] for sh in shards for f in sh.manifest["files"].values())


def step_rate(cfg, steps: int) -> tuple[float, float]:
    """(median step seconds, sweeps/s consumed) of forward + backward + clip + AdamW on real batches."""
    import torch
    from torch.utils.data import DataLoader

    from train.data import PRCStream, collate_prc
    from train.tasks.prc import PRCModel

    d = cfg.data
    stream = PRCStream(d.store, d.version, n_rich=d.n_rich, n_less=d.n_less, seed=d.seed,
                       point_range=d.point_range)
    batches = []
    while len(batches) < steps + 1:
        stream.set_epoch(len(batches))
        batches += list(DataLoader(stream, batch_size=d.batch_size, collate_fn=collate_prc, num_workers=0))
    torch.manual_seed(0)
    model = PRCModel(cfg.prc)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    times = []
    for i, batch in enumerate(batches[:steps + 1]):
        t0 = time.perf_counter()
        loss = model(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return med, d.batch_size / med


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=None, help="store folder (default: generate one in a temporary folder)")
    ap.add_argument("--version", default=None, help="store version (default: the latest)")
    ap.add_argument("--dataset", default="tiny", choices=("tiny", "small"), help="preset generated without --store")
    ap.add_argument("--workers", default=None,
                    help="comma-separated DataLoader worker counts (default: DataConfig's default and 0)")
    ap.add_argument("--epochs", type=int, default=3, help="timed loader epochs (after one warm-up epoch)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps (median; after one warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args(argv)

    import torch

    from train.config import DataConfig, small, with_overrides

    torch.set_num_threads(args.threads)
    default_workers = DataConfig().num_workers
    workers = [default_workers, 0] if args.workers is None else [int(w) for w in args.workers.split(",")]
    print(_common.machine())
    print(f"torch {torch.__version__}, {args.threads} intra-op threads")
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        store, version = ensure_store(args.store, args.dataset, Path(tmp))
        cfg = with_overrides(small(store, version or args.version), [])
        med, consumed = step_rate(cfg, args.steps)
        d = cfg.data
        print(f"store {store}; small preset: batch {d.batch_size}, N = {d.n_rich}, M = {d.n_less}, "
              f"range +-{d.point_range[3]:g} m")
        print(f"training step (forward + backward + AdamW, median of {args.steps}): {med * 1e3:.0f} ms "
              f"-> consumes {consumed:.2f} sweeps/s")
        print()
        print(f"{'loader':28s} {'sweeps/s':>10s} {'step sweeps/s':>14s} {'headroom':>9s}  target >= 3x")
        rates = {}
        for w in workers:
            rate, n = loader_rate(cfg, w, args.epochs)
            rates[w] = rate
            label = f"{w} workers" + (" (DataConfig default)" if w == default_workers else "")
            ok = "ok" if rate / consumed >= 3 else "BELOW"
            print(f"{label:28s} {rate:10.1f} {consumed:14.2f} {rate / consumed:8.1f}x  {ok}")
        print(f"({n} sweeps per epoch, {args.epochs} timed epochs per row)")
        print()
        full, sizes, nbytes = verify_cost(store, version or args.version)
        epoch_ms = 1e3 * n / rates.get(0, next(iter(rates.values())))
        print(f"shard check (once per shard per process), {len(full)} shards, {nbytes / 2**20:.1f} MiB:")
        print(f"  sizes + SHA-256: {statistics.mean(full):.2f} ms per shard (median {statistics.median(full):.2f}), "
              f"{nbytes / 2**20 / (sum(full) / 1e3):.0f} MiB/s; the whole version {sum(full):.1f} ms = "
              f"{100 * sum(full) / epoch_ms:.1f} % of one epoch ({epoch_ms:.0f} ms at "
              f"{0 if 0 in rates else workers[0]} workers)")
        print(f"  = {100 * sum(full) / (1e3 * n / consumed):.3f} % of a training epoch ({n / consumed:.1f} s at "
              f"the step rate above)")
        print(f"  sizes only (--no-verify-shards): {statistics.mean(sizes):.3f} ms per shard")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
