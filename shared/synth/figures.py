"""Pictures and the statistics table of docs/synthetic_data.md.

``python -m shared.synth.figures --dataroot DIR [--out docs/img]`` renders, from a generated dataroot and the
real fixture scans (``shared.paths.fixtures_dir()``, skipped where absent):

* ``synth_bev.png``: bird's-eye views of a real sweep and generated sweeps, coloured by height;
* ``synth_pointcloud_in_image.jpg``: devkit's ``render_pointcloud_in_image`` of a generated keyframe;
* ``synth_cameras.jpg``: the six camera images of a generated keyframe;
* ``synth_map.png``: the devkit's ``render_map_patch`` of the map expansion around a keyframe beside its CAM_FRONT;

and prints a markdown table of :func:`shared.synth.stats.sweep_stats`, real scans next to generated ones.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from shared.paths import fixtures_dir
from shared.records import CAMERAS
from shared.synth.stats import BANDS, sweep_stats


def _load(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.float32).reshape(-1, 5)


def bev_figure(sweeps: list[tuple[str, np.ndarray]], out: Path, extent: float = 50.0) -> None:
    """Side-by-side bird's-eye views of sweeps (N, 5) in the LiDAR frame, coloured by z."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 4.4))
    for ax, (title, p) in zip(np.atleast_1d(axes), sweeps):
        ax.scatter(p[:, 0], p[:, 1], s=0.4, c=np.clip(p[:, 2], -2.5, 3.0), cmap="viridis", linewidths=0)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def stats_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """Markdown table: one column per sweep (or mean of sweeps), one row per statistic, plus the test band."""
    keys = list(BANDS)
    head = "| statistic | " + " | ".join(n for n, _ in rows) + " | test band |"
    sep = "|---|" + "---|" * (len(rows) + 1)
    lines = [head, sep]
    for k in keys:
        vals = []
        for _, s in rows:
            v = s[k]
            vals.append(f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}")
        lo, hi = BANDS[k]
        lines.append(f"| {k} | " + " | ".join(vals) + f" | {lo:g} .. {hi:g} |")
    return "\n".join(lines)


