"""Benchmark of the camera BEV branch (timm backbone + FPN neck + LSS view transform + BEV encoder): median time
of a training step (forward + backward + AdamW step) on synthetic six-camera batches, and peak memory, for

* ``small``: ``CameraConfig.small()`` (ResNet-18 stages 2-4, 96x256) and ``LSSConfig.matching(
  PointPillarsConfig.small(), channels=16, bev_channels=32)`` (64x64 cells of 0.8 m), batch 2;
* ``nuscenes``: ``CameraConfig()`` (Swin-T at 256x704, 256-channel neck) and ``LSSConfig()`` (118 depth bins,
  80 channels, 128x128 cells of 0.8 m, 256 output channels), batch 1.

    python bench/bench_camera.py [--device cpu|cuda] [--threads 2] [--steps 3] [--nus-steps 2]
                                 [--configs small,nuscenes] [--batch-small 2] [--batch-nus 1]

Each configuration runs in its own subprocess so that peak memory is its own: on CPU the growth of the process's
maximum resident set size (``ru_maxrss``) from just before the model is built to the end of the timed steps
(model, optimizer state, activations); on CUDA ``torch.cuda.max_memory_allocated``. The synthetic rig: six
cameras at nuScenes-like yaws (0, +-55, +-110, 180 degrees), 1.6 m high, 1600x900 originals with f = 1266 px,
resized and cropped to the network input (``img_aug``); ``bev_aug`` a 30 degree rotation, scale 1.05. One
warm-up step is excluded. Timings are machine- and load-dependent; never used by the tests.
"""
from __future__ import annotations

import _common

_common.limit_threads(1, pin=False)  # numpy/BLAS single-threaded; torch's intra-op threads: --threads

import argparse
import json
import math
import os
import resource
import subprocess
import sys

import numpy as np

ORIG_W, ORIG_H, FOCAL = 1600, 900, 1266.0
YAWS_DEG = (0.0, -55.0, -110.0, 180.0, 110.0, 55.0)


