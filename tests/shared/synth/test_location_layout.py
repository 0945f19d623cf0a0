"""Scenes that share a location lie apart in the global frame: with 8 scenes (2 per location) every location's map
expansion and basemap hold both scenes' roads without overlap, each scene's ego path and annotations stay on its
own world, and only the global-frame records of the moved scenes differ from the old layout
(``location_spacing=0``, every world about the global origin)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import cv2
import numpy as np
import pytest

from shared.errors import ConfigError
from shared.synth import SynthConfig, generate
from shared.synth.tables import LOCATIONS
from shared.synth.world import max_extent

#: 8 scenes, cheap sensors: two per location.
CFG = SynthConfig(name="spread", scenes=8, keyframes=2, sweeps_per_keyframe=2, write_sweeps=False, image_width=64,
                  image_height=36, n_azimuth=180, all_classes=False)
GLOBAL_TABLES = ("ego_pose", "sample_annotation")  # the tables holding global positions


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(spaced root, old-layout root, version)."""
    base = tmp_path_factory.mktemp("layout")
    spaced, version = generate(base / "spaced", CFG, seed=3, progress=False)
    old, _ = generate(base / "old", dataclasses.replace(CFG, location_spacing=0), seed=3, progress=False)
    return spaced, old, version


@pytest.fixture(scope="module")
def spaced(pair):
    from nuscenes.map_expansion.map_api import NuScenesMap
    from nuscenes.nuscenes import NuScenes

    root, _, version = pair
    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    return nusc, {loc: NuScenesMap(str(root), loc) for loc in LOCATIONS}


def _scenes_at(nusc, loc):
    return [s for s in nusc.scene if nusc.get("log", s["log_token"])["location"] == loc]


def _ego_xy(nusc, scene):
    """LiDAR ego positions (K, 2) of a scene's keyframes."""
    out, tok = [], scene["first_sample_token"]
    while tok:
        sample = nusc.get("sample", tok)
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        out.append(nusc.get("ego_pose", sd["ego_pose_token"])["translation"][:2])
        tok = sample["next"]
    return np.array(out)


def _drivable_polygons(m):
    return [m.extract_polygon(t) for rec in m.drivable_area for t in rec["polygon_tokens"]]


@pytest.mark.slow
def test_the_scenes_of_a_location_do_not_overlap(spaced, pair):
    """(a) one drivable polygon per scene in each location's expansion, pairwise disjoint, and in the basemap
    each scene's ego path lies in a road component of its own; in the old layout the two overlap."""
    nusc, maps = spaced
    for loc in LOCATIONS:
        polys = _drivable_polygons(maps[loc])
        assert len(polys) == len(_scenes_at(nusc, loc)) == 2
        assert not polys[0].intersects(polys[1]), loc
        rec = nusc.get("map", nusc.get("log", _scenes_at(nusc, loc)[0]["log_token"])["map_token"])
        assert sorted(rec["log_tokens"]) == sorted(s["log_token"] for s in _scenes_at(nusc, loc))
        png = cv2.imread(str(pair[0] / rec["filename"]), cv2.IMREAD_GRAYSCALE)
        _, labels = cv2.connectedComponents((png > 0).astype(np.uint8))
        seen = []
        for scene in _scenes_at(nusc, loc):
            px, py = rec["mask"].to_pixel_coords(*_ego_xy(nusc, scene).T)
            assert len(set(labels[py, px].tolist())) == 1 and labels[py[0], px[0]] > 0
            seen.append(labels[py[0], px[0]])
        assert seen[0] != seen[1], loc
    from nuscenes.map_expansion.map_api import NuScenesMap

    old = _drivable_polygons(NuScenesMap(str(pair[1]), LOCATIONS[0]))
    assert old[0].intersects(old[1])


@pytest.mark.slow
def test_each_ego_path_lies_on_its_own_road(spaced):
    """(b) every keyframe's ego position is on its scene's drivable area (the k-th record of its location) in the
    expansion and on the basemap (MapMask), and the expansion agrees with the basemap around the first one."""
    nusc, maps = spaced
    for loc in LOCATIONS:
        m = maps[loc]
        for k, scene in enumerate(_scenes_at(nusc, loc)):
            mask = nusc.get("map", nusc.get("log", scene["log_token"])["map_token"])["mask"]
            xy = _ego_xy(nusc, scene)
            assert mask.is_on_mask(xy[:, 0], xy[:, 1]).all()
            for x, y in xy:
                assert m.layers_on_point(x, y, ["drivable_area"])["drivable_area"] == m.drivable_area[k]["token"]
            x, y = xy[0]
            patch = m.get_map_mask((x, y, 60.0, 60.0), 0.0, ["drivable_area"], (600, 600))[0] > 0
            base = mask.mask()
            c0, r0 = int(round((x - 30) / 0.1)), int(round(base.shape[0] - (y + 30) / 0.1))
            crop = base[r0:r0 + 600, c0:c0 + 600][::-1] > 0  # MapMask rows run down in y; the patch's rows up
            assert crop.shape == patch.shape and np.mean(crop == patch) > 0.99


