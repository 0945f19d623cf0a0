"""The generated nuScenes map expansion: the devkit's NuScenesMap loads and renders it, its layers agree with the
generated world (the drivable-area basemap, the ego vehicle's path), and the Shapely 2 shims draw as the devkit."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

SIX = ["drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "road_divider", "lane_divider"]


@pytest.fixture(scope="module")
def maps(tiny_root, nusc):
    from nuscenes.map_expansion.map_api import NuScenesMap

    root, _ = tiny_root
    return {log["location"]: NuScenesMap(str(root), log["location"]) for log in nusc.log}


def _lidar_xy(nusc, sample):
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    return nusc.get("ego_pose", sd["ego_pose_token"])["translation"][:2]


def test_every_log_location_has_a_v13_expansion_with_every_devkit_table(tiny_root, nusc, maps):
    root, _ = tiny_root
    files = sorted(p.stem for p in (root / "maps" / "expansion").glob("*.json"))
    assert files == sorted({log["location"] for log in nusc.log})
    for loc, m in maps.items():
        obj = json.loads((root / "maps" / "expansion" / f"{loc}.json").read_text())
        assert m.version == "1.3"
        assert set(m.layer_names + ["arcline_path_3", "connectivity", "version", "canvas_edge"]) <= set(obj)
        for layer in ("drivable_area", "road_segment", "walkway", "ped_crossing", "stop_line", "road_divider"):
            assert getattr(m, layer), (loc, layer)
        for rec in m.stop_line:  # every stop line is cued by a crossing of the same map
            assert rec["stop_line_type"] == "PED_CROSSING" and rec["cue"] and rec["cue"][0]["token"]


def test_drivable_area_matches_the_basemap_and_the_ego_path(nusc, maps):
    """Around every keyframe the expansion's drivable area is the basemap raster (maps/<token>.png, as the
    world's ground function lays out the road) up to the polygon's boundary cells; the ego vehicle is on it, in
    no walkway, car park or crossing area it could not be in, and a crossing lies within 50 m of some keyframe."""
    near_crossing = False
    for sample in nusc.sample:
        scene = nusc.get("scene", sample["scene_token"])
        log = nusc.get("log", scene["log_token"])
        m = maps[log["location"]]
        png = cv2.imread(str(nusc.dataroot + "/" + nusc.get("map", log["map_token"])["filename"]), 0)
        x, y = _lidar_xy(nusc, sample)
        mask = m.get_map_mask((x, y, 60.0, 60.0), 0.0, ["drivable_area"], (600, 600))[0]
        c0, r0 = int(round((x - 30) / 0.1)), int(round(png.shape[0] - (y + 30) / 0.1))
        basemap = png[r0:r0 + 600, c0:c0 + 600][::-1] > 0  # MapMask rows run down in y; the mask's rows up
        assert basemap.shape == mask.shape
        assert np.mean(basemap == (mask > 0)) > 0.99
        assert basemap.mean() > 0.1
        on = m.layers_on_point(x, y, ["drivable_area", "walkway", "carpark_area"])
        assert on["drivable_area"] and not on["walkway"] and not on["carpark_area"]
        near_crossing |= bool(m.get_records_in_radius(x, y, 50.0, ["ped_crossing"])["ped_crossing"])
    assert near_crossing


def test_layers_are_laid_out_consistently(nusc, maps):
    """Within one patch per scene: walkways lie beside the drivable area (not on it), crossings, stop lines, car
    parks and dividers on it, stop lines off the crossings."""
    for scene in nusc.scene:
        m = maps[nusc.get("log", scene["log_token"])["location"]]
        x, y = _lidar_xy(nusc, nusc.get("sample", scene["first_sample_token"]))
        masks = dict(zip(SIX, m.get_map_mask((x, y, 200.0, 200.0), 0.0, SIX, (1000, 1000)).astype(bool),
                         strict=True))
        da = cv2.dilate(masks["drivable_area"].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        core = cv2.erode(masks["drivable_area"].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert masks["walkway"].any() and not (masks["walkway"] & core).any()
        for layer in ("ped_crossing", "stop_line", "carpark_area", "road_divider", "lane_divider"):
            assert not (masks[layer] & ~da).any(), layer
        inner = cv2.erode(masks["ped_crossing"].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert masks["stop_line"].any() and not (masks["stop_line"] & inner).any()


def test_render_layers_draws_every_record(maps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared import devkit_compat

    devkit_compat.enable()
    for m in maps.values():
        fig, ax = m.render_layers(SIX, figsize=3)
        polygons = sum(len(getattr(m, la)) for la in SIX[:5])
        assert len(ax.patches) >= polygons
        assert len(ax.lines) >= len(m.road_divider) + len(m.lane_divider)
        plt.close(fig)


def test_shims_draw_what_shapely_1_drew():
    """polygon_patch keeps the holes; mask_for_lines draws every part of a MultiLineString (the devkit's own
    raises TypeError under Shapely 2)."""
    from matplotlib.path import Path
    from nuscenes.map_expansion.map_api import NuScenesMapExplorer
    from shapely.geometry import MultiLineString, Polygon

    from shared import devkit_compat

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ring = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(3, 3), (7, 3), (7, 7), (3, 7)]])  # hole as the shell
    patch = devkit_compat.polygon_patch(ring, fc="k", ec="none")
    assert list(patch.get_path().codes).count(Path.MOVETO) == 2
    fig = plt.figure(figsize=(1, 1), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 10), ax.set_ylim(0, 10), ax.axis("off")
    ax.add_patch(patch)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    plt.close(fig)
    assert img[90, 10].sum() == 0 and img[50, 50].sum() == 3 * 255  # filled shell (row 90 = y 1), empty hole
    lines = MultiLineString([[(2, 2), (2, 20)], [(15, 2), (15, 20)]])
    devkit_compat.enable()
    mask = NuScenesMapExplorer.mask_for_lines(lines, np.zeros((24, 24), np.uint8))
    assert mask[10, 2] == 1 and mask[10, 15] == 1 and mask[10, 8] == 0
