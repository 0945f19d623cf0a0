"""The synthetic nuScenes-format dataset: devkit compatibility, token consistency, realism, determinism."""
from __future__ import annotations

import filecmp
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.errors import ConfigError, InputError
from shared.synth import PRESETS, SynthConfig, generate
from shared.synth.stats import BANDS, outside_bands, sweep_stats
from shared.synth.tables import TABLES

DETECTION_CLASSES = {"car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle",
                     "bicycle", "traffic_cone", "barrier"}


# ---------------------------------------------------------------------------------------------- devkit
def test_devkit_loads_and_lists(tiny_root, nusc, capsys):
    root, version = tiny_root
    assert version == "v1.0-mini"
    assert sorted(p.name for p in (root / version).glob("*.json")) == sorted(f"{t}.json" for t in TABLES)
    nusc.list_scenes()
    out = capsys.readouterr().out
    assert all(s["name"] in out for s in nusc.scene)
    assert len(nusc.scene) == PRESETS["tiny"].scenes
    assert len(nusc.sample) == PRESETS["tiny"].scenes * PRESETS["tiny"].keyframes


def test_every_token_resolves(nusc):
    """Foreign keys resolve, chains are consistent, counts match, files exist."""
    root = Path(nusc.dataroot)
    for scene in nusc.scene:
        tokens, tok = [], scene["first_sample_token"]
        while tok:
            s = nusc.get("sample", tok)
            assert s["scene_token"] == scene["token"]
            tokens.append(tok)
            tok = s["next"]
        assert len(tokens) == scene["nbr_samples"] and tokens[-1] == scene["last_sample_token"]
        assert nusc.get("sample", tokens[0])["prev"] == ""
        nusc.get("log", scene["log_token"])
        assert (root / nusc.get("map", nusc.get("log", scene["log_token"])["map_token"])["filename"]).is_file()
    for sd in nusc.sample_data:
        nusc.get("ego_pose", sd["ego_pose_token"])
        nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        nusc.get("sample", sd["sample_token"])
        for link in ("prev", "next"):
            if sd[link]:
                other = nusc.get("sample_data", sd[link])
                assert other["channel"] == sd["channel"]
                assert (other["timestamp"] > sd["timestamp"]) == (link == "next")
        assert (root / sd["filename"]).is_file()
        if sd["is_key_frame"]:
            assert nusc.get("sample", sd["sample_token"])["data"][sd["channel"]] == sd["token"]
        else:  # a non-keyframe points to the sample that follows it closest in time (nuScenes schema)
            assert nusc.get("sample", sd["sample_token"])["timestamp"] > sd["timestamp"]
    for s in nusc.sample:
        assert set(s["data"]) == {"LIDAR_TOP", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK",
                                  "CAM_BACK_LEFT", "CAM_FRONT_LEFT"}
        lidar_ts = nusc.get("sample_data", s["data"]["LIDAR_TOP"])["timestamp"]
        assert lidar_ts == s["timestamp"]
        for tok in s["data"].values():  # cameras fire within the LiDAR revolution before the keyframe
            assert -50_500 <= nusc.get("sample_data", tok)["timestamp"] - lidar_ts <= 500
    for inst in nusc.instance:
        chain, tok = [], inst["first_annotation_token"]
        while tok:
            a = nusc.get("sample_annotation", tok)
            assert a["instance_token"] == inst["token"]
            chain.append(a)
            tok = a["next"]
        assert len(chain) == inst["nbr_annotations"] and chain[-1]["token"] == inst["last_annotation_token"]
        assert [nusc.get("sample", a["sample_token"])["timestamp"] for a in chain] == sorted(
            nusc.get("sample", a["sample_token"])["timestamp"] for a in chain)
    for a in nusc.sample_annotation:
        nusc.get("visibility", a["visibility_token"])
        for at in a["attribute_tokens"]:
            nusc.get("attribute", at)


def test_categories_map_to_detection_classes(nusc):
    from nuscenes.eval.detection.utils import category_to_detection_name

    names = {category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation}
    assert None not in names
    assert names <= DETECTION_CLASSES
    assert {"car", "pedestrian"} <= names
    # velocities derive from the instance tracks
    moving = [a for a in nusc.sample_annotation if a["attribute_tokens"]
              and nusc.get("attribute", a["attribute_tokens"][0])["name"] == "vehicle.moving"]
    assert moving
    v = np.array([nusc.box_velocity(a["token"]) for a in moving])
    assert np.nanmax(np.linalg.norm(v[:, :2], axis=1)) > 2.0


def test_splits_have_train_and_val(nusc):
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    names = {s["name"] for s in nusc.scene}
    assert names & set(splits["mini_train"]) and names & set(splits["mini_val"])


