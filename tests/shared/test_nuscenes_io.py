"""shared.nuscenes_io: reading real fixtures and generated dataroots through nuscenes-devkit.

Generated-data tests use the session fixtures ``synth_root`` / ``synth_nusc`` (tests/shared/conftest.py): the
``tiny`` preset of ``shared.synth``, generated once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.errors import InputError
from shared.nuscenes_io import (
    LIDAR_CHANNEL,
    camera_calib,
    check_sweep_files,
    find_broken_links,
    iter_lidar_sweeps,
    iter_samples,
    iter_scenes,
    load_image,
    load_sweep_points,
    open_nuscenes,
    project_points,
    render_points_on_image,
    sweep_info,
)
from shared.records import CAMERAS, CameraCalib

N015_CALIB = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.calib.json"


# ----------------------------------------------------------------------------------------------------------------
# Without a dataroot
# ----------------------------------------------------------------------------------------------------------------


def test_find_broken_links_names_table_field_and_token():
    tables = {
        "sample": [{"token": "s1", "scene_token": "sc1", "prev": "", "next": "s2"},
                   {"token": "s2", "scene_token": "sc1", "prev": "s1", "next": ""}],
        "scene": [{"token": "sc1", "log_token": "l1", "first_sample_token": "s1", "last_sample_token": "s2"}],
        "log": [{"token": "l1"}],
        "attribute": [{"token": "a1"}],
        "sample_annotation": [{"token": "ann1", "sample_token": "s1", "attribute_tokens": ["a1", "a9"], "prev": "",
                               "next": ""}],
    }
    (b,) = find_broken_links(tables)
    assert (b.table, b.row, b.row_token, b.field, b.target_table, b.missing_token) == (
        "sample_annotation", 0, "ann1", "attribute_tokens", "attribute", "a9")
    assert "sample_annotation.json" in b.describe() and "'a9'" in b.describe()
    tables["sample_annotation"][0]["attribute_tokens"] = ["a1"]
    assert find_broken_links(tables) == []
    tables["sample"][1]["next"] = "s3"  # prev/next may be '' but not dangling
    tables["scene"][0]["log_token"] = "l2"
    found = find_broken_links(tables)
    assert {(x.table, x.field, x.missing_token) for x in found} == {("sample", "next", "s3"), ("scene", "log_token", "l2")}
    assert len(find_broken_links(tables, limit=1)) == 1


def test_open_nuscenes_missing_dataroot_and_version(tmp_path):
    with pytest.raises(InputError, match="dataroot not found") as err:
        open_nuscenes(tmp_path / "nowhere", "v1.0-mini")
    assert "nowhere" in str(err.value) and "--dataroot" in str(err.value)
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "sample.json").write_text("[]")
    (tmp_path / "maps").mkdir()
    with pytest.raises(InputError, match=r"no version folder 'v1.0-trainval'.*versions found: v1.0-mini") as err:
        open_nuscenes(tmp_path, "v1.0-trainval")
    assert err.value.path == str(tmp_path)
    with pytest.raises(InputError, match="category.json missing"):
        open_nuscenes(tmp_path, "v1.0-mini")


def test_open_nuscenes_default_dataroot_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NUSCENES", str(tmp_path / "from_env"))
    with pytest.raises(InputError, match="dataroot not found") as err:
        open_nuscenes(version="v1.0-mini")
    assert err.value.path == str(tmp_path / "from_env")


def test_project_points_matches_devkit_view_points():
    from nuscenes.utils.geometry_utils import view_points

    rng = np.random.default_rng(1)
    xyz = rng.uniform(-30, 30, (2000, 3))
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3] = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]])  # x forward -> camera z
    k = np.array([[1000.0, 0, 640], [0, 1000, 360], [0, 0, 1]])
    cam = CameraCalib("CAM_FRONT", k, lidar2cam, np.eye(4), np.eye(4), 1280, 720)
    uv, depth, vis = project_points(xyz, cam)
    cam_pts = (lidar2cam[:3, :3] @ xyz.T)
    ref = view_points(cam_pts, k, normalize=True)[:2].T
    front = cam_pts[2] > 0
    np.testing.assert_allclose(uv[front], ref[front], rtol=1e-12)
    assert np.isnan(uv[~front]).all()
    np.testing.assert_allclose(depth, cam_pts[2])
    expect = (depth > 1) & (ref[:, 0] > 1) & (ref[:, 0] < 1279) & (ref[:, 1] > 1) & (ref[:, 1] < 719)
    np.testing.assert_array_equal(vis, expect)
    assert 0 < vis.sum() < len(xyz)


# ----------------------------------------------------------------------------------------------------------------
# Real fixture (not a devkit dataroot: calibration JSON + files)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.fixtures
def test_fixture_points_per_camera(fixtures_dir):
    """Criterion (devkit's map_pointcloud_to_image): camera depth > 1 m and inside the 1600x900 image with a
    1-pixel margin. The fixtures README says about 3,000-4,800 points per image."""
    from shared.fixtures import load_nuscenes_fixture

    sweep = load_nuscenes_fixture(fixtures_dir / N015_CALIB)
    pts = load_sweep_points(sweep)
    assert pts.shape == (34688, 5)
    counts = {}
    seen = np.zeros(len(pts), bool)
    for cam in sweep.cameras:
        _, depth, vis = project_points(pts[:, :3], cam)
        counts[cam.channel] = int(vis.sum())
        assert depth[vis].min() > 1
        seen |= vis
    assert all(2_900 <= n <= 4_900 for n in counts.values()), counts
    # the six images overlap only at their edges: most points are seen by one camera only
    assert seen.sum() > 0.9 * sum(counts.values())


@pytest.mark.fixtures
def test_fixture_render_picture(fixtures_dir, tmp_path):
    from shared.fixtures import load_nuscenes_fixture

    sweep = load_nuscenes_fixture(fixtures_dir / N015_CALIB)
    cam = sweep.cameras[0]
    img = load_image(cam)
    assert img.shape == (900, 1600, 3) and img.dtype == np.uint8
    pts = load_sweep_points(sweep)
    out = tmp_path / "front.jpg"
    n = render_points_on_image(cam, pts[:, :3], out)
    assert n == project_points(pts[:, :3], cam)[2].sum()
    assert 10_000 < out.stat().st_size < 300_000
    missing = dataclasses.replace(cam, image_path=tmp_path / "gone.jpg")
    with pytest.raises(InputError, match="CAM_FRONT image .* not found") as err:
        load_image(missing)
    assert "gone.jpg" in str(err.value)


# ----------------------------------------------------------------------------------------------------------------
# Generated dataroot: devkit itself
# ----------------------------------------------------------------------------------------------------------------


def test_devkit_loads_lists_and_renders(synth_root, synth_nusc, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nuscenes.nuscenes import NuScenes

    dataroot, version = synth_root
    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)  # devkit alone
    assert len(nusc.scene) == len(synth_nusc.scene) > 0 and len(nusc.sample_annotation) > 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        nusc.list_scenes()
    assert all(s["name"] in buf.getvalue() for s in nusc.scene)
    sample = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    nusc.render_sample(sample["token"], out_path=str(tmp_path / "sample.png"), verbose=False)
    plt.close("all")
    nusc.render_pointcloud_in_image(sample["token"], camera_channel="CAM_FRONT",
                                    out_path=str(tmp_path / "pc.png"), verbose=False)
    plt.close("all")
    assert (tmp_path / "sample.png").stat().st_size > 10_000
    assert (tmp_path / "pc.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------------------------------------------
# Generated dataroot: the reader
# ----------------------------------------------------------------------------------------------------------------


def test_scenes_samples_and_sweeps(synth_nusc):
    nusc = synth_nusc
    scenes = list(iter_scenes(nusc))
    assert [s["name"] for s in scenes] == sorted(s["name"] for s in nusc.scene)
    assert [s["name"] for s in iter_scenes(nusc, [scenes[-1]["name"]])] == [scenes[-1]["name"]]
    with pytest.raises(InputError, match="no scene named scene-9999"):
        list(iter_scenes(nusc, ["scene-9999"]))
    total_sweeps = 0
    for scene in scenes:
        samples = list(iter_samples(nusc, scene))
        assert len(samples) == scene["nbr_samples"]
        keys = list(iter_lidar_sweeps(nusc, scene["token"], keyframes_only=True, check_files=True))
        sweeps = list(iter_lidar_sweeps(nusc, scene, keyframes_only=False))
        total_sweeps += len(sweeps)
        assert [k.token for k in keys] == [s["data"][LIDAR_CHANNEL] for s in samples]
        assert [k.sample_token for k in keys] == [s["token"] for s in samples]
        assert all(k.is_key_frame for k in keys)
        assert [s.token for s in sweeps if s.is_key_frame] == [k.token for k in keys]
        # the whole LiDAR chain of the scene, including the sweeps before the first keyframe
        for end, link in ((sweeps[0], "prev"), (sweeps[-1], "next")):
            other = nusc.get("sample_data", end.token)[link]
            assert other == "" or nusc.get("sample", nusc.get("sample_data", other)["sample_token"])[
                "scene_token"] != scene["token"]
        chain = [sweeps[0].token]
        while len(chain) < len(sweeps):
            chain.append(nusc.get("sample_data", chain[-1])["next"])
        assert chain == [s.token for s in sweeps]
        ts = [s.timestamp for s in sweeps]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)
        sample_ts = {s["token"]: s["timestamp"] for s in nusc.sample}
        for s in sweeps:
            assert s.scene_token == scene["token"] and s.scene_name == scene["name"]
            assert s.path.is_file() and s.path.name.endswith(".pcd.bin")
            assert tuple(c.channel for c in s.cameras) == CAMERAS
            # cameras come from the keyframe nearest in time
            own = nusc.get("sample", nusc.get("sample_data", s.token)["sample_token"])
            near = [own["token"], own["prev"], own["next"]]
            gap = abs(sample_ts[s.sample_token] - s.timestamp)
            assert all(gap <= abs(sample_ts[t] - s.timestamp) for t in near if t)
            for cam in s.cameras:
                assert cam.image_path.is_file() and cam.token in nusc.get("sample", s.sample_token)["data"].values()
                assert cam.intrinsic.shape == (3, 3) and cam.lidar2cam.shape == (4, 4)
                # the chain, composed independently with numpy inverses
                chain = np.linalg.inv(cam.ego2global @ cam.cam2ego) @ s.ego2global @ s.lidar2ego
                np.testing.assert_allclose(cam.lidar2cam, chain, atol=1e-9)
    assert total_sweeps > sum(s["nbr_samples"] for s in scenes)  # the tiny preset has non-keyframe sweeps


class _Lidar64:
    """devkit's LidarPointCloud is float32, so its trip through global coordinates (hundreds of metres) rounds
    at ~1e-5 relative. For an exact comparison of the chain, devkit is made to load the points as float64."""

    @staticmethod
    def from_file(file_name):
        from nuscenes.utils.data_classes import LidarPointCloud

        return LidarPointCloud(LidarPointCloud.from_file(file_name).points.astype(np.float64))


def test_chain_matches_devkit_map_pointcloud_to_image(synth_nusc, monkeypatch):
    import nuscenes.nuscenes as devkit_module

    nusc = synth_nusc
    scene = next(iter_scenes(nusc))
    sweeps = list(iter_lidar_sweeps(nusc, scene, keyframes_only=False))
    picked = [s for s in sweeps if s.is_key_frame][:1] + [s for s in sweeps if not s.is_key_frame][:1]
    assert len(picked) == 2
    compared = 0
    for sweep in picked:
        pts = load_sweep_points(sweep)
        for cam in sweep.cameras:
            uv, depth, vis = project_points(pts[:, :3], cam)
            # devkit as it is (float32 points): the same points kept but for float32 rounding at the image border
            # or at 1 m depth; pixels within float32 rounding
            ref, _, _ = nusc.explorer.map_pointcloud_to_image(sweep.token, cam.token)
            assert abs(ref.shape[1] - int(vis.sum())) <= 2
            if ref.shape[1] == vis.sum():
                np.testing.assert_allclose(uv[vis], ref[:2].T, atol=0.1)
            # devkit with float64 points: the same pixels to 1e-6 relative
            with monkeypatch.context() as m:
                m.setattr(devkit_module, "LidarPointCloud", _Lidar64)
                ref64, ref64_depth, _ = nusc.explorer.map_pointcloud_to_image(sweep.token, cam.token)
            assert ref64.shape[1] == vis.sum()
            np.testing.assert_allclose(uv[vis], ref64[:2].T, rtol=1e-6)
            np.testing.assert_allclose(depth[vis], ref64_depth, rtol=1e-6)
            compared += int(vis.sum())
    assert compared > 1000


def test_points_in_boxes_land_inside_projected_boxes(synth_nusc):
    """LiDAR points inside an annotated box project inside the box's projected 2-D extent in each camera."""
    from nuscenes.utils.geometry_utils import points_in_box, view_points

    nusc = synth_nusc
    checked_boxes = checked_points = 0
    for scene in iter_scenes(nusc):
        for sample in list(iter_samples(nusc, scene))[:2]:
            sweep = sweep_info(nusc, sample["data"][LIDAR_CHANNEL])
            pts = load_sweep_points(sweep)
            _, lidar_boxes, _ = nusc.get_sample_data(sweep.token)  # boxes in the LiDAR frame
            for cam in sweep.cameras:
                _, cam_boxes, k = nusc.get_sample_data(cam.token)  # boxes in this camera's frame, any visibility
                cam_boxes = {b.token: b for b in cam_boxes}
                for box in lidar_boxes:
                    if box.token not in cam_boxes:
                        continue
                    corners = cam_boxes[box.token].corners()
                    if corners[2].min() <= 0.1:  # partly behind the camera: no finite 2-D extent
                        continue
                    inside = points_in_box(box, pts[:, :3].T.astype(np.float64))
                    uv, _, vis = project_points(pts[inside, :3], cam)
                    if not vis.any():
                        continue
                    c2d = view_points(corners, k, normalize=True)[:2]
                    lo, hi = c2d.min(1) - 1e-6 * np.abs(c2d.min(1)) - 1e-6, c2d.max(1) + 1e-6 * np.abs(c2d.max(1)) + 1e-6
                    assert ((uv[vis] >= lo) & (uv[vis] <= hi)).all(), (cam.channel, box.name)
                    checked_boxes += 1
                    checked_points += int(vis.sum())
    assert checked_boxes >= 5 and checked_points >= 100


# ----------------------------------------------------------------------------------------------------------------
# Generated dataroot: bad input
# ----------------------------------------------------------------------------------------------------------------


def _copy_tables(synth_root, dst: Path) -> Path:
    """A dataroot in ``dst`` with copies of the generated tables and maps, and per-file links to its data."""
    src, version = synth_root
    shutil.copytree(src / version, dst / version)
    for sub in src.iterdir():
        if sub.name == version or not sub.is_dir():
            continue
        for f in sub.rglob("*"):
            if f.is_file():
                target = dst / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(f)
    return dst


def _edit_table(root: Path, version: str, table: str, edit) -> None:
    path = root / version / f"{table}.json"
    rows = json.loads(path.read_text())
    edit(rows)
    path.write_text(json.dumps(rows))


def test_truncated_sweep_file(synth_nusc, tmp_path):
    sweep = next(iter_lidar_sweeps(synth_nusc, next(iter_scenes(synth_nusc))))
    cut = tmp_path / sweep.path.name
    cut.write_bytes(sweep.path.read_bytes()[:-3])
    with pytest.raises(InputError, match="truncated") as err:
        load_sweep_points(dataclasses.replace(sweep, path=cut))
    assert sweep.path.name in str(err.value)


def test_missing_image_and_point_file(synth_root, tmp_path):
    root = _copy_tables(synth_root, tmp_path / "dr")
    nusc = open_nuscenes(root, synth_root[1])
    sample = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    sweep = sweep_info(nusc, sample["data"][LIDAR_CHANNEL], check_files=True)
    cam = sweep.cameras[2]
    cam.image_path.unlink()
    sweep_info(nusc, sample["data"][LIDAR_CHANNEL])  # files are checked only on request
    with pytest.raises(InputError, match=f"{cam.channel} image of sample_data {cam.token} not found") as err:
        sweep_info(nusc, sample["data"][LIDAR_CHANNEL], check_files=True)
    assert err.value.path == str(cam.image_path)
    with pytest.raises(InputError, match="not found"):
        load_image(cam)
    sweep.path.unlink()
    with pytest.raises(InputError, match="LiDAR point file .* not found"):
        check_sweep_files(sweep)
    with pytest.raises(InputError, match="point file not found"):
        load_sweep_points(sweep)


def test_dangling_tokens_name_table_field_and_token(synth_root, tmp_path):
    version = synth_root[1]
    # a link devkit resolves while loading (it would raise a bare KeyError)
    root = _copy_tables(synth_root, tmp_path / "a")
    _edit_table(root, version, "sample_annotation", lambda rows: rows[3].update(instance_token="feedbeef" * 4))
    with pytest.raises(InputError, match=r"sample_annotation.json row 3 .*'instance_token'.*'feedbeeffeedbeef") as err:
        open_nuscenes(root, version)
    assert err.value.path == str(root / version / "sample_annotation.json")
    # a link devkit leaves for later (ego_pose of a sample_data): found by the validation after loading
    root = _copy_tables(synth_root, tmp_path / "b")
    _edit_table(root, version, "sample_data", lambda rows: rows[5].update(ego_pose_token="0" * 32))
    with pytest.raises(InputError, match=r"sample_data.json row 5 .*'ego_pose_token'.*ego_pose token '0{32}'"):
        open_nuscenes(root, version)
    open_nuscenes(root, version, validate=False)  # devkit itself loads it...
    # a scene pointing at a missing log
    root = _copy_tables(synth_root, tmp_path / "c")
    _edit_table(root, version, "scene", lambda rows: rows[0].update(log_token="nolog"))
    with pytest.raises(InputError, match=r"scene.json row 0 .*'log_token'.*'nolog'"):
        open_nuscenes(root, version)
    # a table that is not JSON
    (root / version / "ego_pose.json").write_text('[{"token": ')
    with pytest.raises(InputError, match="not a valid JSON table") as err:
        open_nuscenes(root, version)
    assert err.value.path == str(root / version / "ego_pose.json")


def test_camera_calib_requires_intrinsics(synth_nusc):
    nusc = synth_nusc
    sample = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    lidar = sample["data"][LIDAR_CHANNEL]
    cam = camera_calib(nusc, lidar, sample["data"]["CAM_FRONT"])
    assert cam.channel == "CAM_FRONT" and cam.width > 0 and cam.height > 0
    with pytest.raises(InputError, match="has no 3x3 camera_intrinsic"):
        camera_calib(nusc, lidar, lidar)  # a LiDAR record is not a camera
