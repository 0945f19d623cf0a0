"""Benchmark of a PRC pre-training step (forward + backward + AdamW step) on synthetic batches: median step time,
scans/s a step consumes (what the loader must deliver), and peak memory, for the small CPU configuration and the
nuScenes default configuration (+-51.2 m, pillar 0.2 m, 512x512 pillars, 128x128 x 384 output), batch 1 and 2.

    python bench/bench_train.py [--device cpu|cuda] [--threads 2] [--points 34000] [--steps 5] [--nus-steps 2]
                                [--configs small,nuscenes] [--batches 1,2]

Each (configuration, batch) runs in its own subprocess so that peak memory is its own: on CPU the growth of the
process's maximum resident set size (``ru_maxrss``) from just before the model is built to the end of the timed
steps (model, optimizer state, activations); on CUDA ``torch.cuda.max_memory_allocated``. The synthetic scan:
``--points`` points, 60 % in 120 semantic-rich blobs of a few metres, the rest semantic-less, denser near the
sensor; view 1 is view 0 rotated about z in [-90, 90] degrees and scaled in [0.9, 1.1]; N = M = 1024 sampled points
per scan. One warm-up step is excluded. Timings are machine- and load-dependent; never used by the tests.
"""
from __future__ import annotations

import _common

_common.limit_threads(1, pin=False)  # numpy/BLAS single-threaded; torch's intra-op threads: --threads

import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np


def synthetic_batch(b: int, n_points: int, n_rich: int, n_less: int, half: float, seed: int = 0) -> dict:
    """A batch in the train.data contract (see train/prc.py) with ``b`` synthetic scans of ``n_points`` points."""
    import torch

    from shared import augment_params

    rng = np.random.default_rng(seed)
    pts, bidx, reg, samples = [], [], [], []
    for s in range(b):
        n_blob = int(0.6 * n_points)
        centres = rng.uniform(-0.8 * half, 0.8 * half, size=(120, 2))
        lab = rng.integers(0, 120, size=n_blob)
        blob = centres[lab] + rng.normal(0, 1.5, (n_blob, 2))
        r = half * rng.random(n_points - n_blob) ** 2  # denser near the sensor, like a spinning LiDAR
        phi = rng.uniform(0, 2 * np.pi, n_points - n_blob)
        ground = np.column_stack([r * np.cos(phi), r * np.sin(phi)])
        xy = np.concatenate([blob, ground])
        z = np.concatenate([rng.uniform(-1.5, 1.0, n_blob), rng.uniform(-1.9, -1.7, n_points - n_blob)])
        pts.append(np.column_stack([xy, z, rng.random(n_points)]))
        bidx.append(np.full(n_points, s))
        region = np.concatenate([lab + 1000 * s, np.full(n_points - n_blob, -1)])
        reg.append(region)
        samples.append(np.concatenate([rng.choice(n_blob, n_rich), n_blob + rng.choice(n_points - n_blob, n_less)])
                       + s * n_points)
    p0 = np.concatenate(pts).astype(np.float32)
    view = np.array([rng.uniform(-np.pi / 2, np.pi / 2), rng.uniform(0.9, 1.1), 0, 0, 0, 0, 0], np.float32)
    p1 = augment_params.apply(p0, view).astype(np.float32)
    return {"points": torch.from_numpy(np.stack([p0, p1])), "batch_idx": torch.from_numpy(np.concatenate(bidx)),
            "region": torch.from_numpy(np.concatenate(reg)), "sample_idx": torch.from_numpy(np.stack(samples)),
            "sample_valid": torch.ones(b, n_rich + n_less, dtype=torch.bool), "batch_size": b}


def run_one(config: str, b: int, n_points: int, steps: int, device: str) -> dict:
    """Time ``steps`` training steps of one configuration in this process; returns a JSON-able dict."""
    import torch

    from train.models.pointpillars import PointPillarsConfig
    from train.tasks.prc import PRCConfig, PRCModel

    torch.manual_seed(0)
    bb = PointPillarsConfig.small() if config == "small" else PointPillarsConfig()
    cfg = PRCConfig(backbone=bb, n_rich=1024, n_less=1024)
    batch = synthetic_batch(b, n_points, cfg.n_rich, cfg.n_less, bb.point_range[3])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = PRCModel(cfg).to(device).train()
    times, peak_mib = _common.timed_training(model, batch, steps, device, False, rss0)
    return {"config": config, "batch": b, "grid": "x".join(map(str, bb.grid_size)),
            "out": f"{bb.out_channels}x{'x'.join(map(str, bb.out_size))}",
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "median_s": float(np.median(times)), "min_s": float(np.min(times)), "steps": steps,
            "peak_mib": peak_mib}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    ap.add_argument("--points", type=int, default=34000, help="points per synthetic scan")
    ap.add_argument("--steps", type=int, default=5, help="timed steps, small configuration (median)")
    ap.add_argument("--nus-steps", type=int, default=2, help="timed steps, nuScenes configuration (median)")
    ap.add_argument("--configs", default="small,nuscenes")
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        cfg, b = args.one[0], int(args.one[1])
        steps = args.steps if cfg == "small" else args.nus_steps
        print(json.dumps(run_one(cfg, b, args.points, steps, args.device)))
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda asked for but no CUDA device is available", file=sys.stderr)
        return 2
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {args.threads} torch threads"
    print(f"machine: {_common.machine()}, torch {torch.__version__}; device: {dev}")
    print(f"synthetic scans of {args.points} points, N = M = 1024 sampled points per scan; forward + backward + "
          f"AdamW step; peak memory: {'max_memory_allocated' if args.device.startswith('cuda') else 'RSS growth'}")
    hdr = f"{'config':<9} {'grid':>8} {'output':>12} {'params M':>8} {'batch':>5} {'steps':>5} " \
          f"{'median s':>9} {'min s':>8} {'scans/s':>8} {'peak MiB':>9}"
    print(hdr)
    print("-" * len(hdr))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       os.environ.get("PYTHONPATH", "")]))
    for cfg in args.configs.split(","):
        for b in args.batches.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--one", cfg, b, "--device", args.device,
                   "--threads", str(args.threads), "--points", str(args.points), "--steps", str(args.steps),
                   "--nus-steps", str(args.nus_steps)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if res.returncode:
                print(f"{cfg:<9} batch {b}: failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{r['config']:<9} {r['grid']:>8} {r['out']:>12} {r['params_m']:>8.2f} {r['batch']:>5} "
                  f"{r['steps']:>5} {r['median_s']:>9.3f} {r['min_s']:>8.3f} {r['batch'] / r['median_s']:>8.2f} "
                  f"{r['peak_mib']:>9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
