"""BEV map-segmentation targets: the six nuScenes map classes rasterised on the BEV grid through nuscenes-devkit's
``NuScenesMap.get_map_mask`` (METHOD.md section 4), as BEVFusion's ``LoadBEVSegmentation`` does.

Frame and grid: the LiDAR frame of the keyframe, as the BEV grid of :mod:`train.models.pointpillars`: row i covers
``y in [y0 + i * cell, y0 + (i + 1) * cell)``, column j covers ``x in [x0 + j * cell, ...)``. The devkit's mask has
row = patch-local y and column = patch-local x (both ascending), so it is used as is (BEVFusion transposes it
because its grid puts x first). As BEVFusion, the sensor's pose is its global translation and the yaw of its x
axis (pitch and roll are left out); ``patch_angle`` is that yaw in degrees.

Two things differ from BEVFusion, both stated:

* the devkit puts pixel centres on integer canvas coordinates (a pixel's centre lies on the patch edge's grid
  lines, half a cell off our cell centres); the patch is shifted by half a cell along both of its axes so that each
  devkit pixel samples our cell's centre (BEVFusion's labels sit 0.25 m off at 0.5 m cells);
* a view's augmentation record (:mod:`shared.augment_params`: ``q = s Rz(angle) F p + t``) is applied by
  rasterising in the augmented frame directly, scale and flips included: with ``Rz(a) F = F Rz(a')``
  (``a' = -a`` for one flip, ``a`` otherwise) the patch is ``1/s`` times the grid's size, centred at the preimage
  of the grid centre, turned by ``yaw - a'``, and the mask's columns (rows) are reversed for a flip of x (y). A cell
  of the augmented raster then holds the label of the point the augmentation moves to that cell's centre, exactly
  as the points are moved (BEVFusion composes only the rotation and translation into the patch).

Line layers (``divider`` = ``road_divider`` + ``lane_divider``) are drawn as the devkit draws them:
``cv2.polylines`` 2 canvas pixels thick (about 1-1.5 m at 0.5 m cells), whatever the scale.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared import devkit_compat
from shared.augment_params import as_matrix
from shared.errors import ConfigError, InputError

#: The six BEV map classes (BEVFusion's ``map_classes``) and the devkit layers each is the union of.
MAP_CLASSES: tuple[str, ...] = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")
CLASS_LAYERS: dict[str, tuple[str, ...]] = {
    "drivable_area": ("drivable_area",), "ped_crossing": ("ped_crossing",), "walkway": ("walkway",),
    "stop_line": ("stop_line",), "carpark_area": ("carpark_area",), "divider": ("road_divider", "lane_divider"),
}
#: Every devkit layer the classes read, in a fixed order.
LAYERS: tuple[str, ...] = tuple(dict.fromkeys(la for c in MAP_CLASSES for la in CLASS_LAYERS[c]))


@dataclass(frozen=True)
class BevGrid:
    """A BEV grid in the LiDAR frame: ``x_range`` and ``y_range`` (m, lower < upper) cut into square cells of
    ``cell`` m. The default is nuScenes map segmentation's 200 x 200 grid at 0.5 m (+-50 m)."""

    x_range: tuple[float, float] = (-50.0, 50.0)
    y_range: tuple[float, float] = (-50.0, 50.0)
    cell: float = 0.5

    def __post_init__(self):
        if not (isinstance(self.cell, (int, float)) and math.isfinite(self.cell) and self.cell > 0):
            raise ConfigError("cell", self.cell, "must be a positive number of metres")
        for name in ("x_range", "y_range"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ConfigError(name, (lo, hi), "must be finite with lower < upper")
            n = (hi - lo) / self.cell
            if abs(n - round(n)) > 1e-6:
                raise ConfigError(name, (lo, hi), f"its length must be a whole number of {self.cell} m cells")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) = (ny, nx)."""
        return (int(round((self.y_range[1] - self.y_range[0]) / self.cell)),
                int(round((self.x_range[1] - self.x_range[0]) / self.cell)))

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """x (nx,) and y (ny,) of the cell centres (m)."""
        ny, nx = self.shape
        return (self.x_range[0] + (np.arange(nx) + 0.5) * self.cell,
                self.y_range[0] + (np.arange(ny) + 0.5) * self.cell)


@dataclass(frozen=True)
class MapPatch:
    """Arguments of ``get_map_mask`` for one raster and the flips to apply to its result."""

    patch_box: tuple[float, float, float, float]  # x centre, y centre (global), height (along y), width (m)
    patch_angle: float  # degrees
    canvas_size: tuple[int, int]  # (rows, columns)
    flip_x: bool  # reverse the columns
    flip_y: bool  # reverse the rows


def sensor_pose_2d(lidar2global: np.ndarray) -> tuple[float, float, float]:
    """Global x, y and yaw (rad) of a sensor: its translation and the heading of its x axis (as BEVFusion)."""
    m = np.asarray(lidar2global, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ConfigError("lidar2global", m.shape, "expected a finite 4x4 matrix")
    return float(m[0, 3]), float(m[1, 3]), math.atan2(m[1, 0], m[0, 0])


def patch_geometry(lidar2global: np.ndarray, grid: BevGrid, aug: np.ndarray | None = None) -> MapPatch:
    """The devkit patch whose mask is the grid's raster in the (augmented) LiDAR frame; see the module docstring."""
    ox, oy, yaw = sensor_pose_2d(lidar2global)
    if aug is None:
        angle, scale, fx, fy, t = 0.0, 1.0, False, False, np.zeros(2)
    else:
        p = np.asarray(aug, dtype=np.float32).astype(np.float64)
        as_matrix(p)  # validates the record (ConfigError naming it)
        angle, scale, fx, fy, t = p[0], p[1], bool(p[2]), bool(p[3]), p[4:6]
    a2 = -angle if fx != fy else angle  # Rz(angle) F = F Rz(a2)
    f = np.array([-1.0 if fx else 1.0, -1.0 if fy else 1.0])
    centre = np.array([sum(grid.x_range) / 2, sum(grid.y_range) / 2])
    half = grid.cell / (2 * scale)
    v_c = f * (centre - t) / scale + half  # patch centre in the un-flipped, un-scaled frame, half a cell shifted
    alpha = yaw - a2
    c, s = math.cos(alpha), math.sin(alpha)
    gx, gy = ox + c * v_c[0] - s * v_c[1], oy + s * v_c[0] + c * v_c[1]
    height = (grid.y_range[1] - grid.y_range[0]) / scale
    width = (grid.x_range[1] - grid.x_range[0]) / scale
    return MapPatch(patch_box=(gx, gy, height, width), patch_angle=math.degrees(alpha), canvas_size=grid.shape,
                    flip_x=fx, flip_y=fy)


