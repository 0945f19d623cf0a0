"""shared.fixtures: the real nuScenes/KITTI fixture loaders, checked against the data and devkit geometry."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shared.errors import InputError
from shared.fixtures import load_kitti_calib, load_kitti_labels, load_nuscenes_fixture
from shared.pointcloud import load_points
from shared.records import CAMERAS

N015_CALIB = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.calib.json"

pytestmark = pytest.mark.fixtures


def _is_rigid(t: np.ndarray) -> bool:
    r = t[:3, :3]
    return np.allclose(r @ r.T, np.eye(3), atol=1e-5) and np.isclose(np.linalg.det(r), 1, atol=1e-5) and np.allclose(
        t[3], [0, 0, 0, 1]
    )


def test_nuscenes_fixture_sweep(fixtures_dir):
    s = load_nuscenes_fixture(fixtures_dir / N015_CALIB)
    assert s.path.is_file() and s.path.name.endswith("1532402927647951.pcd.bin")
    assert s.timestamp == 1532402927647951 and s.is_key_frame
    assert s.sample_token == "ca9a282c9e77460f8360f564131a8af5"
    assert tuple(c.channel for c in s.cameras) == CAMERAS
    assert _is_rigid(s.lidar2ego) and _is_rigid(s.ego2global)
    for c in s.cameras:
        assert c.image_path.is_file() and c.channel in c.image_path.name
        assert (c.width, c.height) == (1600, 900)
        assert c.intrinsic.shape == (3, 3) and c.intrinsic[2, 2] == 1 and c.intrinsic[0, 0] > 500  # CAM_BACK: ~809
        assert abs(c.intrinsic[0, 2] - 800) < 80 and abs(c.intrinsic[1, 2] - 450) < 80
        assert _is_rigid(c.lidar2cam) and _is_rigid(c.cam2ego)
        # camera images are taken within ~50 ms of the LiDAR sweep
        assert abs(c.timestamp - s.timestamp) < 50_000
        # the chain differs from the static one, inv(cam2ego) @ lidar2ego, only by the ego motion in that time
        static = np.linalg.inv(c.cam2ego) @ s.lidar2ego
        assert np.abs(static[:3, 3] - c.lidar2cam[:3, 3]).max() < 0.5
        assert np.abs(static[:3, :3] - c.lidar2cam[:3, :3]).max() < 0.02


def test_nuscenes_fixture_errors(fixtures_dir, tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        load_nuscenes_fixture(tmp_path / "nope.calib.json")
    assert "nope.calib.json" in str(err.value)
    bad = tmp_path / "bad.calib.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_nuscenes_fixture(bad)
    d = json.loads((fixtures_dir / N015_CALIB).read_text())
    del d["cameras"]["CAM_BACK"]
    bad.write_text(json.dumps(d))
    with pytest.raises(InputError, match="lacks camera CAM_BACK"):
        load_nuscenes_fixture(bad)
    d = json.loads((fixtures_dir / N015_CALIB).read_text())
    d["lidar2ego"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    bad.write_text(json.dumps(d))
    with pytest.raises(InputError, match="'lidar2ego' has shape"):
        load_nuscenes_fixture(bad)


def test_kitti_calib_reproduces_p2_projection(fixtures_dir):
    path = fixtures_dir / "kitti/000000.calib.txt"
    calib = load_kitti_calib(path)
    rows = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            rows[k] = np.array(v.split(), float)
    r0 = np.eye(4)
    r0[:3, :3] = rows["R0_rect"].reshape(3, 3)
    tr = np.eye(4)
    tr[:3] = rows["Tr_velo_to_cam"].reshape(3, 4)
    p2_full = rows["P2"].reshape(3, 4) @ r0 @ tr
    np.testing.assert_allclose(calib.intrinsic @ calib.lidar2cam[:3], p2_full, rtol=1e-9, atol=1e-9)
    # mmdet3d's demo calibration of another frame agrees with the same formula
    demo = json.loads((fixtures_dir / "kitti/mmdet3d_demo_000008.calib.json").read_text())
    p2 = np.array(demo["P2"], float)
    lidar2img = np.array(demo["lidar2img"], float)
    np.testing.assert_allclose(
        p2[:3] @ np.array(demo["R0_rect"], float) @ np.array(demo["Tr_velo_to_cam"], float), lidar2img[:3], rtol=1e-5
    )


def test_kitti_label_box_holds_points_and_projects_onto_its_2d_box(fixtures_dir):
    from nuscenes.utils.data_classes import Box
    from nuscenes.utils.geometry_utils import view_points
    from pyquaternion import Quaternion

    k = fixtures_dir / "kitti"
    calib = load_kitti_calib(k / "000000.calib.txt")
    (ped,) = load_kitti_labels(k / "000000.label_2.txt", k / "000000.calib.txt")
    assert ped.cls == "Pedestrian"
    pts = load_points(k / "000000.bin")
    inside = ped.contains(pts[:, :3])
    assert inside.sum() > 100  # a pedestrian at 8.7 m in a 64-beam scan
    assert ped.contains(pts[:, :3], margin=0.3).sum() >= inside.sum()
    # its lowest points sit near the ground (-1.67 .. -1.79 m in KITTI LiDAR frames)
    assert -1.9 < pts[inside, 2].min() < -1.4
    # devkit Box (w, l, h) corners projected with the calibration hit the label's 2-D box
    box = Box(ped.center, [ped.size[1], ped.size[0], ped.size[2]], Quaternion(axis=[0, 0, 1], angle=ped.yaw))
    cam = calib.lidar2cam[:3, :3] @ box.corners() + calib.lidar2cam[:3, 3:]
    uv = view_points(cam, calib.intrinsic, normalize=True)[:2]
    proj = np.r_[uv.min(1), uv.max(1)]
    label = np.array([712.40, 143.00, 810.73, 307.92])
    inter = np.prod(np.clip(np.minimum(proj[2:], label[2:]) - np.maximum(proj[:2], label[:2]), 0, None))
    union = np.prod(proj[2:] - proj[:2]) + np.prod(label[2:] - label[:2]) - inter
    assert inter / union > 0.8


def test_kitti_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_kitti_calib(tmp_path / "calib.txt")
    bad = tmp_path / "calib.txt"
    bad.write_text("P2: 1 2 3\n")
    with pytest.raises(InputError, match="lacks P2"):
        load_kitti_calib(bad)
    with pytest.raises(InputError, match="label file not found"):
        load_kitti_labels(tmp_path / "label.txt", bad)
