"""Loaders for the real sensor fixtures (``../shared/fixtures``): calibration JSON, KITTI calib and labels.

The fixtures are not part of the product; tests and benchmarks use them through :func:`shared.paths.fixtures_dir`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import InputError
from shared.records import CAMERAS, CameraCalib, SweepInfo


def _mat(d: dict, key: str, shape: tuple[int, int], path: Path) -> np.ndarray:
    try:
        m = np.asarray(d[key], dtype=np.float64)
    except KeyError:
        raise InputError(f"calibration lacks {key!r}", path) from None
    if m.shape != shape:
        raise InputError(f"calibration {key!r} has shape {m.shape}, expected {shape}", path)
    return m


def load_nuscenes_fixture(calib_json: str | Path) -> SweepInfo:
    """A fixture sweep and its six cameras from an mmdet3d-style ``*.calib.json`` (see the fixtures README).

    Point file and images are looked up beside the JSON. ``lidar2cam`` is taken as given (it includes the ego
    motion between LiDAR and camera timestamps).
    """
    path = Path(calib_json)
    if not path.is_file():
        raise InputError("calibration file not found", path)
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", path) from None
    cams = []
    for channel in CAMERAS:
        if channel not in d.get("cameras", {}):
            raise InputError(f"calibration lacks camera {channel}", path)
        c = d["cameras"][channel]
        w, h = c.get("image_size_wh", (1600, 900))
        cams.append(
            CameraCalib(
                channel=channel,
                intrinsic=_mat(c, "cam_intrinsic", (3, 3), path),
                lidar2cam=_mat(c, "lidar2cam", (4, 4), path),
                cam2ego=_mat(c, "cam2ego", (4, 4), path),
                ego2global=np.full((4, 4), np.nan),  # not in the fixture; lidar2cam already holds the chain
                width=int(w),
                height=int(h),
                timestamp=int(round(float(c.get("timestamp_s", 0.0)) * 1e6)),
                image_path=path.parent / c["image"],
                token=c.get("sample_data_token", ""),
            )
        )
    lidar = d.get("lidar", {})
    return SweepInfo(
        token="",
        path=path.parent / lidar.get("file", path.name.replace(".calib.json", ".pcd.bin")),
        timestamp=int(round(float(lidar.get("timestamp_s", 0.0)) * 1e6)),
        is_key_frame=True,
        lidar2ego=_mat(d, "lidar2ego", (4, 4), path),
        ego2global=_mat(d, "ego2global", (4, 4), path),
        cameras=tuple(cams),
        sample_token=d.get("sample_token", ""),
    )


def kitti_camera_from_matrices(p2, r0_rect, tr_velo_to_cam, width: int = 1242, height: int = 375,
                               image_path: Path | None = None, where: str | Path | None = None) -> CameraCalib:
    """KITTI left colour camera from P2 (3x4 or 4x4), R0_rect (3x3 or 4x4), Tr_velo_to_cam (3x4 or 4x4).

    KITTI projects ``uv ~ P2 @ R0_rect @ Tr_velo_to_cam @ x``. With ``P2 = K [I | b]`` this is
    ``K @ lidar2cam`` where ``lidar2cam = [I | b] @ R0_rect @ Tr_velo_to_cam`` (b: the stereo baseline offset).
    KITTI has no ego frame: ``cam2ego`` maps the rectified camera to the velodyne frame.
    """
    def pad(m, name):
        m = np.asarray(m, dtype=np.float64)
        if m.shape not in ((3, 3), (3, 4), (4, 4)):
            raise InputError(f"KITTI calibration {name} has shape {m.shape}", where)
        out = np.eye(4)
        out[: m.shape[0], : m.shape[1]] = m
        return out

    p2, r0, tr = pad(p2, "P2"), pad(r0_rect, "R0_rect"), pad(tr_velo_to_cam, "Tr_velo_to_cam")
    k = p2[:3, :3]
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(k, p2[:3, 3])
    return CameraCalib(
        channel="CAM2",
        intrinsic=k,
        lidar2cam=shift @ r0 @ tr,
        cam2ego=np.linalg.inv(r0 @ tr),
        ego2global=np.eye(4),
        width=int(width),
        height=int(height),
        image_path=image_path,
    )


def load_kitti_calib(calib_txt: str | Path, width: int = 1242, height: int = 375,
                     image_path: Path | None = None) -> CameraCalib:
    """The left colour camera (P2) of a KITTI object ``calib.txt`` as a :class:`CameraCalib`
    (see :func:`kitti_camera_from_matrices`)."""
    path = Path(calib_txt)
    if not path.is_file():
        raise InputError("calibration file not found", path)
    rows: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, vals = line.split(":", 1)
            try:
                rows[key.strip()] = np.array([float(v) for v in vals.split()], dtype=np.float64)
            except ValueError:
                raise InputError(f"KITTI calibration line {key.strip()!r} is not numeric", path) from None
    for key, n in (("P2", 12), ("R0_rect", 9), ("Tr_velo_to_cam", 12)):
        if key not in rows or rows[key].size != n:
            raise InputError(f"KITTI calibration lacks {key} ({n} values)", path)
    return kitti_camera_from_matrices(rows["P2"].reshape(3, 4), rows["R0_rect"].reshape(3, 3),
                                      rows["Tr_velo_to_cam"].reshape(3, 4), width, height, image_path, path)


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:
        return None


def load_cameras(calib: str | Path) -> tuple[CameraCalib, ...]:
    """Cameras from a calibration file: the nuScenes fixture ``*.calib.json`` (six cameras), a KITTI object
    ``calib.txt`` (camera P2) or the mmdet3d KITTI demo ``*.calib.json`` (keys P2, R0_rect, Tr_velo_to_cam).

    For a KITTI ``.txt`` the image size is read from a ``<stem>.png`` beside it when there is one
    (``000000.calib.txt`` -> ``000000.png``), else KITTI's usual 1242x375.
    Raises :class:`InputError` naming the file when it is missing or not one of these formats.
    """
    path = Path(calib)
    if not path.is_file():
        raise InputError("calibration file not found", path)
    if path.suffix == ".txt":
        png = path.with_name(path.name.split(".")[0] + ".png")
        size = _image_size(png) if png.is_file() else None
        return (load_kitti_calib(path, *(size or (1242, 375)), image_path=png if size else None),)
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", path) from None
    if not isinstance(d, dict):
        raise InputError("calibration JSON is not an object", path)
    if "cameras" in d:
        return tuple(load_nuscenes_fixture(path).cameras)
    if all(k in d for k in ("P2", "R0_rect", "Tr_velo_to_cam")):
        w, h = d.get("image_size_wh", (1242, 375))
        image = path.parent / d["image"] if "image" in d else None
        return (kitti_camera_from_matrices(d["P2"], d["R0_rect"], d["Tr_velo_to_cam"], w, h, image, path),)
    raise InputError("unknown calibration JSON: expected a nuScenes fixture (key 'cameras') or KITTI "
                     "(keys P2, R0_rect, Tr_velo_to_cam)", path)


@dataclass(frozen=True, eq=False)
class KittiBox:
    """A KITTI label box converted to the velodyne (LiDAR) frame.

    ``center`` (3,) is the box centre (not the bottom centre KITTI stores); ``size`` (3,) = length, width,
    height; ``yaw`` rotation about the LiDAR z axis.
    """

    cls: str
    center: np.ndarray
    size: np.ndarray
    yaw: float

    def contains(self, xyz: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Boolean mask (N,) of the points ``xyz`` (N, 3) inside the box grown by ``margin`` metres."""
        d = xyz - self.center
        c, s = np.cos(-self.yaw), np.sin(-self.yaw)
        lx = c * d[:, 0] - s * d[:, 1]
        ly = s * d[:, 0] + c * d[:, 1]
        half = self.size / 2 + margin
        return (np.abs(lx) <= half[0]) & (np.abs(ly) <= half[1]) & (np.abs(d[:, 2]) <= half[2])


def load_kitti_labels(label_txt: str | Path, calib_txt: str | Path) -> list[KittiBox]:
    """KITTI ``label_2`` boxes (camera frame) as :class:`KittiBox` in the LiDAR frame; ``DontCare`` skipped."""
    path = Path(label_txt)
    if not path.is_file():
        raise InputError("label file not found", path)
    calib = load_kitti_calib(calib_txt)
    # camera (rectified) -> velodyne: inverse of R0_rect @ Tr_velo_to_cam
    cam2velo = calib.cam2ego
    boxes = []
    for line in path.read_text().splitlines():
        f = line.split()
        if not f or f[0] == "DontCare":
            continue
        if len(f) < 15:
            raise InputError(f"label line has {len(f)} fields, expected 15: {line!r}", path)
        h, w, l = (float(v) for v in f[8:11])
        x, y, z, ry = (float(v) for v in f[11:15])
        bottom = cam2velo @ np.array([x, y, z, 1.0])
        center = bottom[:3] + np.array([0.0, 0.0, h / 2])
        boxes.append(KittiBox(cls=f[0], center=center, size=np.array([l, w, h]), yaw=-ry - np.pi / 2))
    return boxes