def test_devkit_renders(nusc, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sample = nusc.sample[1]
    nusc.render_sample(sample["token"], out_path=str(tmp_path / "sample.png"), verbose=False)
    nusc.render_pointcloud_in_image(sample["token"], camera_channel="CAM_FRONT",
                                    out_path=str(tmp_path / "pc_in_image.png"), verbose=False)
    plt.close("all")
    assert (tmp_path / "sample.png").stat().st_size > 10_000
    assert (tmp_path / "pc_in_image.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------- content
def test_every_scene_shows_every_detection_class(nusc):
    """Every scene (training and validation) holds each of the 10 detection classes with LiDAR points within
    devkit's class range (detection_cvpr_2019) at some keyframe, on at least two keyframes' annotations (so
    devkit can estimate its velocity), and the objects placed for that overlap no other annotated object."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.utils import category_to_detection_name

    class_range = config_factory("detection_cvpr_2019").class_range
    for scene in nusc.scene:
        seen: dict[str, set[str]] = {}
        tok = scene["first_sample_token"]
        while tok:
            sample = nusc.get("sample", tok)
            ego = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
            boxes = []
            for a in (nusc.get("sample_annotation", t) for t in sample["anns"]):
                name = category_to_detection_name(a["category_name"])
                dist = math.dist(a["translation"][:2], ego["translation"][:2])
                if a["num_lidar_pts"] > 0 and dist <= class_range[name]:
                    seen.setdefault(name, set()).add(a["instance_token"])
                boxes.append(a)
            # no two boxes of a keyframe overlap (footprints as discs of the boxes' inscribed radius)
            xy = np.array([b["translation"][:2] for b in boxes])
            r = np.array([min(b["size"][:2]) / 2 for b in boxes])
            dist = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(len(boxes)) * 1e9
            assert np.all(dist >= (r[:, None] + r[None]) * 0.99), scene["name"]
            tok = sample["next"]
        assert set(seen) == DETECTION_CLASSES, (scene["name"], sorted(DETECTION_CLASSES - set(seen)))
        for name, instances in seen.items():
            assert max(nusc.get("instance", i)["nbr_annotations"] for i in instances) >= 2, (scene["name"], name)


def test_ensure_all_classes_fills_the_gaps():
    """A random world lacking classes gets anchors until the keyframe casts see all 10; nothing else changes."""
    from shared.synth.generate import ensure_all_classes, seen_classes
    from shared.synth.world import CLASS_RANGE, make_world

    cfg = PRESETS["tiny"]
    key_times = [0.0, 0.5, 1.0]
    world = make_world(np.random.default_rng([0, 1]), 1.0)
    before = set(seen_classes(world, key_times, cfg))
    assert before != set(CLASS_RANGE)  # this scene's random traffic lacks some classes
    full, missing = ensure_all_classes(world, np.random.default_rng(5), key_times, cfg)
    assert missing == set() and set(seen_classes(full, key_times, cfg)) == set(CLASS_RANGE)
    assert len(full.agents) > len(world.agents) and full.road is world.road
    assert full.static_prims is world.static_prims
    with pytest.raises(ConfigError):
        SynthConfig(all_classes="yes")


def test_num_lidar_pts_matches_devkit_points_in_box(nusc):
    """num_lidar_pts equals devkit's points_in_box count on the keyframe sweep (global frame)."""
    from nuscenes.utils.geometry_utils import points_in_box

    checked = 0
    for sample in nusc.sample[:3]:
        sd_tok = sample["data"]["LIDAR_TOP"]
        path, boxes, _ = nusc.get_sample_data(sd_tok)  # boxes in the sensor frame
        pts = np.fromfile(path, dtype=np.float32).reshape(-1, 5)[:, :3].T
        for box in boxes:
            n = int(points_in_box(box, pts).sum())
            ann = nusc.get("sample_annotation", box.token)
            assert abs(n - ann["num_lidar_pts"]) <= max(2, 0.02 * n), (ann["category_name"], n, ann["num_lidar_pts"])
            checked += 1
    assert checked > 20


def test_near_cars_get_many_points(nusc):
    """A fully visible car at 10-25 m spans several beams and dozens of columns: expect >= 30 points."""
    counts = []
    for a in nusc.sample_annotation:
        if a["category_name"] != "vehicle.car" or a["visibility_token"] != "4":
            continue
        sample = nusc.get("sample", a["sample_token"])
        ego = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        dist = math.dist(a["translation"][:2], ego["translation"][:2])
        if 10 <= dist <= 25:
            counts.append(a["num_lidar_pts"])
    assert len(counts) >= 3
    assert np.median(counts) >= 30


def test_sweeps_resemble_real_ones(nusc):
    """The keyframe sweeps' statistics, taken as the median over the keyframes, lie within the bands
    derived from the real fixture scans (see shared/synth/stats.py); single sweeps may stray (a truck passing
    right beside the sensor pulls the range quantiles down), but every sweep has the real point layout."""
    stats = []
    for sample in nusc.sample:
        path = nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"])
        pts = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
        assert np.array_equal(np.unique(pts[:, 4]), np.arange(32))
        assert np.all(np.bincount(pts[:, 4].astype(int)) == len(pts) // 32)  # every ray gives a point
        s = sweep_stats(pts)
        assert BANDS["points"][0] <= s["points"] <= BANDS["points"][1]
        stats.append(s)
    median = {k: float(np.median([s[k] for s in stats])) for k in stats[0]}
    assert outside_bands(median) == {}


@pytest.mark.fixtures
def test_bands_hold_for_real_scans(fixtures_dir):
    """The bands are honest: the real nuScenes scans fall inside them too."""
    files = sorted((fixtures_dir / "nuscenes").glob("n0*.pcd.bin"))
    assert len(files) == 2
    for f in files:
        assert outside_bands(sweep_stats(np.fromfile(f, dtype=np.float32).reshape(-1, 5))) == {}, f
    assert set(BANDS) <= set(sweep_stats(np.fromfile(files[0], dtype=np.float32).reshape(-1, 5)))


def test_cars_appear_in_camera_where_annotated(nusc):
    """The pixel at the projected centre of a near, fully visible car has the car colour (red dominant)."""
    from nuscenes.utils.geometry_utils import view_points
    from PIL import Image

    hits, total = 0, 0
    for sample in nusc.sample:
        for ch in ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT"):
            path, boxes, K = nusc.get_sample_data(sample["data"][ch])
            img = np.asarray(Image.open(path).convert("RGB")).astype(int)
            for box in boxes:
                ann = nusc.get("sample_annotation", box.token)
                if ann["category_name"] != "vehicle.car" or ann["visibility_token"] != "4":
                    continue
                if not 4 < box.center[2] < 30:
                    continue
                u, v = view_points(box.center[:, None], K, normalize=True)[:2, 0]
                if not (0 <= u < img.shape[1] and 0 <= v < img.shape[0]):
                    continue
                r, g, b = img[int(v), int(u)]
                total += 1
                hits += r > g + 30 and r > b + 30
    assert total >= 3
    assert hits >= 0.7 * total


# ---------------------------------------------------------------------------------------------- determinism
def test_deterministic_per_seed(tmp_path):
    cfg = replace(PRESETS["tiny"], scenes=1, keyframes=2, sweeps_per_keyframe=2, image_width=160, image_height=90)
    a, version = generate(tmp_path / "a", cfg, seed=3, progress=False)
    b, _ = generate(tmp_path / "b", cfg, seed=3, progress=False)
    c, _ = generate(tmp_path / "c", cfg, seed=4, progress=False)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    assert (a / version / "sample.json").read_text() != (c / version / "sample.json").read_text()
    assert not list(tmp_path.glob(".*partial*"))


def test_keyframes_only(tmp_path):
    from nuscenes.nuscenes import NuScenes

    cfg = replace(PRESETS["tiny"], scenes=1, write_sweeps=False, image_width=160, image_height=90)
    root, version = generate(tmp_path / "k", cfg, progress=False)
    assert not list((root / "sweeps" / "LIDAR_TOP").iterdir())
    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    lidar = [sd for sd in nusc.sample_data if sd["channel"] == "LIDAR_TOP"]
    assert len(lidar) == cfg.keyframes and all(sd["is_key_frame"] for sd in lidar)
    assert sum(1 for sd in lidar if sd["next"]) == cfg.keyframes - 1


# ---------------------------------------------------------------------------------------------- bad input
def test_refuses_non_empty_out(tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        generate(out, "tiny", progress=False)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs, field", [
    ({"preset": "huge"}, "preset"),
    ({"scenes": 0}, "scenes"),
    ({"scenes": -2}, "scenes"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments(tmp_path, kwargs, field):
    with pytest.raises(ConfigError) as err:
        generate(tmp_path / "out", progress=False, **kwargs)
    assert err.value.field == field
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value", [("keyframes", 1), ("image_width", 10), ("max_range", 1.0),
                                          ("dropout", 1.5), ("n_azimuth", 5), ("scenes", 900)])
def test_config_validation(field, value):
    with pytest.raises(ConfigError) as err:
        SynthConfig(**{field: value})
    assert err.value.field.startswith(field)


def test_cli_reports_bad_preset(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from calico.cli import main; main()", "synth", "--out",
                           str(tmp_path / "o"), "--preset", "nope"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "preset" in proc.stderr and "nope" in proc.stderr


def test_presets_versions():
    assert PRESETS["mini"].version == "v1.0-mini" and PRESETS["mini"].scenes == 10
    assert replace(PRESETS["tiny"], scenes=12).version == "v1.0-trainval"
    assert json.dumps(PRESETS["tiny"].sweeps_per_scene) == str(PRESETS["tiny"].keyframes * 10)
