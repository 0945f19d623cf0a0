"""Regenerate the pictures of docs/preprocess.md (docs/img/regions_*.png) from the real fixtures.

    python bench/make_pictures.py [--out docs/img]

- ``regions_bev_n015.png``, ``regions_bev_kitti000000.png``: bird's-eye view coloured by region id, ground grey,
  semantic-less non-ground points (DBSCAN noise and filtered clusters) black;
- ``regions_cam_front_n015.png``: the n015 points projected into the real CAM_FRONT image, coloured the same way
  (semantic-less non-ground points white there); ``regions_cams_n015.png``: the same in all six cameras.

Matplotlib (Agg); each PNG is palette-quantised when needed to stay under 300 KB.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shared.fixtures import load_cameras  # noqa: E402
from preprocess.sweep import process_sweep  # noqa: E402
from shared.paths import REPO_ROOT, fixtures_dir  # noqa: E402
from shared.pointcloud import load_points  # noqa: E402

N015 = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951"
MAX_BYTES = 300_000


def region_colors(region: np.ndarray, ground: np.ndarray, other=(0.05, 0.05, 0.05, 1.0),
                  ground_color=(0.72, 0.72, 0.72, 1.0)) -> np.ndarray:
    """(N, 4) RGBA: a tab20 colour per region id (shuffled so neighbours differ), ground grey, others ``other``."""
    cmap = plt.get_cmap("tab20")
    perm = np.random.default_rng(0).permutation(20)
    col = np.zeros((len(region), 4))
    col[:] = other
    col[ground] = ground_color
    r = region >= 0
    col[r] = cmap(perm[region[r] % 20])
    return col


def _save(fig, path: Path, dpi: int) -> None:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    if path.stat().st_size > MAX_BYTES:
        from PIL import Image

        for colors in (128, 64, 32):
            Image.open(path).convert("RGB").quantize(colors=colors).save(path, optimize=True)
            if path.stat().st_size <= MAX_BYTES:
                break
    print(f"{path} {path.stat().st_size / 1e3:.0f} kB")


def bev(points: np.ndarray, res, title: str, path: Path, extent: float) -> None:
    keep = res.valid & (np.abs(points[:, 0]) < extent) & (np.abs(points[:, 1]) < extent)
    col = region_colors(res.region, res.ground)
    order = np.argsort(res.region >= 0, kind="stable")  # regions drawn on top
    order = order[keep[order]]
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    ax.scatter(points[order, 0], points[order, 1], c=col[order], s=np.where(res.region[order] >= 0, 2.5, 0.4),
               linewidths=0, rasterized=True)
    ax.plot(0, 0, marker="^", color="red", ms=6)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, LiDAR frame)")
    ax.set_ylabel("y (m)")
    s = res.stats
    ax.set_title(f"{title}\n{s.points:,} points, ground {s.ground_fraction:.0%} (grey), "
                 f"{s.regions_kept} regions (colours), semantic-less non-ground black", fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def camera(res, cam_index: int, image_path: Path, title: str, path: Path) -> None:
    from PIL import Image

    img = np.asarray(Image.open(image_path).convert("RGB"))
    h, w = img.shape[:2]
    pt, uv, depth = res.projection.in_camera(cam_index)
    col = region_colors(res.region[pt], res.ground[pt], other=(1.0, 1.0, 1.0, 1.0),
                        ground_color=(0.35, 0.35, 0.35, 0.9))
    order = np.argsort(res.region[pt] >= 0, kind="stable")
    fig = plt.figure(figsize=(9.6, 9.6 * h / w))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img)
    ax.scatter(uv[order, 0], uv[order, 1], c=col[order], s=np.where(res.region[pt][order] >= 0, 7.0, 2.5),
               linewidths=0)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    ax.text(12, 36, title, color="white", fontsize=9, bbox=dict(facecolor="black", alpha=0.6, lw=0))
    _save(fig, path, dpi=100)


def camera_grid(res, cams, title: str, path: Path, shrink: int = 4) -> None:
    """All cameras in a 2 x 3 grid (images shrunk by ``shrink``), points coloured as in :func:`camera`."""
    from PIL import Image

    order_cams = [5, 0, 1, 4, 3, 2]  # FRONT_LEFT FRONT FRONT_RIGHT / BACK_LEFT BACK BACK_RIGHT
    fig, axes = plt.subplots(2, 3, figsize=(12.0, 4.6))
    for ax, c in zip(axes.ravel(), order_cams):
        im = Image.open(cams[c].image_path).convert("RGB")
        im = im.resize((im.width // shrink, im.height // shrink))
        ax.imshow(np.asarray(im))
        pt, uv, _ = res.projection.in_camera(c)
        col = region_colors(res.region[pt], res.ground[pt], other=(1.0, 1.0, 1.0, 1.0),
                            ground_color=(0.35, 0.35, 0.35, 0.9))
        order = np.argsort(res.region[pt] >= 0, kind="stable")
        ax.scatter(uv[order, 0] / shrink, uv[order, 1] / shrink, c=col[order],
                   s=np.where(res.region[pt][order] >= 0, 2.5, 0.6), linewidths=0)
        ax.set_xlim(0, im.width)
        ax.set_ylim(im.height, 0)
        ax.set_title(f"{cams[c].channel}: {len(pt):,} points, {len(np.unique(res.region[pt][res.region[pt] >= 0]))}"
                     f" regions", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "img")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fx = fixtures_dir()

    pts = load_points(fx / f"{N015}.pcd.bin")
    cams = load_cameras(fx / f"{N015}.calib.json")
    res = process_sweep(pts, cams, backend="cpu", token="n015")
    bev(pts, res, "nuScenes n015 (scene-0061 keyframe 0): semantic pooling", args.out / "regions_bev_n015.png",
        extent=40.0)
    camera(res, 0, cams[0].image_path, "n015 CAM_FRONT: LiDAR points coloured by region; ground grey, "
           "semantic-less non-ground white",
           args.out / "regions_cam_front_n015.png")

    camera_grid(res, cams, "n015, six cameras: regions in colour, ground grey, semantic-less non-ground white",
                args.out / "regions_cams_n015.png")

    kpts = load_points(fx / "kitti/000000.bin")
    kres = process_sweep(kpts, None, backend="cpu", token="000000")
    bev(kpts, kres, "KITTI 000000: semantic pooling", args.out / "regions_bev_kitti000000.png", extent=40.0)


if __name__ == "__main__":
    main()