def rasterise(nusc_map, lidar2global: np.ndarray, grid: BevGrid = BevGrid(),
              aug: np.ndarray | None = None) -> np.ndarray:
    """The six classes of :data:`MAP_CLASSES` as a (6, ny, nx) uint8 0/1 raster in the (augmented) LiDAR frame.

    ``nusc_map``: a devkit ``NuScenesMap`` of the keyframe's location; ``lidar2global`` (4, 4); ``aug`` a view's
    augmentation record (7,) or None."""
    devkit_compat.enable()
    mp = patch_geometry(lidar2global, grid, aug)
    masks = nusc_map.get_map_mask(mp.patch_box, mp.patch_angle, list(LAYERS), mp.canvas_size)
    if masks.shape != (len(LAYERS), *grid.shape):
        raise InputError(f"the map returned masks of shape {masks.shape}, expected {(len(LAYERS), *grid.shape)}",
                         getattr(nusc_map, "json_fname", None))
    by_layer = dict(zip(LAYERS, masks.astype(bool), strict=True))
    out = np.stack([np.logical_or.reduce([by_layer[la] for la in CLASS_LAYERS[c]]) for c in MAP_CLASSES])
    if mp.flip_x:
        out = out[:, :, ::-1]
    if mp.flip_y:
        out = out[:, ::-1, :]
    return np.ascontiguousarray(out, dtype=np.uint8)


def keyframe_pose(nusc, sample_token: str) -> tuple[str, np.ndarray]:
    """The location (``log.location``) and LIDAR_TOP lidar2global (4, 4) float64 of a keyframe."""
    from shared.nuscenes_io import LIDAR_CHANNEL, sweep_info

    try:
        sample = nusc.get("sample", sample_token)
    except KeyError:
        raise InputError(f"sample token {sample_token!r} is not in the dataset",
                         Path(nusc.dataroot) / nusc.version / "sample.json") from None
    info = sweep_info(nusc, sample["data"][LIDAR_CHANNEL], cameras=())
    log = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])
    return log["location"], info.ego2global @ info.lidar2ego


def load_maps(dataroot: str | Path, locations) -> dict[str, object]:
    """The devkit ``NuScenesMap`` of each location (``maps/expansion/<location>.json``); InputError naming a
    missing expansion file."""
    from nuscenes.map_expansion.map_api import NuScenesMap

    out = {}
    for loc in sorted(set(locations)):
        path = Path(dataroot) / "maps" / "expansion" / f"{loc}.json"
        if not path.is_file():
            raise InputError("no map expansion for this location (nuScenes map expansion v1.3 expected)", path)
        out[loc] = NuScenesMap(str(dataroot), loc)
    return out


def keyframe_raster(nusc, maps: Mapping[str, object], sample_token: str, grid: BevGrid = BevGrid(),
                    aug: np.ndarray | None = None) -> np.ndarray:
    """:func:`rasterise` for a keyframe: (6, ny, nx) uint8 in its (augmented) LiDAR frame."""
    loc, l2g = keyframe_pose(nusc, sample_token)
    if loc not in maps:
        raise InputError(f"no map loaded for location {loc!r} (loaded: {sorted(maps)})")
    return rasterise(maps[loc], l2g, grid, aug)
