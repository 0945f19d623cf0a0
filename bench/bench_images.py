"""Benchmark: can the RAD camera loader keep up? Per DataLoader worker (one thread, as torch sets in a worker),
the images/s of decode + resize/crop/flip/rotate/normalise (``train.data.camera.decode_image`` +
``warp_image`` with training augmentation) for ``torchvision.io.decode_jpeg`` and for Pillow, at the image size of a
generated dataset (the ``small`` RAD preset's network size) and at nuScenes' 1600x900 (the real fixture camera
images) to 256x704; the end-to-end ``CameraStream`` + ``collate_rad`` loader on the generated store; and the
headroom against what a RAD step consumes (6 images x batch / step seconds).

    python bench/bench_images.py [--fixtures DIR] [--dataset tiny|small] [--repeats 10] [--epochs 4]
                                 [--workers 2,4] [--step-seconds 5.0,0.25] [--batch 2,1]

Pairs ``A,B`` are (small preset, nuScenes configuration). Defaults: ``--workers`` 2 / 4 (the presets'
``data.num_workers``); ``--batch`` 2 / 1 (the presets' RAD batch per process); ``--step-seconds`` 5.0 / 0.25:
5.0 s is ``bench/bench_rad.py --configs small --batches 2`` on a 2-CPU AMD EPYC machine (5.1 s median), 0.25 s is
an assumed GPU step of the nuScenes configuration (batch 1, Swin-T 256x704) -- replace both with the step time
``bench/bench_rad.py`` measures on the training machine. Headroom = workers x per-worker images/s / consumed
images/s (per-worker rates scale with workers only while each worker has a free core; target >= 3x). The
fixtures: ``--fixtures``, else ``$CALICO_FIXTURES`` or ``../shared/fixtures`` (its ``nuscenes/*CAM_*.jpg``); the
nuScenes rows are skipped, saying so, when they are absent. Timings are machine- and load-dependent; never used
by the tests.
"""
from __future__ import annotations

import _common

_common.limit_threads(1, pin=False)  # numpy/BLAS single-threaded; torch: 1 thread per worker, set below

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)  # torchvision 0.29

NUS_WH = (1600, 900)


def _pair(text: str, kind=float) -> tuple:
    parts = [kind(v) for v in text.split(",")]
    if len(parts) != 2:
        raise SystemExit(f"expected two comma-separated values (small,nuscenes), got {text!r}")
    return tuple(parts)


def _presets():
    """(small ImageConfig, nuScenes ImageConfig) of the RAD presets (ImageConfig defaults where the presets have
    no RAD images)."""
    from train import config as tc

    out = []
    for preset in (tc.small, tc.nuscenes):
        try:
            out.append(preset(task="rad").images)
        except TypeError:  # a config without tasks
            out.append(tc.ImageConfig())
    return out


def nuscenes_images(fixtures: Path, tmp: Path) -> list[Path]:
    """The fixture camera images as 1600x900 JPEGs (re-encoded into ``tmp`` when another size); [] if absent."""
    from PIL import Image

    found = sorted((fixtures / "nuscenes").glob("*__CAM_*.jpg"))
    out = []
    for p in found:
        with Image.open(p) as im:
            if im.size == NUS_WH and im.format == "JPEG":
                out.append(p)
                continue
            q = tmp / p.name
            im.convert("RGB").resize(NUS_WH, Image.BILINEAR).save(q, quality=90)
            out.append(q)
    return out


def per_image(paths: list[Path], decoder: str, cfg, repeats: int) -> dict:
    """Median (over repeats of one pass over ``paths``) per-image ms of decode, warp and both, with the
    training augmentation drawn afresh per image (seeded)."""
    import torch

    from train.data.camera import decode_image, draw_image_aug, warp_image

    rng = np.random.default_rng(0)
    dec, warp, total = [], [], []
    for rep in range(repeats + 1):  # the first pass is a warm-up
        td = tw = 0.0
        for p in paths:
            t0 = time.perf_counter()
            img = decode_image(p, decoder)
            t1 = time.perf_counter()
            aug = draw_image_aug(rng.random(5), img.shape[2], img.shape[1], cfg)
            out = warp_image(img, aug, cfg.size, cfg.mean, cfg.std)
            t2 = time.perf_counter()
            assert out.shape == (3,) + tuple(cfg.size) and out.dtype == torch.float32
            td, tw = td + t1 - t0, tw + t2 - t1
        if rep:
            dec.append(td / len(paths))
            warp.append(tw / len(paths))
            total.append((td + tw) / len(paths))
    return {"decode_ms": 1e3 * statistics.median(dec), "warp_ms": 1e3 * statistics.median(warp),
            "total_ms": 1e3 * statistics.median(total), "images_per_s": 1.0 / statistics.median(total)}