def synthetic_batch(b: int, image_size: tuple[int, int], seed: int = 0) -> dict:
    """A camera batch in the CameraBEV contract (see train/models/lss.py) for ``b`` scans of six cameras."""
    import torch

    from shared import augment_params

    h, w = image_size
    s = max(h / ORIG_H, w / ORIG_W) * 1.05  # resize so that the crop fits, then crop the bottom centre
    crop = ((ORIG_W * s - w) // 2, ORIG_H * s - h)
    aug = np.array([[s, 0, 0.5 * s - 0.5 - crop[0]], [0, s, 0.5 * s - 0.5 - crop[1]], [0, 0, 1]])  # pixel centres
    k = np.array([[FOCAL, 0, ORIG_W / 2], [0, FOCAL, ORIG_H / 2], [0, 0, 1]])
    l2c = []
    for yaw in np.radians(YAWS_DEG):
        fwd, right, down = [math.cos(yaw), math.sin(yaw), 0], [math.sin(yaw), -math.cos(yaw), 0], [0, 0, -1]
        c2l = np.eye(4)
        c2l[:3, :3] = np.array([right, down, fwd]).T
        c2l[:3, 3] = [0.5 * fwd[0], 0.5 * fwd[1], 1.6]
        l2c.append(np.linalg.inv(c2l))
    g = torch.Generator().manual_seed(seed)
    view = np.array([math.radians(30), 1.05, 0, 0, 0, 0, 0], np.float32)
    f32 = torch.float32
    return {"images": torch.randn(b, 6, 3, h, w, generator=g),
            "cam_intrinsic": torch.tensor(k, dtype=f32).expand(b, 6, 3, 3).contiguous(),
            "img_aug": torch.tensor(aug, dtype=f32).expand(b, 6, 3, 3).contiguous(),
            "lidar2cam": torch.tensor(np.stack(l2c), dtype=f32).expand(b, 6, 4, 4).contiguous(),
            "bev_aug": torch.tensor(augment_params.as_matrix(view), dtype=f32).expand(b, 4, 4).contiguous(),
            "cam_valid": torch.ones(b, 6, dtype=torch.bool)}


def configs(name: str):
    from train.model_config import CameraConfig, LSSConfig, PointPillarsConfig

    if name == "small":
        return CameraConfig.small(), LSSConfig.matching(PointPillarsConfig.small(), channels=16, bev_channels=32)
    if name == "nuscenes":
        return CameraConfig(), LSSConfig()
    raise SystemExit(f"unknown configuration {name!r} (small, nuscenes)")


def run_one(config: str, b: int, steps: int, device: str) -> dict:
    """Time ``steps`` training steps of one configuration in this process; returns a JSON-able dict."""
    import torch

    from train.models.lss import CameraBEV, image_to_bev

    torch.manual_seed(0)
    cam, lss = configs(config)
    batch = {k: v.to(device) for k, v in synthetic_batch(b, cam.image_size).items()}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = CameraBEV(cam, lss).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    h, w = lss.grid_size
    weight = torch.randn(1, lss.bev_channels, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = (model(batch) * weight).mean()  # not out.mean(): BatchNorm would zero its gradient
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        return loss.item()

    times, peak_mib = _common.timed_steps(step, steps, cuda, rss0)
    with torch.no_grad():  # how many frustum points land in the grid (what the splat sums)
        vt = model.view_transform
        xyz = image_to_bev(vt.frustum, batch["cam_intrinsic"], batch["img_aug"], batch["lidar2cam"], batch["bev_aug"])
        r = lss.point_range
        kept = ((xyz[..., 0] >= r[0]) & (xyz[..., 0] < r[3]) & (xyz[..., 1] >= r[1]) & (xyz[..., 1] < r[4])
                & (xyz[..., 2] >= r[2]) & (xyz[..., 2] < r[5])).sum().item()
    d, fh, fw, _ = vt.frustum.shape
    return {"config": config, "batch": b, "backbone": cam.backbone, "input": "x".join(map(str, cam.image_size)),
            "frustum": f"{d}x{fh}x{fw}", "kept_frac": kept / (b * 6 * d * fh * fw),
            "bev": f"{lss.bev_channels}x{h}x{w}", "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "median_s": float(np.median(times)), "min_s": float(np.min(times)), "steps": steps, "peak_mib": peak_mib}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    ap.add_argument("--steps", type=int, default=3, help="timed steps, small configuration (median)")
    ap.add_argument("--nus-steps", type=int, default=2, help="timed steps, nuScenes configuration (median)")
    ap.add_argument("--configs", default="small,nuscenes")
    ap.add_argument("--batch-small", type=int, default=2, help="scans (of six cameras) per batch, small")
    ap.add_argument("--batch-nus", type=int, default=1, help="scans (of six cameras) per batch, nuScenes")
    ap.add_argument("--one", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        small = args.one == "small"
        print(json.dumps(run_one(args.one, args.batch_small if small else args.batch_nus,
                                 args.steps if small else args.nus_steps, args.device)))
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda asked for but no CUDA device is available", file=sys.stderr)
        return 2
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {args.threads} torch threads"
    print(f"machine: {_common.machine()}, torch {torch.__version__}; device: {dev}")
    print("six synthetic cameras per scan; forward + backward + AdamW step; peak memory: "
          f"{'max_memory_allocated' if args.device.startswith('cuda') else 'RSS growth'}")
    hdr = (f"{'config':<9} {'backbone':<29} {'input':>7} {'frustum':>10} {'kept':>5} {'bev':>11} {'params M':>8} "
           f"{'batch':>5} {'steps':>5} {'median s':>9} {'min s':>8} {'peak MiB':>9}")
    print(hdr)
    print("-" * len(hdr))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       os.environ.get("PYTHONPATH", "")]))
    for cfg in args.configs.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--one", cfg, "--device", args.device,
               "--threads", str(args.threads), "--steps", str(args.steps), "--nus-steps", str(args.nus_steps),
               "--batch-small", str(args.batch_small), "--batch-nus", str(args.batch_nus)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if res.returncode:
            print(f"{cfg:<9}: failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{r['config']:<9} {r['backbone']:<29} {r['input']:>7} {r['frustum']:>10} {r['kept_frac']:>5.2f} "
              f"{r['bev']:>11} {r['params_m']:>8.2f} {r['batch']:>5} {r['steps']:>5} {r['median_s']:>9.3f} "
              f"{r['min_s']:>8.3f} {r['peak_mib']:>9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
