"""Benchmark of a RAD distillation step (frozen teacher forward + camera branch forward/backward + AdamW step) on
synthetic batches: median step time, images/s a step consumes (what the image loader must deliver; compare with
``bench/bench_images.py``), and peak memory, for the ``small`` CPU preset and the nuScenes configuration (Swin-T at
256x704, six cameras, FPN 256, LSS 118 bins x 80 channels onto the 128x128 / 0.8 m grid of the +-51.2 m
PointPillars teacher), batch 1 (and 2 for small).

    python bench/bench_rad.py [--device cpu|cuda] [--threads 2] [--steps 3] [--nus-steps 2]
                              [--configs small,nuscenes] [--batches 1,2] [--amp]

Each (configuration, batch) runs in its own subprocess so that peak memory is its own: on CPU the growth of the
process's maximum resident set size (``ru_maxrss``) from just before the model is built to the end of the timed
steps; on CUDA ``torch.cuda.max_memory_allocated``. The batch: the points of ``bench_train.synthetic_batch`` (view
0) and the six-camera part of ``bench_camera.synthetic_batch`` (random images, a nuScenes-like rig, resize and
crop to the input, a rotated and scaled ``bev_aug``). One warm-up step is excluded. Timings are machine- and
load-dependent; never used by the tests.
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


def run_one(config: str, b: int, steps: int, device: str, amp: bool) -> dict:
    """Time ``steps`` RAD steps of one configuration in this process; returns a JSON-able dict."""
    import torch

    from bench_camera import synthetic_batch as camera_batch
    from bench_train import synthetic_batch
    from train.config import nuscenes, small
    from train.tasks.rad import RADModel

    torch.manual_seed(0)
    cfg = (small if config == "small" else nuscenes)("", None, task="rad")
    bb, d = cfg.backbone, cfg.data
    pts = synthetic_batch(b, 34000, d.n_rich, d.n_less, bb.point_range[3])
    batch = {"points": pts["points"][:1], "batch_idx": pts["batch_idx"], "region": pts["region"],
             "sample_idx": pts["sample_idx"], "sample_valid": pts["sample_valid"], "batch_size": b,
             **camera_batch(b, cfg.camera.image_size)}
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = RADModel(cfg).to(device).train()
    model.teacher.requires_grad_(False).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    times, peak_mib = _common.timed_training(model, batch, steps, device, amp, rss0)
    cuda = device.startswith("cuda")
    med = float(np.median(times))
    return {"config": config, "batch": b, "backbone": cfg.camera.backbone,
            "input": "x".join(map(str, cfg.camera.image_size)), "bins": cfg.lss.num_bins,
            "bev": "x".join(map(str, cfg.lss.grid_size)), "amp": bool(cuda and amp),
            "params_m": sum(p.numel() for p in params) / 1e6, "median_s": med, "min_s": float(np.min(times)),
            "max_s": float(np.max(times)), "steps": steps, "images_per_s": 6 * b / med, "peak_mib": peak_mib}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    ap.add_argument("--steps", type=int, default=3, help="timed steps, small configuration (median)")
    ap.add_argument("--nus-steps", type=int, default=2, help="timed steps, nuScenes configuration (median)")
    ap.add_argument("--configs", default="small,nuscenes")
    ap.add_argument("--batches", default="1,2", help="batch sizes of the small configuration (nuScenes: 1)")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only, as the loop)")
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        cfg, b = args.one[0], int(args.one[1])
        steps = args.steps if cfg == "small" else args.nus_steps
        print(json.dumps(run_one(cfg, b, steps, args.device, args.amp)))
        return 0
    print(_common.machine())
    import torch

    print(f"torch {torch.__version__}, device {args.device}, {args.threads} intra-op threads")
    print(f"{'config':9s} {'batch':>5s} {'camera':>30s} {'input':>8s} {'bins':>4s} {'bev':>8s} {'params M':>9s} "
          f"{'median s':>9s} {'min-max s':>12s} {'img/s':>7s} {'peak MiB':>9s}")
    here = os.path.dirname(os.path.abspath(__file__))
    for cfg in args.configs.split(","):
        for b in ([int(x) for x in args.batches.split(",")] if cfg == "small" else [1]):
            cmd = [sys.executable, os.path.join(here, "bench_rad.py"), "--one", cfg, str(b), "--device", args.device,
                   "--threads", str(args.threads), "--steps", str(args.steps), "--nus-steps", str(args.nus_steps)]
            res = subprocess.run(cmd + (["--amp"] if args.amp else []), capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(f"{cfg} batch {b}: failed\n{res.stderr[-2000:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{r['config']:9s} {r['batch']:5d} {r['backbone']:>30s} {r['input']:>8s} {r['bins']:4d} "
                  f"{r['bev']:>8s} {r['params_m']:9.2f} {r['median_s']:9.3f} "
                  f"{r['min_s']:5.2f}-{r['max_s']:<6.2f} {r['images_per_s']:7.1f} {r['peak_mib']:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