def _rows(root, version, table):
    return {r["token"]: r for r in json.loads((root / version / f"{table}.json").read_text())}


def _scene_of(nusc):
    """Scene index (in the scene table's order) of every ego pose and annotation token."""
    index = {s["token"]: i for i, s in enumerate(nusc.scene)}
    out = {}
    for sd in nusc.sample_data:
        out[sd["ego_pose_token"]] = index[nusc.get("sample", sd["sample_token"])["scene_token"]]
    for a in nusc.sample_annotation:
        out[a["token"]] = index[nusc.get("sample", a["sample_token"])["scene_token"]]
    return out


@pytest.mark.slow
def test_global_records_move_by_the_scene_offset_and_stay_on_its_world(spaced, pair):
    """(c) every ego pose and box centre of scene i is the old layout's moved by (i // 4) * spacing along x (all
    else equal), and every box centre lies within that scene's world extent."""
    nusc, _ = spaced
    spaced_root, old_root, version = pair
    scene_of = _scene_of(nusc)
    bound = max_extent(CFG.duration)
    for table in GLOBAL_TABLES:
        new, old = _rows(spaced_root, version, table), _rows(old_root, version, table)
        assert new.keys() == old.keys()
        for tok, row in new.items():
            ox, oy = CFG.scene_offset(scene_of[tok], len(LOCATIONS))
            t_new, t_old = np.array(row["translation"]), np.array(old[tok]["translation"])
            np.testing.assert_allclose(t_new, t_old + [ox, oy, 0.0], rtol=0, atol=1e-9)
            assert {k: v for k, v in row.items() if k != "translation"} == \
                {k: v for k, v in old[tok].items() if k != "translation"}
            if table == "sample_annotation":
                assert ox <= t_new[0] <= ox + bound and oy <= t_new[1] <= oy + bound
    assert CFG.spacing >= bound + CFG.max_range


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_sensor_files_and_first_scenes_match_the_old_layout(pair):
    """(d) every LiDAR and camera file of every scene, every table without global positions and the first scene
    of each location's global records are byte-identical to the old layout's; the map files differ."""
    spaced_root, old_root, version = pair
    sensor = sorted(p.relative_to(old_root) for p in (old_root / "samples").rglob("*") if p.is_file())
    assert len(sensor) == CFG.scenes * CFG.keyframes * 7
    for rel in sensor:
        assert _digest(spaced_root / rel) == _digest(old_root / rel), rel
    tables = sorted(p.name for p in (old_root / version).glob("*.json"))
    for name in tables:
        if name[:-5] not in GLOBAL_TABLES:
            assert _digest(spaced_root / version / name) == _digest(old_root / version / name), name
    from nuscenes.nuscenes import NuScenes

    scene_of = _scene_of(NuScenes(version=version, dataroot=str(old_root), verbose=False))
    for table in GLOBAL_TABLES:
        new, old = _rows(spaced_root, version, table), _rows(old_root, version, table)
        first = [tok for tok in old if scene_of[tok] < len(LOCATIONS)]
        assert first and all(json.dumps(new[t]) == json.dumps(old[t]) for t in first)
    for loc in LOCATIONS:
        rel = f"maps/expansion/{loc}.json"
        assert _digest(spaced_root / rel) != _digest(old_root / rel)


@pytest.mark.slow
def test_preprocess_runs_on_the_spaced_dataset(pair, tmp_path):
    """(e) the devkit loads the dataset (fixtures above) and preprocess runs on two scenes of it."""
    from preprocess.run import run

    root, _, version = pair
    names = [s["name"] for s in json.loads((root / version / "scene.json").read_text())][4:6]
    summary = run(root, version, tmp_path / "store", workers=0, scenes=names, progress=False, log=None)
    assert summary.scenes_done == 2 and not summary.failed_scenes and summary.failed_sweeps == 0


@pytest.mark.parametrize("bad", [-1.0, 50.0, math.nan, True, "far"])
def test_location_spacing_must_be_0_or_wide_enough(bad):
    with pytest.raises(ConfigError, match="location_spacing"):
        dataclasses.replace(CFG, location_spacing=bad)


def test_default_spacing_clears_a_world_and_the_lidar_range():
    for keyframes in (2, 10, 40):
        cfg = dataclasses.replace(CFG, keyframes=keyframes)
        assert cfg.min_spacing <= cfg.spacing < cfg.min_spacing + 100.0 and cfg.spacing % 100.0 == 0.0
        assert cfg.scene_offset(0, 4) == (0.0, 0.0) and cfg.scene_offset(9, 4) == (2 * cfg.spacing, 0.0)
    assert dataclasses.replace(CFG, location_spacing=0).scene_offset(9, 4) == (0.0, 0.0)
