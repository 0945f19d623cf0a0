"""Camera projection: the Numba kernel against nuscenes-devkit's view_points on random and real inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from preprocess.project import (
    Projection,
    ProjectConfig,
    project_points,
    project_points_reference,
)
from shared.errors import ConfigError, InputError
from shared.fixtures import load_cameras
from shared.records import CAMERAS, CameraCalib

N015 = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951"


def _random_camera(rng, channel="CAM", width=800, height=450) -> CameraCalib:
    yaw = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(yaw), np.sin(yaw)
    # LiDAR (x fwd, y left, z up) -> camera (x right, y down, z fwd), looking along yaw
    base = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    rz = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    l2c = np.eye(4)
    l2c[:3, :3] = base @ rz
    l2c[:3, 3] = rng.normal(0, 0.5, 3)
    f = rng.uniform(300, 900)
    k = np.array([[f, 0.0, width / 2 + rng.normal(0, 5)], [0.0, f, height / 2 + rng.normal(0, 5)], [0, 0, 1.0]])
    return CameraCalib(channel=channel, intrinsic=k, lidar2cam=l2c, cam2ego=np.linalg.inv(l2c),
                       ego2global=np.eye(4), width=width, height=height)


def _assert_same(ours: Projection, ref: Projection, tol_px: float = 1e-3):
    """Same pairs (up to 2 on a validity border, by float rounding) with the same pixels and depths."""
    key_o = ours.point.astype(np.int64) * 256 + ours.cam
    key_r = ref.point.astype(np.int64) * 256 + ref.cam
    common, io, ir = np.intersect1d(key_o, key_r, return_indices=True)
    assert len(key_o) - common.size + len(key_r) - common.size <= 2
    assert common.size > 0
    np.testing.assert_allclose(ours.uv[io], ref.uv[ir], atol=tol_px, rtol=1e-6)
    np.testing.assert_allclose(ours.depth[io], ref.depth[ir], atol=1e-5, rtol=1e-6)


def test_random_points_and_cameras_match_devkit():
    rng = np.random.default_rng(0)
    for trial in range(5):
        cams = [_random_camera(rng, f"C{i}") for i in range(int(rng.integers(1, 7)))]
        pts = rng.uniform(-40, 40, size=(5000, 4)).astype(np.float32)
        pts[:, 2] = rng.uniform(-3, 3, 5000)
        ours, ref = project_points(pts, cams), project_points_reference(pts, cams)
        assert len(ours) > 100  # the test is not vacuous
        _assert_same(ours, ref)
        # sorted by point then camera
        key = ours.point.astype(np.int64) * 16 + ours.cam
        assert np.all(np.diff(key) > 0)
        # dtypes and bounds of the representation
        assert ours.point.dtype == np.int32 and ours.cam.dtype == np.uint8
        assert ours.uv.dtype == np.float32 and ours.depth.dtype == np.float32
        w = np.array([c.width for c in cams])[ours.cam]
        h = np.array([c.height for c in cams])[ours.cam]
        assert np.all((ours.uv[:, 0] >= 0) & (ours.uv[:, 0] < w) & (ours.uv[:, 1] >= 0) & (ours.uv[:, 1] < h))
        assert np.all(ours.depth > 1.0)


def test_min_depth_and_nonfinite_points():
    rng = np.random.default_rng(1)
    cam = _random_camera(rng)
    # points straight in front of the camera at depths 0.5 .. 5 m
    depth = np.linspace(0.5, 5.0, 10)
    in_cam = np.stack([np.zeros(10), np.zeros(10), depth, np.ones(10)])
    pts = (np.linalg.inv(cam.lidar2cam) @ in_cam)[:3].T.astype(np.float32)
    pts = np.vstack([pts, [[np.nan, 0, 0], [np.inf, 1, 1]]]).astype(np.float32)
    for min_depth in (1.0, 2.5):
        p = project_points(pts, [cam], ProjectConfig(min_depth=min_depth))
        np.testing.assert_array_equal(p.point, np.flatnonzero(depth > min_depth))
        np.testing.assert_allclose(p.depth, depth[depth > min_depth], rtol=1e-5)
        assert p.num_points == 12


def test_empty_inputs_and_validation():
    rng = np.random.default_rng(2)
    cam = _random_camera(rng)
    p = project_points(np.zeros((0, 3), np.float32), [cam])
    assert len(p) == 0 and p.num_points == 0 and p.counts().tolist() == [0]
    p = project_points(rng.normal(size=(10, 3)).astype(np.float32), [])
    assert len(p) == 0 and p.num_points == 10
    with pytest.raises(InputError, match="N, >=3"):
        project_points(np.zeros((5, 2), np.float32), [cam])
    bad = CameraCalib(**{**cam.__dict__, "intrinsic": np.eye(3) * 2})
    with pytest.raises(InputError, match="last row"):
        project_points(np.zeros((5, 3), np.float32), [bad])
    with pytest.raises(ConfigError, match="min_depth"):
        ProjectConfig(min_depth=-1.0)


def test_most_central_picks_one_camera_per_point():
    rng = np.random.default_rng(3)
    cams = [_random_camera(rng, f"C{i}") for i in range(6)]
    pts = rng.uniform(-30, 30, size=(4000, 3)).astype(np.float32)
    p = project_points(pts, cams)
    cam, uv, depth = p.most_central()
    vis = p.visible()
    np.testing.assert_array_equal(cam >= 0, vis)
    assert np.isnan(depth[~vis]).all() and np.isfinite(depth[vis]).all()
    # brute force: for each visible point, the chosen camera minimises the normalised offset
    size = p.sizes[p.cam]
    off = np.abs(p.uv / size - 0.5).max(axis=1)
    for i in np.flatnonzero(vis)[:500]:
        sel = p.point == i
        assert cam[i] == p.cam[sel][np.argmin(off[sel])]
        np.testing.assert_array_equal(uv[i], p.uv[sel][np.argmin(off[sel])])


@pytest.mark.fixtures
def test_nuscenes_fixture_matches_devkit(fixtures_dir):
    from shared.fixtures import load_nuscenes_fixture
    from shared.pointcloud import load_points

    info = load_nuscenes_fixture(fixtures_dir / f"{N015}.calib.json")
    pts = load_points(fixtures_dir / f"{N015}.pcd.bin")
    ours = project_points(pts, info.cameras)
    ref = project_points_reference(pts, info.cameras)
    _assert_same(ours, ref)
    assert ours.channels == CAMERAS
    counts = ours.counts()
    assert np.all((counts >= 2900) & (counts <= 4900)), counts  # fixtures README
    assert ours.visible().sum() < counts.sum()  # some points are in two overlapping cameras
    # the same through the calibration loader used by the CLI
    again = project_points(pts, load_cameras(fixtures_dir / f"{N015}.calib.json"))
    np.testing.assert_array_equal(again.uv, ours.uv)


@pytest.mark.fixtures
@pytest.mark.parametrize("scan,calib", [("000000.bin", "000000.calib.txt"),
                                        ("mmdet3d_demo_000008_reduced.bin", "mmdet3d_demo_000008.calib.json")])
def test_kitti_fixture_matches_devkit_and_lidar2img(fixtures_dir, scan, calib):
    from shared.pointcloud import load_points

    pts = load_points(fixtures_dir / "kitti" / scan)
    cams = load_cameras(fixtures_dir / "kitti" / calib)
    assert len(cams) == 1
    ours = project_points(pts, cams)
    _assert_same(ours, project_points_reference(pts, cams))
    assert len(ours) > 5000
    # KITTI's own formula uv ~ P2 @ R0_rect @ Tr_velo_to_cam @ x
    if calib.endswith(".json"):
        d = json.loads((fixtures_dir / "kitti" / calib).read_text())
        p2r0tr = np.asarray(d["P2"]) @ np.asarray(d["R0_rect"]) @ np.asarray(d["Tr_velo_to_cam"])
    else:
        rows = {}
        for line in (fixtures_dir / "kitti" / calib).read_text().splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                rows[k] = np.array(v.split(), dtype=float)
        r0, tr = np.eye(4), np.eye(4)
        r0[:3, :3] = rows["R0_rect"].reshape(3, 3)
        tr[:3] = rows["Tr_velo_to_cam"].reshape(3, 4)
        p2r0tr = rows["P2"].reshape(3, 4) @ r0 @ tr
    x = np.c_[pts[ours.point, :3].astype(np.float64), np.ones(len(ours))]
    h = x @ p2r0tr[:3].T
    np.testing.assert_allclose(ours.uv, h[:, :2] / h[:, 2:3], atol=1e-2)
    if calib.endswith(".json"):  # the demo scan is cropped to the camera's field of view
        assert ours.visible().mean() > 0.9


def test_load_cameras_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_cameras(tmp_path / "missing.json")
    bad = tmp_path / "bad.calib.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_cameras(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"foo": 1}))
    with pytest.raises(InputError, match="unknown calibration"):
        load_cameras(other)
