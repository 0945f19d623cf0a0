"""Benchmark of a fine-tuning step (detection or BEV segmentation: forward, loss, backward, AdamW step) on synthetic
batches, and of the validation pass (forward, decode, devkit scoring) on a real store: median step time and peak
memory per (preset, task, modality, batch), evaluation seconds per 100 keyframes.

    python bench/bench_finetune.py [--device cpu|cuda] [--threads 2] [--steps 3] [--nus-steps 2] [--amp]
        [--cases small:det:lidar:2,small:seg:lidar:2,small-wide:det:lidar:2,nuscenes:det:lidar:1,...]
        [--eval-store STORE [--eval-preset small-wide] [--eval-batch 2]]

A case is ``preset:task:modality:batch``. The defaults cover the small CPU presets (LiDAR) and the nuScenes
configuration (PointPillars at 0.2 m, 512 x 512 pillars, CenterPoint's head, the 200 x 200 / 0.5 m segmentation
grid) with LiDAR, camera (Swin-T at 256 x 704, six cameras, LSS onto the 128 x 128 / 0.8 m grid) and fused input.
Each case runs in its own subprocess so that its peak memory is its own (CPU: growth of ``ru_maxrss`` from just
before the model is built; CUDA: ``torch.cuda.max_memory_allocated``); one warm-up step is excluded.

The batch: scans of ``bench_train.synthetic_batch`` (view 0, 34,000 points, a time-lag column of zeros), CenterPoint
targets of 40 random boxes per scan (``train.data.det_targets.center_targets``) or a random 0/1 raster of the six
map classes, and for camera / fusion the six-camera part of ``bench_camera.synthetic_batch``. The evaluation
(``--eval-store``): the preset's model (random weights) on the validation keyframes of a real store through the
task's own ``evaluate`` (det: decode + submission + ``DetectionEval``; seg: IoU over thresholds), timed once
after one warm-up pass; random weights give the devkit many low-score boxes, so this is the evaluation's cost at
its 500-box cap, an upper bound. Timings depend on the machine and its load; never used by the tests.
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
import time

import numpy as np

DEFAULT_CASES = ("small:det:lidar:2,small:seg:lidar:2,small-wide:det:lidar:2,small-wide:seg:lidar:2,"
                 "nuscenes:det:lidar:1,nuscenes:seg:lidar:1,nuscenes:det:camera:1,nuscenes:det:fusion:1,"
                 "nuscenes:seg:fusion:1")


def finetune_config(preset: str, task: str, modality: str, store: str = "", version: str | None = None):
    """The preset's fine-tuning config with ``modality`` and one LiDAR sweep (the synthetic scans have one)."""
    from train.config import PRESETS, with_overrides

    return with_overrides(PRESETS[preset](store, version, task=task, modality=modality),
                          ["model.finetune.lidar_sweeps=1"])


def synthetic_batch(cfg, b: int, seed: int = 0) -> dict:
    """A fine-tuning batch of ``b`` synthetic scans in the ``collate_finetune`` contract (module docstring)."""
    import torch

    from bench_train import synthetic_batch as scans
    from train.data.det_targets import center_targets
    from train.data.finetune import seg_grid

    rng = np.random.default_rng(seed)
    bb, d = cfg.backbone, cfg.data
    pts = scans(b, 34000, d.n_rich, d.n_less, bb.point_range[3], seed=seed)
    p = pts["points"][0]
    batch = {"points": torch.cat([p, torch.zeros(len(p), 1)], 1), "batch_idx": pts["batch_idx"],
             "batch_size": b, "tokens": [f"bench-{i}" for i in range(b)],
             "aug": torch.tensor([[0, 1, 0, 0, 0, 0, 0]] * b, dtype=torch.float32)}
    if cfg.task == "det":
        half = bb.point_range[3] * 0.9
        targets = []
        for _ in range(b):
            n = 40
            boxes = np.column_stack([rng.uniform(-half, half, (n, 2)), rng.uniform(-1.5, 0.5, n),
                                     rng.uniform(0.5, 2.5, n), rng.uniform(0.5, 6.0, n), rng.uniform(1.0, 3.0, n),
                                     rng.uniform(-np.pi, np.pi, n), rng.normal(0, 3, (n, 2))])
            targets.append(center_targets(boxes, rng.integers(0, 10, n), cfg.center_head))
        for k, dtype in (("heatmap", torch.float32), ("ind", torch.int64), ("mask", torch.bool),
                         ("cat", torch.int64), ("reg", torch.float32), ("reg_weight", torch.float32)):
            batch[k] = torch.from_numpy(np.stack([getattr(t, k) for t in targets])).to(dtype)
    else:
        g = seg_grid(cfg.finetune)
        batch["seg"] = torch.from_numpy(rng.random((b, 6, *g.shape)) < 0.3).float()
    if cfg.finetune.modality != "lidar":
        from bench_camera import synthetic_batch as camera_batch

        batch |= camera_batch(b, cfg.camera.image_size, seed=seed)
    return batch