def object_points_table(nusc) -> str:
    """Markdown table: median ``num_lidar_pts`` (and count) per detection class and distance band."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    bins = [(0, 10), (10, 20), (20, 30), (30, 50)]
    acc: dict[str, list[list[int]]] = {}
    for a in nusc.sample_annotation:
        name = category_to_detection_name(a["category_name"])
        sample = nusc.get("sample", a["sample_token"])
        ego = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        dist = float(np.hypot(*(np.array(a["translation"][:2]) - ego["translation"][:2])))
        for b, (lo, hi) in enumerate(bins):
            if lo <= dist < hi:
                acc.setdefault(name, [[] for _ in bins])[b].append(a["num_lidar_pts"])
    lines = ["| class | " + " | ".join(f"{lo}-{hi} m" for lo, hi in bins) + " |", "|---|" + "---|" * len(bins)]
    for name in sorted(acc):
        cells = [f"{int(np.median(v))} (n={len(v)})" if v else "-" for v in acc[name]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Map layers of the map picture (the six map-segmentation layers).
MAP_LAYERS = ("drivable_area", "carpark_area", "walkway", "ped_crossing", "stop_line", "road_divider", "lane_divider")


def map_figure(nusc, sample_token: str, out: Path, half: float = 40.0) -> None:
    """The map expansion around a keyframe's ego position (``half`` m each way, devkit ``render_map_patch``, ego
    marked with its heading) beside the keyframe's CAM_FRONT image, as one small PNG."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nuscenes.map_expansion.map_api import NuScenesMap

    from shared import devkit_compat

    devkit_compat.enable()
    sample = nusc.get("sample", sample_token)
    log = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    x, y = pose["translation"][:2]
    w, _, _, z = pose["rotation"]
    yaw = 2 * np.arctan2(z, w)
    nmap = NuScenesMap(nusc.dataroot, log["location"])
    fig, ax = nmap.render_map_patch((x - half, y - half, x + half, y + half), list(MAP_LAYERS), alpha=0.6,
                                    figsize=(4, 4), render_legend=True)
    ax.arrow(x, y, 5 * np.cos(yaw), 5 * np.sin(yaw), width=0.8, color="k", zorder=10)
    ax.set_title(f"{log['location']} map expansion, ego at the arrow", fontsize=8)
    tmp = out.with_name("_map.png")
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    mp = cv2.imread(str(tmp))
    tmp.unlink()
    cam = cv2.imread(nusc.get_sample_data_path(sample["data"]["CAM_FRONT"]))
    h = mp.shape[0]
    cam = cv2.resize(cam, (int(cam.shape[1] * h / cam.shape[0]), h), interpolation=cv2.INTER_AREA)
    from PIL import Image

    rgb = cv2.cvtColor(np.hstack([mp, cam]), cv2.COLOR_BGR2RGB)
    Image.fromarray(rgb).quantize(colors=96).save(out, optimize=True)  # a palette PNG: small in the docs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataroot", type=Path, required=True)
    ap.add_argument("--version", default="v1.0-mini")
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--sample", type=int, default=5, help="index of the keyframe to picture")
    args = ap.parse_args(argv)

    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=args.version, dataroot=str(args.dataroot), verbose=False)
    args.out.mkdir(parents=True, exist_ok=True)
    real = sorted((fixtures_dir() / "nuscenes").glob("n0*.pcd.bin"))
    synth_paths = [Path(nusc.get_sample_data_path(s["data"]["LIDAR_TOP"])) for s in nusc.sample]
    # BEV: a real sweep (if present) and generated keyframes of an urban, a suburban and an open scene
    by_kind: dict[str, dict] = {}
    for sc in nusc.scene:
        kind = sc["description"].split(",")[1].split()[0] if "," in sc["description"] else "other"
        by_kind.setdefault(kind, sc)
    firsts = [nusc.get("sample", sc["first_sample_token"]) for sc in list(by_kind.values())[:3]]
    picks = []
    for s in firsts:
        for _ in range(min(args.sample, 3)):
            s = nusc.get("sample", s["next"]) if s["next"] else s
        sc = nusc.get("scene", s["scene_token"])
        picks.append((f"synthetic: {sc['name']} ({sc['description'].split(',')[1].strip()})",
                      _load(Path(nusc.get_sample_data_path(s["data"]["LIDAR_TOP"])))))
    sweeps = [(f"real: {p.name[:4]} (fixture)", _load(p)) for p in real[:1]] + picks
    bev_figure(sweeps, args.out / "synth_bev.png")

    sample = nusc.sample[min(args.sample, len(nusc.sample) - 1)]
    tmp = args.out / "_pc_in_image.png"
    nusc.render_pointcloud_in_image(sample["token"], camera_channel="CAM_FRONT", out_path=str(tmp), verbose=False,
                                    dot_size=3)
    plt.close("all")
    img = cv2.imread(str(tmp))
    h, w = img.shape[:2]
    img = cv2.resize(img, (900, int(900 * h / w)), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(args.out / "synth_pointcloud_in_image.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    tmp.unlink()

    ims = []
    for ch in ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"):
        assert ch in CAMERAS
        im = cv2.imread(nusc.get_sample_data_path(sample["data"][ch]))
        ims.append(cv2.resize(im, (400, 225), interpolation=cv2.INTER_AREA))
    mosaic = np.vstack([np.hstack(ims[:3]), np.hstack(ims[3:])])
    cv2.imwrite(str(args.out / "synth_cameras.jpg"), mosaic, [cv2.IMWRITE_JPEG_QUALITY, 80])
    map_figure(nusc, sample["token"], args.out / "synth_map.png")

    rows = [(f"real {p.name[:4]}", sweep_stats(_load(p))) for p in real]
    syn = [sweep_stats(_load(p)) for p in synth_paths]
    rows.append((f"synthetic mean ({len(syn)} keyframes)", {k: float(np.mean([s[k] for s in syn])) for k in syn[0]}))
    rows.append(("synthetic min", {k: float(np.min([s[k] for s in syn])) for k in syn[0]}))
    rows.append(("synthetic max", {k: float(np.max([s[k] for s in syn])) for k in syn[0]}))
    print(stats_table(rows))
    inside = {k: np.mean([BANDS[k][0] <= s[k] <= BANDS[k][1] for s in syn]) for k in BANDS}
    print("\nfraction of generated keyframes inside each band: "
          + ", ".join(f"{k} {v:.0%}" for k, v in inside.items()))
    print("\n" + object_points_table(nusc))
    for f in sorted(args.out.glob("synth_*")):
        print(f"{f}: {f.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