def resize_only(path: Path, size, repeats: int) -> tuple[float, float]:
    """Median ms of the fit-width resize of one image: torch uint8 antialiased bilinear vs Pillow BILINEAR."""
    import torch.nn.functional as F
    from PIL import Image

    from train.data.camera import decode_image

    img = decode_image(path)
    h, w = img.shape[1:]
    nw, nh = size[1], int(h * size[1] / w + 1e-6)
    with Image.open(path) as im:
        pim = im.convert("RGB")
    t_torch = _common.median_ms(lambda: F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True,
                                                      align_corners=False), repeats)
    t_pil = _common.median_ms(lambda: pim.resize((nw, nh), Image.BILINEAR), repeats)
    return t_torch, t_pil


def pillow_draft_ms(path: Path, repeats: int) -> float:
    """Median ms of a Pillow decode with ``draft`` (DCT-domain 1/2 downscale; not used by the stream)."""
    from PIL import Image

    def run():
        with Image.open(path) as im:
            im.draft("RGB", (im.size[0] // 2, im.size[1] // 2))
            return np.asarray(im.convert("RGB"))

    return _common.median_ms(run, repeats)


def ensure_store(dataset: str, tmp: Path) -> tuple[str, str, Path]:
    from preprocess.run import run
    from shared.synth import generate

    root, version = generate(tmp / dataset, preset=dataset, seed=0, progress=False)
    summary = run(root, version, tmp / "store", sweeps="keyframes", workers=0, progress=False, log=None)
    return str(tmp / "store"), summary.version, Path(root)


def loader_rate(store: str, version: str, cfg, data, workers: int, batch: int, epochs: int) -> tuple[float, int]:
    """Samples/s of ``CameraStream`` + ``collate_rad`` through a DataLoader (persistent workers, so the rate is
    the steady state; one warm-up epoch), and samples per epoch."""
    import torch
    from torch.utils.data import DataLoader

    from train.data.camera import CameraStream, collate_rad

    stream = CameraStream(store, version, images=cfg, n_rich=data.n_rich, n_less=data.n_less,
                          point_range=data.point_range)
    loader = DataLoader(stream, batch_size=batch, collate_fn=collate_rad, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    n, t0 = 0, None
    for epoch in range(epochs + 1):
        if epoch == 1:
            n, t0 = 0, time.perf_counter()
        stream.set_epoch(epoch)
        for b in loader:
            n += int(b["batch_size"])
    return n / (time.perf_counter() - t0), len(stream)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", default=None,
                    help="fixtures folder (default: $CALICO_FIXTURES or ../shared/fixtures)")
    ap.add_argument("--dataset", default="tiny", choices=("tiny", "small"), help="generated dataset preset")
    ap.add_argument("--repeats", type=int, default=10, help="timed passes over the six images (median)")
    ap.add_argument("--epochs", type=int, default=4, help="timed loader epochs (after one warm-up epoch)")
    ap.add_argument("--workers", default="2,4", help="DataLoader workers small,nuscenes")
    ap.add_argument("--step-seconds", default="5.0,0.25", help="RAD step seconds small,nuscenes (see the docstring)")
    ap.add_argument("--batch", default="2,1", help="RAD batch per process small,nuscenes")
    args = ap.parse_args(argv)
    workers, steps, batch = _pair(args.workers, int), _pair(args.step_seconds), _pair(args.batch, int)

    import torch

    import train.config as tc
    from shared.paths import fixtures_dir

    torch.set_num_threads(1)  # as in a DataLoader worker
    small_img, nus_img = _presets()
    try:
        small_data = tc.small(task="rad").data
    except TypeError:
        small_data = tc.small().data
    print(_common.machine())
    print(f"torch {torch.__version__}, 1 intra-op thread (as a DataLoader worker)")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_images_") as tmp:
        tmp = Path(tmp)
        store, version, root = ensure_store(args.dataset, tmp)
        first_scene = sorted((root / "samples" / "CAM_FRONT").glob("*.jpg"))[0].name.split("__CAM_FRONT__")[0]
        synth = [next((root / "samples" / ch).glob(f"{first_scene}__*.jpg")) for ch in sorted(
            p.name for p in (root / "samples").iterdir() if p.name.startswith("CAM_"))]
        from PIL import Image

        with Image.open(synth[0]) as im:
            synth_wh = im.size
        fixtures = Path(args.fixtures).expanduser().resolve() if args.fixtures else fixtures_dir()
        nus = nuscenes_images(fixtures, tmp)
        cases = [("small", f"{args.dataset} {synth_wh[0]}x{synth_wh[1]}", synth, small_img, 0)]
        if nus:
            cases.append(("nuscenes", f"nuScenes {NUS_WH[0]}x{NUS_WH[1]}", nus, nus_img, 1))

        print()
        print("per worker: decode + warp (resize, crop, flip, rotation, normalise), training augmentation, "
              f"median of {args.repeats} passes over six images")
        print(f"{'images':22s} {'-> size':>9s} {'decoder':12s} {'decode ms':>10s} {'warp ms':>8s} {'total ms':>9s} "
              f"{'img/s':>7s}")
        rates: dict[tuple[str, str], float] = {}
        for key, label, paths, cfg, _ in cases:
            for decoder in ("torchvision", "pillow"):
                r = per_image(paths, decoder, cfg, args.repeats)
                rates[key, decoder] = r["images_per_s"]
                print(f"{label:22s} {cfg.size[0]:>4d}x{cfg.size[1]:<4d} {decoder:12s} {r['decode_ms']:10.2f} "
                      f"{r['warp_ms']:8.2f} {r['total_ms']:9.2f} {r['images_per_s']:7.1f}")
            faster = max(("torchvision", "pillow"), key=lambda d: rates[key, d])
            other = "pillow" if faster == "torchvision" else "torchvision"
            print(f"{'':22s} faster decoder: {faster} ({rates[key, faster] / rates[key, other]:.2f}x {other})")
        if not nus:
            print(f"SKIPPED the nuScenes 1600x900 rows: no fixture camera images under {fixtures / 'nuscenes'} "
                  "(pass --fixtures or set CALICO_FIXTURES)")
        else:
            t_torch, t_pil = resize_only(nus[0], nus_img.size, args.repeats)
            print(f"resize only, 1600x900 -> fit width {nus_img.size[1]}: torch uint8 antialiased {t_torch:.2f} ms, "
                  f"Pillow BILINEAR {t_pil:.2f} ms (the stream uses torch)")
            draft = pillow_draft_ms(nus[0], args.repeats)
            print(f"Pillow decode with draft (1/2 scale in the DCT; not used): {draft:.2f} ms per 1600x900 image")

        print()
        d = small_data
        w_small = workers[0]
        rate, n = loader_rate(store, version, small_img, d, w_small, batch[0], args.epochs)
        print(f"loader: CameraStream + collate_rad on the {args.dataset} store ({n} keyframes, {args.epochs} timed "
              f"epochs, persistent workers), images {small_img.size[0]}x{small_img.size[1]}, N = {d.n_rich}, "
              f"M = {d.n_less}, batch {batch[0]}")
        print(f"  {w_small} workers: {rate:.2f} samples/s = {6 * rate:.1f} images/s (this machine: "
              f"{os.cpu_count()} CPUs)")

        print()
        print(f"{'config':9s} {'step s':>7s} {'batch':>5s} {'consumes img/s':>15s} {'workers':>7s} "
              f"{'decoder':12s} {'loader img/s':>13s} {'headroom':>9s}  target >= 3x")
        for key, _, _, _, i in cases:
            consumed = 6 * batch[i] / steps[i]
            for decoder in ("torchvision", "pillow"):
                supply = workers[i] * rates[key, decoder]
                ok = "ok" if supply / consumed >= 3 else "BELOW"
                print(f"{key:9s} {steps[i]:7.2f} {batch[i]:5d} {consumed:15.1f} {workers[i]:7d} {decoder:12s} "
                      f"{supply:13.1f} {supply / consumed:8.1f}x  {ok}")
            if key == "small":
                print(f"{'':9s} measured loader ({w_small} workers, points included): {6 * rate:.1f} img/s -> "
                      f"{6 * rate / consumed:.1f}x")
    print(f"(per-worker rates x workers assume a free core per worker; total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