def run_one(preset: str, task: str, modality: str, b: int, steps: int, device: str, amp: bool) -> dict:
    """Time ``steps`` fine-tuning steps of one case in this process; returns a JSON-able dict."""
    import torch

    from train.loop import finetune_task

    torch.manual_seed(0)
    cfg = finetune_config(preset, task, modality)
    batch = synthetic_batch(cfg, b)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = finetune_task(cfg).model_class(cfg).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    times, peak_mib = _common.timed_training(model, batch, steps, device, amp, rss0)
    cuda = device.startswith("cuda")
    med = float(np.median(times))
    return {"case": f"{preset}:{task}:{modality}:{b}", "preset": preset, "task": task, "modality": modality,
            "batch": b, "grid": "x".join(map(str, cfg.backbone.grid_size)), "amp": bool(cuda and amp),
            "params_m": sum(p.numel() for p in params) / 1e6, "median_s": med, "min_s": float(np.min(times)),
            "max_s": float(np.max(times)), "steps": steps, "samples_per_s": b / med, "peak_mib": peak_mib}


def run_eval(store: str, preset: str, task: str, batch: int, device: str) -> dict:
    """Seconds per 100 validation keyframes of ``task``'s evaluation on ``store`` (module docstring)."""
    import torch

    from train.loop import finetune_task

    torch.manual_seed(0)
    cfg = finetune_config(preset, task, "lidar", store)
    from train.config import with_overrides

    cfg = with_overrides(cfg, [f"data.batch_size={batch}"])
    job = finetune_task(cfg)
    model = job.model_class(cfg).to(device).eval()
    n = len(job.eval_stream().sample_tokens)
    times = []
    with torch.no_grad():
        for _ in range(2):  # the first pass warms the caches (shards, devkit tables); the second is timed
            t0 = time.perf_counter()
            job.evaluate(model)
            times.append(time.perf_counter() - t0)
    return {"store": store, "preset": preset, "task": task, "keyframes": n, "first_s": times[0],
            "second_s": times[1], "s_per_100": 100.0 * times[1] / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    ap.add_argument("--steps", type=int, default=3, help="timed steps of the small presets (median)")
    ap.add_argument("--nus-steps", type=int, default=2, help="timed steps of the nuScenes configuration (median)")
    ap.add_argument("--cases", default=DEFAULT_CASES, help="preset:task:modality:batch, comma-separated")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only, as the loop)")
    ap.add_argument("--eval-store", help="a store version folder's store: also time the evaluation on it")
    ap.add_argument("--eval-preset", default="small-wide")
    ap.add_argument("--eval-batch", type=int, default=2)
    ap.add_argument("--one", nargs=4, metavar=("PRESET", "TASK", "MODALITY", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--one-eval", metavar="TASK", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        preset, task, modality, b = args.one
        steps = args.nus_steps if preset == "nuscenes" else args.steps
        print(json.dumps(run_one(preset, task, modality, int(b), steps, args.device, args.amp)))
        return 0
    if args.one_eval:
        print(json.dumps(run_eval(args.eval_store, args.eval_preset, args.one_eval, args.eval_batch, args.device)))
        return 0
    print(_common.machine())
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} intra-op threads")
    print(f"{'case':28s} {'pillars':>8s} {'params M':>9s} {'median s':>9s} {'min-max s':>12s} {'samples/s':>10s} "
          f"{'peak MiB':>9s}")
    here = os.path.abspath(__file__)
    base = [sys.executable, here, "--device", args.device, "--threads", str(args.threads), "--steps",
            str(args.steps), "--nus-steps", str(args.nus_steps)] + (["--amp"] if args.amp else [])
    for case in args.cases.split(","):
        parts = case.split(":")
        if len(parts) != 4:
            print(f"{case}: not preset:task:modality:batch")
            continue
        res = subprocess.run(base + ["--one", *parts], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(f"{case:28s} failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else '?'}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{r['case']:28s} {r['grid']:>8s} {r['params_m']:9.2f} {r['median_s']:9.3f} "
              f"{r['min_s']:5.2f}-{r['max_s']:<6.2f} {r['samples_per_s']:10.2f} {r['peak_mib']:9.0f}")
    if args.eval_store:
        print(f"\nevaluation on {args.eval_store} ({args.eval_preset}, batch {args.eval_batch}, random weights)")
        for task in ("det", "seg"):
            res = subprocess.run(base + ["--one-eval", task, "--eval-store", args.eval_store, "--eval-preset",
                                         args.eval_preset, "--eval-batch", str(args.eval_batch)],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(f"{task}: failed: {res.stderr.strip()[-1500:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{task}: {r['keyframes']} keyframes, first pass {r['first_s']:.1f} s, second {r['second_s']:.1f} s"
                  f" -> {r['s_per_100']:.1f} s per 100 keyframes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
