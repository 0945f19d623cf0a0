"""Semantic pooling: cluster filters turning DBSCAN clusters into regions.

A cluster is dropped ([proto] filters, METHOD.md section 1), checked in this order, the first reason counting:

1. ``ego``: its xy centroid lies on the ego vehicle, ``|x| <= ego_box`` and ``|y| <= ego_box`` (sensor frame);
2. ``too_low``: its highest point is less than ``min_height_above_ground`` above the local ground;
3. ``too_high``: its highest point is more than ``max_height`` above the local ground;
4. ``too_large`` / ``too_small``: its xy footprint area (the minimum-area rectangle of its xy points) is above
   ``max_area`` or the rectangle's long side above ``max_length`` / the area is below ``min_area``;
5. ``too_thin``: that rectangle's side ratio (short / long) is below ``min_side_ratio``.

Defaults [ours, measured in docs/preprocess.md "Region quality"]: the filters drop what no road object is --
higher than 8 m, a footprint above 60 m^2 or longer than 20 m (the longest road vehicles are 18.75 m, e.g. an
articulated bus, 2.55 m wide) -- and no longer what a real object can be: the prototype's 0.25 m^2 minimum
footprint dropped pedestrians and cones, its 20 m^2 maximum buses and trailers, its side-ratio test every
vehicle seen from one side, its 4.84 m height cranes; ``min_area`` and ``min_side_ratio`` are 0 (off) by
default and keep the prototype's values as options.

Frame of the heights [ours]: "ground" is the *local* ground, the point's own patch plane from
:func:`preprocess.ground.fit_ground` (``GroundResult.height``, signed distance to the plane), so a cluster on a
slope is measured from the road under it, not from a fixed z. The prototype used the LiDAR frame with a fixed
sensor height of 1.84 m; passing a plain boolean ground mask instead of a ``GroundResult`` reproduces that
(height = z + sensor_height).

The kept clusters become regions ``0..R-1`` (in cluster order); the region id of every other point is -1
(semantic-less: ground, noise, dropped clusters, non-finite points). Minimum-area rectangles come from the
convex hull (Andrew's monotone chain) and rotating calipers over the hull edges, computed in a Numba kernel;
``cv2.minAreaRect`` is the reference in the tests. The hull is skipped where cheap bounds already decide the area
filters: the octagon of the extreme points in 8 directions lies inside the hull (its area is a lower bound of the
rectangle's: above ``max_area`` means too large; the larger side of the axis-aligned box over sqrt(2) is a lower
bound of the long side: above ``max_length`` means too large) and the axis-aligned box contains the rectangle (an
upper bound: below ``min_area`` means too small). Walls and buildings, the largest clusters, are thus never hulled; the reasons
and the kept regions' summaries are the same as with the full computation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from shared.errors import ConfigError, InputError

__all__ = ["PoolingConfig", "PoolingResult", "RegionSummaries", "DropCounts", "pool_regions", "REASONS",
           "min_area_rect"]

#: Drop reasons, in the order they are checked; ``cluster_reason`` codes are 1 + the index here (0 = kept).
REASONS = ("ego", "too_low", "too_high", "too_large", "too_small", "too_thin")


@dataclass(frozen=True)
class PoolingConfig:
    """Cluster-filter thresholds (metres, square metres); see the module docstring for the defaults' reasons.

    min_height_above_ground: drop if the highest point is below local ground + this (0.25 [proto]).
    max_height: drop if the highest point is above local ground + this (8.0 [ours]; the prototype's 3.0 m in the
        LiDAR frame, 4.84 m above ground, dropped cranes and raised booms).
    max_area: drop if the footprint (min-area rectangle) is larger (60 [ours]; [proto] 20 dropped buses).
    max_length: drop if the rectangle's long side is longer (20.0 [ours]: the longest road vehicles are 18.75 m).
    min_area: drop if the footprint is smaller (0: off [ours]; [proto] 0.25 dropped pedestrians and cones).
    min_side_ratio: drop if short/long side of the rectangle is below this (0: off [ours]; [proto] 0.1 dropped
        vehicles seen from one side).
    ego_box: half-size of the ego-vehicle square around the sensor in x and y (1.5 [proto]).
    sensor_height: for a plain ground mask: height above ground = z + sensor_height (1.84 [proto]).
    """

    min_height_above_ground: float = 0.25
    max_height: float = 8.0
    max_area: float = 60.0
    max_length: float = 20.0
    min_area: float = 0.0
    min_side_ratio: float = 0.0
    ego_box: float = 1.5
    sensor_height: float = 1.84

    def __post_init__(self):
        for name in ("min_height_above_ground", "max_height", "max_area", "max_length", "min_area",
                     "min_side_ratio", "ego_box", "sensor_height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                raise ConfigError(name, v, "must be a finite number")
            if v < 0:
                raise ConfigError(name, v, "must be >= 0")
        if self.max_height <= self.min_height_above_ground:
            raise ConfigError("max_height", self.max_height, "must be above min_height_above_ground")
        if self.max_area <= self.min_area:
            raise ConfigError("max_area", self.max_area, "must be above min_area")
        if self.max_length <= 0:
            raise ConfigError("max_length", self.max_length, "must be > 0")
        if self.min_side_ratio > 1:
            raise ConfigError("min_side_ratio", self.min_side_ratio, "must be in [0, 1]")


@dataclass(frozen=True)
class DropCounts:
    """Number of clusters dropped per reason (see :data:`REASONS`)."""

    ego: int = 0
    too_low: int = 0
    too_high: int = 0
    too_large: int = 0
    too_small: int = 0
    too_thin: int = 0

    @property
    def total(self) -> int:
        return self.ego + self.too_low + self.too_high + self.too_large + self.too_small + self.too_thin


@dataclass(frozen=True, eq=False)
class RegionSummaries:
    """Per-region arrays, R regions.

    cluster (R,) int32 source cluster label; points (R,) int32; centroid (R, 3) float64;
    z_min, z_max (R,) float64 (LiDAR frame); height_max (R,) float64 highest point above local ground;
    box_center (R, 2), box_size (R, 2) = (long, short) side, box_yaw (R,) radians of the long side in
    (-pi/2, pi/2]; area (R,) = long * short (all float64).
    """

    cluster: np.ndarray
    points: np.ndarray
    centroid: np.ndarray
    z_min: np.ndarray
    z_max: np.ndarray
    height_max: np.ndarray
    box_center: np.ndarray
    box_size: np.ndarray
    box_yaw: np.ndarray
    area: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True, eq=False)
class PoolingResult:
    """region (N,) int16: -1 semantic-less, else 0..R-1; summaries of the R regions; dropped: counts per
    reason; cluster_region (K,) int16 region of each input cluster (-1 dropped); cluster_reason (K,) int8
    (0 kept, else 1 + index in :data:`REASONS`)."""

    region: np.ndarray
    summaries: RegionSummaries
    dropped: DropCounts
    cluster_region: np.ndarray
    cluster_reason: np.ndarray

    @property
    def n_regions(self) -> int:
        return len(self.summaries)


# ----------------------------------------------------------------------------------------------------------
# Numba kernels


@njit(cache=True, inline="always")
def _cross(o0, o1, a0, a1, b0, b1):
    return (a0 - o0) * (b1 - o1) - (a1 - o1) * (b0 - o0)


@njit(cache=True, inline="always")
def _hull(x, y, idx, hull):
    """Convex hull (monotone chain) of the points idx (sorted by x, then y) into ``hull``; returns its size."""
    m = idx.shape[0]
    if m <= 2:
        for k in range(m):
            hull[k] = idx[k]
        if m == 2 and x[idx[0]] == x[idx[1]] and y[idx[0]] == y[idx[1]]:
            return 1
        return m
    h = 0
    for k in range(m):  # lower
        i = idx[k]
        while h >= 2 and _cross(x[hull[h - 2]], y[hull[h - 2]], x[hull[h - 1]], y[hull[h - 1]], x[i], y[i]) <= 0:
            h -= 1
        hull[h] = i
        h += 1
    low = h + 1
    for k in range(m - 2, -1, -1):  # upper
        i = idx[k]
        while h >= low and _cross(x[hull[h - 2]], y[hull[h - 2]], x[hull[h - 1]], y[hull[h - 1]], x[i], y[i]) <= 0:
            h -= 1
        hull[h] = i
        h += 1
    return h - 1  # the last point repeats the first


@njit(cache=True, inline="always")
def _rect(x, y, hull, h, out):
    """Minimum-area rectangle of the hull points: out = cx, cy, long, short, yaw."""
    if h == 1:
        out[0] = x[hull[0]]
        out[1] = y[hull[0]]
        out[2] = 0.0
        out[3] = 0.0
        out[4] = 0.0
        return
    best = np.inf
    for e in range(h):
        i = hull[e]
        j = hull[(e + 1) % h]
        ux = x[j] - x[i]
        uy = y[j] - y[i]
        ln = math.sqrt(ux * ux + uy * uy)
        if ln == 0:
            continue
        ux /= ln
        uy /= ln
        umin = np.inf
        umax = -np.inf
        vmin = np.inf
        vmax = -np.inf
        for k in range(h):
            px = x[hull[k]]
            py = y[hull[k]]
            a = px * ux + py * uy
            b = -px * uy + py * ux
            umin = min(umin, a)
            umax = max(umax, a)
            vmin = min(vmin, b)
            vmax = max(vmax, b)
        area = (umax - umin) * (vmax - vmin)
        if area < best:
            best = area
            cu = 0.5 * (umin + umax)
            cv = 0.5 * (vmin + vmax)
            out[0] = cu * ux - cv * uy
            out[1] = cu * uy + cv * ux
            su = umax - umin
            sv = vmax - vmin
            if su >= sv:
                out[2] = su
                out[3] = sv
                yaw = math.atan2(uy, ux)
            else:
                out[2] = sv
                out[3] = su
                yaw = math.atan2(ux, -uy)
            if yaw > math.pi / 2:
                yaw -= math.pi
            elif yaw <= -math.pi / 2:
                yaw += math.pi
            out[4] = yaw
    if best == np.inf:  # all hull points identical
        out[0] = x[hull[0]]
        out[1] = y[hull[0]]
        out[2] = 0.0
        out[3] = 0.0
        out[4] = 0.0


@njit(cache=True, inline="always")
def _extremes(x, y, pts_idx, ext):
    """ext (8,) = the points of ``pts_idx`` extreme in the directions (0,-1), (1,-1), (1,0), (1,1), (0,1),
    (-1,1), (-1,0), (-1,-1) (counter-clockwise on the convex hull). Returns (area of the octagon they span, a
    lower bound of the hull's area; area of the axis-aligned bounding box, an upper bound of the minimum-area
    rectangle's)."""
    dx = (0.0, 1.0, 1.0, 1.0, 0.0, -1.0, -1.0, -1.0)
    dy = (-1.0, -1.0, 0.0, 1.0, 1.0, 1.0, 0.0, -1.0)
    best = np.full(8, -np.inf)
    for t in range(pts_idx.shape[0]):
        i = pts_idx[t]
        for d in range(8):
            v = dx[d] * x[i] + dy[d] * y[i]
            if v > best[d]:
                best[d] = v
                ext[d] = i
    area2 = 0.0
    for d in range(8):
        j = ext[d]
        k = ext[(d + 1) % 8]
        area2 += x[j] * y[k] - x[k] * y[j]
    box = (x[ext[2]] - x[ext[6]]) * (y[ext[4]] - y[ext[0]])
    return 0.5 * area2, box


@njit(cache=True, inline="always")
def _octagon_filter(x, y, pts_idx, ext):
    """Indices of ``pts_idx`` not strictly inside the octagon of its extreme points ``ext`` (:func:`_extremes`)."""
    m = pts_idx.shape[0]
    if m <= 8:
        return pts_idx.copy()
    keep = np.empty(m, np.int64)
    n_keep = 0
    for t in range(m):
        i = pts_idx[t]
        inside = True
        for d in range(8):
            j = ext[d]
            k = ext[(d + 1) % 8]
            if x[j] == x[k] and y[j] == y[k]:
                continue  # degenerate edge: no constraint
            if _cross(x[j], y[j], x[k], y[k], x[i], y[i]) <= 0:
                inside = False
                break
        if not inside:
            keep[n_keep] = i
            n_keep += 1
    if n_keep == 0:  # all points identical: every edge degenerate
        return pts_idx[:1].copy()
    return keep[:n_keep].copy()


@njit(cache=True)
def _summaries_kernel(xyz, height, gmask, labels_in, k, ego_box, h_low, h_high, max_area, min_area, max_length):
    """Per-cluster stats of the points with labels 0..k-1 that are finite (x, y, z, height) and not ground.
    Returns counts (k,), stats (k, 12): cx, cy, cz, zmin, zmax, hmax, box cx, cy, long, short, yaw, area; and
    the cleaned labels (n,) int32 (-1 for the excluded points). The footprint (columns 6-11) is NaN for empty
    clusters and for those already dropped by the ego / height filters (centroid within ``ego_box``, highest
    point below ``h_low`` or above ``h_high``): no hull is computed for them. Nor for those whose area bounds
    settle the area filters: the octagon of extreme points (inside the hull) larger than ``max_area``, or the
    axis-aligned box (around the minimum-area rectangle) smaller than ``min_area``; their columns 6-10 are NaN
    and the area (column 11) is that bound. Nor for those whose axis-aligned box has a side longer than
    ``sqrt(2) * max_length`` (the rectangle's long side is then above ``max_length``): area +inf."""
    n = xyz.shape[0]
    labels = np.empty(n, np.int32)
    cnt = np.zeros(k + 1, np.int64)
    for i in range(n):
        c = labels_in[i]
        if c >= 0 and not gmask[i] and np.isfinite(xyz[i, 0]) and np.isfinite(xyz[i, 1]) \
                and np.isfinite(xyz[i, 2]) and np.isfinite(height[i]):
            labels[i] = c
            cnt[c + 1] += 1
        else:
            labels[i] = -1
    for c in range(k):
        cnt[c + 1] += cnt[c]
    order = np.empty(cnt[k], np.int64)
    fill = cnt[:-1].copy()
    for i in range(n):
        c = labels[i]
        if c >= 0:
            order[fill[c]] = i
            fill[c] += 1
    x = np.empty(n)
    y = np.empty(n)
    for i in range(n):
        x[i] = xyz[i, 0]
        y[i] = xyz[i, 1]
    stats = np.empty((k, 12))
    hull = np.empty(cnt[k] + 1, np.int64)
    out = np.empty(5)
    ext = np.empty(8, np.int64)
    for c in range(k):
        a = cnt[c]
        b = cnt[c + 1]
        m = b - a
        sx = 0.0
        sy = 0.0
        sz = 0.0
        zmin = np.inf
        zmax = -np.inf
        hmax = -np.inf
        for t in range(a, b):
            i = order[t]
            sx += xyz[i, 0]
            sy += xyz[i, 1]
            sz += xyz[i, 2]
            zmin = min(zmin, xyz[i, 2])
            zmax = max(zmax, xyz[i, 2])
            hmax = max(hmax, height[i])
        if m == 0:
            for j in range(12):
                stats[c, j] = np.nan
            continue
        stats[c, 0] = sx / m
        stats[c, 1] = sy / m
        stats[c, 2] = sz / m
        stats[c, 3] = zmin
        stats[c, 4] = zmax
        stats[c, 5] = hmax
        if (abs(stats[c, 0]) <= ego_box and abs(stats[c, 1]) <= ego_box) or hmax < h_low or hmax > h_high:
            for j in range(6, 12):
                stats[c, j] = np.nan
            continue
        oct_area, box_area = _extremes(x, y, order[a:b], ext)
        bound = np.nan
        box_long = max(x[ext[2]] - x[ext[6]], y[ext[4]] - y[ext[0]])
        if box_long > math.sqrt(2.0) * max_length * (1.0 + 1e-9):
            bound = np.inf  # too long whatever the rectangle
        elif oct_area > max_area * (1.0 + 1e-9):
            bound = oct_area  # too large whatever the rectangle
        elif box_area < min_area * (1.0 - 1e-9):
            bound = box_area  # too small whatever the rectangle
        if not np.isnan(bound):
            for j in range(6, 11):
                stats[c, j] = np.nan
            stats[c, 11] = bound
            continue
        # Akl-Toussaint: drop the points strictly inside the octagon of extreme points (never hull vertices)
        idx = _octagon_filter(x, y, order[a:b], ext)
        m = idx.shape[0]
        # sort the remaining points by x then y
        xs = np.empty(m)
        for t in range(m):
            xs[t] = x[idx[t]]
        srt = np.argsort(xs, kind="mergesort")
        idx = idx[srt]
        t = 0
        while t < m:  # runs of equal x: insertion sort by y
            u = t + 1
            while u < m and x[idx[u]] == x[idx[t]]:
                u += 1
            for v in range(t + 1, u):
                w = idx[v]
                r = v - 1
                while r >= t and y[idx[r]] > y[w]:
                    idx[r + 1] = idx[r]
                    r -= 1
                idx[r + 1] = w
            t = u
        h = _hull(x, y, idx, hull)
        _rect(x, y, hull, h, out)
        for j in range(5):
            stats[c, 6 + j] = out[j]
        stats[c, 11] = out[2] * out[3]
    return cnt[1:] - cnt[:-1], stats, labels


@njit(cache=True)
def _reasons_kernel(counts, st, ego_box, h_low, h_high, max_area, min_area, min_ratio, max_length):
    """Drop reason (k,) int8 of each cluster from its stats (:func:`_summaries_kernel`): 0 kept (or empty),
    else 1 + the index in :data:`REASONS` of the first filter it fails, in that order."""
    k = counts.shape[0]
    reason = np.zeros(k, np.int8)
    for c in range(k):
        if counts[c] == 0:
            continue
        long_side = st[c, 8]
        ratio = st[c, 9] / long_side if long_side > 0 else 0.0
        if abs(st[c, 0]) <= ego_box and abs(st[c, 1]) <= ego_box:
            reason[c] = 1
        elif st[c, 5] < h_low:
            reason[c] = 2
        elif st[c, 5] > h_high:
            reason[c] = 3
        elif st[c, 11] > max_area or long_side > max_length:
            reason[c] = 4
        elif st[c, 11] < min_area:
            reason[c] = 5
        elif ratio < min_ratio:
            reason[c] = 6
    return reason


@njit(cache=True)
def _assign_regions(lab, cluster_region):
    """region (n,) int16: cluster_region[lab[i]] where lab[i] >= 0, else -1."""
    n = lab.shape[0]
    region = np.empty(n, np.int16)
    for i in range(n):
        c = lab[i]
        region[i] = cluster_region[c] if c >= 0 else -1
    return region


# ----------------------------------------------------------------------------------------------------------
# Public API


def min_area_rect(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Minimum-area rectangle of (M, 2) points: center (2,), size (2,) = (long, short), yaw of the long side."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
        raise InputError(f"min_area_rect needs (M >= 1, 2) points, got shape {xy.shape}")
    xyz = np.zeros((len(xy), 3))
    xyz[:, :2] = xy
    _, st, _ = _summaries_kernel(xyz, np.zeros(len(xy)), np.zeros(len(xy), np.bool_), np.zeros(len(xy), np.int32), 1,
                                 -1.0, -np.inf, np.inf, np.inf, -np.inf, np.inf)
    return st[0, 6:8].copy(), st[0, 8:10].copy(), float(st[0, 10])


def pool_regions(xyz: np.ndarray, ground, labels: np.ndarray, cfg: PoolingConfig = PoolingConfig()
                 ) -> PoolingResult:
    """Filter clusters and assign region ids.

    xyz: (N, 3) (or (N, C >= 3)) float32/float64 points, LiDAR frame.
    ground: a :class:`preprocess.ground.GroundResult` of these points (heights above the local ground plane),
        or a boolean (N,) ground mask (heights = z + cfg.sensor_height, the prototype's fixed frame).
    labels: (N,) int cluster labels, -1 noise, clusters 0..K-1 (e.g. :func:`preprocess.cluster.cluster_nonground`).
        Ground points and non-finite points are treated as noise whatever their label.
    Returns a :class:`PoolingResult`.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise InputError(f"points must be an (N, 3) array, got shape {xyz.shape}")
    n = len(xyz)
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be an (N,) integer array with N={n}, got {labels.shape} {labels.dtype}")
    if xyz.dtype not in (np.float32, np.float64):
        xyz = xyz.astype(np.float64)
    if hasattr(ground, "height") and hasattr(ground, "mask"):
        gmask = np.asarray(ground.mask, dtype=bool)
        height = np.asarray(ground.height)
    else:
        gmask = np.asarray(ground, dtype=bool)
        height = xyz[:, 2].astype(np.float64) + cfg.sensor_height
    if gmask.shape != (n,) or height.shape != (n,):
        raise InputError(f"ground mask/height have shape {gmask.shape}/{height.shape}, expected ({n},)")
    k = max(int(labels.max()) + 1, 0) if n else 0
    counts, st, lab = _summaries_kernel(xyz, height, gmask, labels, k, float(cfg.ego_box),
                                        float(cfg.min_height_above_ground), float(cfg.max_height),
                                        float(cfg.max_area), float(cfg.min_area), float(cfg.max_length))
    reason = _reasons_kernel(counts, st, float(cfg.ego_box), float(cfg.min_height_above_ground),
                             float(cfg.max_height), float(cfg.max_area), float(cfg.min_area),
                             float(cfg.min_side_ratio), float(cfg.max_length))
    keep = reason == 0
    keep &= counts > 0
    r_count = int(np.count_nonzero(keep))
    if r_count > np.iinfo(np.int16).max:
        raise InputError(f"{r_count} regions in one sweep exceed the int16 region id range")
    cluster_region = np.full(k, -1, np.int16)
    cluster_region[keep] = np.arange(r_count, dtype=np.int16)
    region = _assign_regions(lab, cluster_region)
    kept = np.flatnonzero(keep)
    s = st[kept]
    summaries = RegionSummaries(
        cluster=kept.astype(np.int32), points=counts[kept].astype(np.int32), centroid=s[:, 0:3].copy(),
        z_min=s[:, 3].copy(), z_max=s[:, 4].copy(), height_max=s[:, 5].copy(), box_center=s[:, 6:8].copy(),
        box_size=s[:, 8:10].copy(), box_yaw=s[:, 10].copy(), area=s[:, 11].copy(),
    )
    dropped = DropCounts(*(int(c) for c in np.bincount(reason, minlength=len(REASONS) + 1)[1:]))
    return PoolingResult(region=region, summaries=summaries, dropped=dropped, cluster_region=cluster_region,
                         cluster_reason=reason)
