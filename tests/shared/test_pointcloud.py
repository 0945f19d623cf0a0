"""shared.pointcloud: point-file reading against nuscenes-devkit's LidarPointCloud, and its errors."""
from __future__ import annotations

import numpy as np
import pytest

from shared.errors import InputError
from shared.pointcloud import POINT_DIMS, finite_mask, guess_format, load_points, save_points

N015 = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
N008 = "nuscenes/n008-2018-08-01-15-16-36-0400__LIDAR_TOP__1533151603597909.pcd.bin"


@pytest.mark.fixtures
@pytest.mark.parametrize("name, n", [(N015, 34688), (N008, 34752)])
def test_real_scan_matches_devkit(fixtures_dir, name, n):
    from nuscenes.utils.data_classes import LidarPointCloud

    pts = load_points(fixtures_dir / name)
    assert pts.shape == (n, 5) and pts.dtype == np.float32
    dev = LidarPointCloud.from_file(str(fixtures_dir / name)).points  # (4, N): ring index dropped
    assert dev.shape == (4, n)
    np.testing.assert_array_equal(pts[:, :4], dev.T)
    ring = pts[:, 4]
    assert np.array_equal(ring, np.round(ring)) and ring.min() == 0 and ring.max() == 31  # HDL-32E
    assert 0 <= pts[:, 3].min() and pts[:, 3].max() <= 255
    assert finite_mask(pts).all()


@pytest.mark.fixtures
def test_truncated_real_scan_named_in_error(fixtures_dir, tmp_path):
    from nuscenes.utils.data_classes import LidarPointCloud

    cut = tmp_path / "cut.pcd.bin"
    cut.write_bytes((fixtures_dir / N015).read_bytes()[:-7])
    with pytest.raises(InputError, match="truncated") as err:
        load_points(cut)
    assert err.value.path == str(cut) and "cut.pcd.bin" in str(err.value)
    # devkit fails too, but with a bare reshape error that names no file
    with pytest.raises(ValueError, match="reshape") as dev_err:
        LidarPointCloud.from_file(str(cut))
    assert "cut.pcd.bin" not in str(dev_err.value)


@pytest.mark.fixtures
def test_kitti_scan(fixtures_dir):
    pts = load_points(fixtures_dir / "kitti/000000.bin")
    assert pts.shape == (115384, 4) and pts.dtype == np.float32
    assert 0 <= pts[:, 3].min() and pts[:, 3].max() <= 1.0


def test_round_trip_and_formats(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(123, 5)).astype(np.float32)
    save_points(tmp_path / "a.pcd.bin", pts)
    assert (tmp_path / "a.pcd.bin").stat().st_size == 123 * 5 * 4
    np.testing.assert_array_equal(load_points(tmp_path / "a.pcd.bin"), pts)
    save_points(tmp_path / "b.bin", pts[:, :4])
    np.testing.assert_array_equal(load_points(tmp_path / "b.bin"), pts[:, :4])
    # a nuScenes file read as KITTI is a different, explicit choice
    save_points(tmp_path / "c.bin", pts[:4])  # 20 floats: 4 nuScenes points or 5 KITTI points
    assert load_points(tmp_path / "c.bin", "nuscenes").shape == (4, 5)
    assert load_points(tmp_path / "c.bin").shape == (5, 4)
    assert guess_format("x.pcd.bin") == "nuscenes" and guess_format("x.bin") == "kitti"
    assert POINT_DIMS == {"nuscenes": 5, "kitti": 4}


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        load_points(tmp_path / "missing.pcd.bin")
    assert "missing.pcd.bin" in str(err.value)
    with pytest.raises(InputError, match="unknown point-file format"):
        guess_format(tmp_path / "scan.ply")
    bad = tmp_path / "odd.bin"
    bad.write_bytes(b"\0" * 20)  # 5 floats: not a whole number of KITTI points
    with pytest.raises(InputError, match="multiple of 16") as err:
        load_points(bad)
    assert "odd.bin" in str(err.value)
    with pytest.raises(InputError, match="unknown point format"):
        load_points(bad, "ply")


def test_finite_mask_flags_nan_and_inf():
    pts = np.zeros((4, 5), np.float32)
    pts[1, 0] = np.nan
    pts[2, 2] = np.inf
    pts[3, 3] = np.nan  # intensity does not count
    np.testing.assert_array_equal(finite_mask(pts), [True, False, False, True])
