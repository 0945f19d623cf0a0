"""Object-recovery metrics: how well a sweep's regions (semantic pooling) recover its annotated objects.

Pure functions of numpy arrays. Inputs, for one sweep: ``points`` (N, 3) x, y, z in the sensor (LiDAR) frame;
``region`` (N,) int region ids, -1 = no region (ground, DBSCAN noise, a dropped cluster); optionally ``ground``
(N,) bool, the ground mask (without it every -1 point is just "unlabelled"), and ``dropped_reason`` (N,) int, 0 =
not in a dropped cluster, k >= 1 = in a cluster dropped by filter k (names passed as ``reason_names``, e.g.
``preprocess.pooling.REASONS``); and the annotated boxes as :class:`Boxes` (built by :func:`boxes_from_devkit` /
:func:`boxes_from_nuscenes` from nuScenes annotations, :func:`boxes_from_kitti` from KITTI label files).

The rules (thresholds are the fields of :class:`RecoveryRule`, defaults in brackets):

* Membership: a point is in a box when its coordinates in the box frame lie within the half sizes (bounds
  included), the test of nuscenes-devkit's ``points_in_box`` (equal on real boxes: see the tests), computed on
  the candidate points near each box only; the *enlarged* box adds ``enlarge``
  [0.25 m] on every side (x, y and z).
* An object *counts* when at least ``min_points`` [20] points lie in its box (boxes with fewer are still boxes:
  their points are not background).
* Its *scored points* are its points higher than the box bottom plus ``bottom_margin`` [0.3 m] (box frame z >=
  -h/2 + margin); points nearer the bottom (wheels, feet, where the ground starts) count neither for nor against.
* Its *best region* is the region holding most of its scored points (lowest id on a tie); *best share* = those
  points / scored points (the denominator includes scored points in no region); *inside share* = the share of all
  the best region's points (in the whole sweep) that lie in the object's enlarged box.
* *Recovered*: counted, best share >= ``min_share`` [0.8] and inside share >= ``min_inside`` [0.5].
* *Over-segmented*: counted and at least 2 regions each hold >= ``cover_share`` [0.1] of its scored points.
* Per region: the *majority box* is the box whose enlarged box holds most of its points; *purity* = that share
  (points in no enlarged box are background); the region is *background* when more than half its points are in
  no enlarged box; it is *under-segmented* when it holds >= ``cover_share`` of the scored points of at least 2
  counted objects.
* Ground share of object points = points labelled ground / points in the boxes of the counted objects (all their
  points, the low ones included); unlabelled share likewise for -1 points not labelled ground.
* Summary (:func:`summarize`, over one or several sweeps: sums over the concatenated tables, never means of
  per-sweep means): recall = recovered / counted objects, overall, per class and per distance band (xy distance
  of the box centre from the sensor: 0-20, 20-40, 40+ m); over-segmentation rate = over-segmented / counted;
  under-segmentation rate = under-segmented regions / regions holding >= ``cover_share`` of some counted object;
  **purity** is point-weighted over the non-background regions (sum of majority-box points / sum of points);
  the region-weighted mean is reported beside it as ``purity_region_mean``.
* Misses (:func:`classify_misses`), each missed counted object gets one kind, the first that applies:
  ``no_scored`` (no point above the bottom margin); ``merged`` (its best region lies less than ``min_inside``
  inside its enlarged box: it is merged with what stands next to it); else the largest loss among its scored
  points (ties in this order): ``ground`` (labelled ground: its lower part), ``dropped`` / ``noise`` (in no
  region, not ground: in a cluster dropped by the filters / DBSCAN noise, whichever holds more; ``unlabelled``
  when no ``dropped_reason`` was given), ``split`` (in other regions: over several regions).

Classes: nuScenes categories map to the 10 detection classes with devkit's ``category_to_detection_name``; the
others (animal, debris, pushable_pullable, bicycle_rack, strollers, wheelchairs, personal mobility, emergency
vehicles) become ``other`` (pass ``other=None`` to leave them out). KITTI: Car and Van -> car, Truck -> truck,
Pedestrian and Person_sitting -> pedestrian, Cyclist -> bicycle, Tram and Misc -> other (DontCare is skipped).
``other`` objects are counted in the overall recall like any class.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError, InputError

__all__ = ["Boxes", "RecoveryRule", "ObjectTable", "RegionTable", "SweepQuality", "QualitySummary",
           "DETECTION_CLASSES", "OTHER", "KITTI_CLASSES", "DISTANCE_BANDS", "MISS_KINDS",
           "points_in_boxes", "evaluate_sweep", "classify_misses", "summarize", "concat_objects",
           "concat_regions", "boxes_from_devkit", "boxes_from_nuscenes", "boxes_from_kitti", "yaw_rotation"]

#: nuScenes detection classes (devkit's ``DETECTION_NAMES`` order).
DETECTION_CLASSES: tuple[str, ...] = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian",
                                      "motorcycle", "bicycle", "traffic_cone", "barrier")
#: Class of annotated objects outside the detection classes.
OTHER = "other"
#: KITTI label types -> classes (DontCare is skipped by the loader).
KITTI_CLASSES: Mapping[str, str] = {"Car": "car", "Van": "car", "Truck": "truck", "Pedestrian": "pedestrian",
                                    "Person_sitting": "pedestrian", "Cyclist": "bicycle", "Tram": OTHER,
                                    "Misc": OTHER}
#: Distance bands (metres, xy distance of the box centre from the sensor): [lo, hi).
DISTANCE_BANDS: tuple[tuple[str, float, float], ...] = (("0-20", 0.0, 20.0), ("20-40", 20.0, 40.0),
                                                        ("40+", 40.0, math.inf))
#: Kinds of misses, in the order :func:`classify_misses` tests them.
MISS_KINDS: tuple[str, ...] = ("no_scored", "merged", "ground", "dropped", "noise", "unlabelled", "split")


@dataclass(frozen=True)
class RecoveryRule:
    """Thresholds of the recovery rule (see the module docstring): metres, shares in [0, 1]."""

    min_points: int = 20
    bottom_margin: float = 0.3
    min_share: float = 0.8
    min_inside: float = 0.5
    enlarge: float = 0.25
    cover_share: float = 0.1

    def __post_init__(self):
        if isinstance(self.min_points, bool) or not isinstance(self.min_points, (int, np.integer)) \
                or self.min_points < 1:
            raise ConfigError("min_points", self.min_points, "must be an integer >= 1")
        for name in ("bottom_margin", "enlarge"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not 0 <= v < math.inf:
                raise ConfigError(name, v, "must be a finite number >= 0 (metres)")
        for name in ("min_share", "min_inside", "cover_share"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not 0 < v <= 1:
                raise ConfigError(name, v, "must be a share in (0, 1]")


def yaw_rotation(yaw) -> np.ndarray:
    """(M, 3, 3) rotations about z by ``yaw`` (M,) radians (box frame -> sensor frame)."""
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)
    c, s = np.cos(yaw), np.sin(yaw)
    r = np.zeros((len(yaw), 3, 3))
    r[:, 0, 0], r[:, 0, 1], r[:, 1, 0], r[:, 1, 1], r[:, 2, 2] = c, -s, s, c, 1.0
    return r


@dataclass(frozen=True, eq=False)
class Boxes:
    """M annotated boxes in the sensor frame, as arrays.

    center (M, 3); size (M, 3) = width, length, height (devkit's ``wlh``: length along the box's x axis);
    yaw (M,) about z (radians); cls (M,) class names; rotation (M, 3, 3) box -> sensor frame, by default the
    rotation about z by ``yaw`` (the nuScenes builder keeps the devkit's full rotation: a LiDAR frame slightly
    tilted against the ego frame tilts the boxes too). Raises :class:`InputError` for inconsistent shapes.
    """

    center: np.ndarray
    size: np.ndarray
    yaw: np.ndarray
    cls: np.ndarray
    rotation: np.ndarray | None = None

    def __post_init__(self):
        center = np.asarray(self.center, dtype=np.float64).reshape(-1, 3) if np.size(self.center) else np.zeros((0, 3))
        m = len(center)
        size = np.asarray(self.size, dtype=np.float64).reshape(-1, 3) if m else np.zeros((0, 3))
        yaw = np.asarray(self.yaw, dtype=np.float64).reshape(-1)
        cls = np.asarray(self.cls, dtype=object).reshape(-1)
        if size.shape != (m, 3) or yaw.shape != (m,) or cls.shape != (m,):
            raise InputError(f"boxes: center {center.shape}, size {size.shape}, yaw {yaw.shape}, cls {cls.shape} "
                             f"do not describe the same {m} boxes")
        if not (np.isfinite(center).all() and np.isfinite(size).all() and np.isfinite(yaw).all()):
            raise InputError("boxes: non-finite centre, size or yaw")
        if (size < 0).any():
            raise InputError(f"boxes: negative size {size[(size < 0).any(axis=1)][0].tolist()}")
        rot = yaw_rotation(yaw) if self.rotation is None else np.asarray(self.rotation, dtype=np.float64)
        if rot.shape != (m, 3, 3):
            raise InputError(f"boxes: rotation has shape {rot.shape}, expected ({m}, 3, 3)")
        for name, v in (("center", center), ("size", size), ("yaw", yaw), ("cls", cls), ("rotation", rot)):
            object.__setattr__(self, name, v)

    def __len__(self) -> int:
        return len(self.center)


def _check_sweep(points, region, ground, dropped_reason) -> tuple[np.ndarray, ...]:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3 or not np.issubdtype(points.dtype, np.number):
        raise InputError(f"points must be a numeric (N, 3) array, got shape {points.shape} {points.dtype}")
    n = len(points)
    xyz = points[:, :3].astype(np.float64)
    region = np.asarray(region)
    if region.shape != (n,) or not np.issubdtype(region.dtype, np.integer):
        raise InputError(f"region must be an (N,) integer array with N={n}, got {region.shape} {region.dtype}")
    if ground is not None:
        ground = np.asarray(ground)
        if ground.shape != (n,) or ground.dtype != bool:
            raise InputError(f"ground must be an (N,) bool array with N={n}, got {ground.shape} {ground.dtype}")
    if dropped_reason is not None:
        dropped_reason = np.asarray(dropped_reason)
        if dropped_reason.shape != (n,) or not np.issubdtype(dropped_reason.dtype, np.integer):
            raise InputError(f"dropped_reason must be an (N,) integer array with N={n}, got "
                             f"{dropped_reason.shape} {dropped_reason.dtype}")
    return xyz, region.astype(np.int64), ground, dropped_reason


def _half(boxes: Boxes, m: int) -> np.ndarray:
    w, l, h = boxes.size[m]
    return np.array([l, w, h]) / 2


@dataclass(frozen=True, eq=False)
class _Members:
    """Point indices (ascending) of each box: inside, scored (inside, above the bottom margin), enlarged."""

    inside: list[np.ndarray]
    scored: list[np.ndarray]
    enlarged: list[np.ndarray]


def _members(xyz: np.ndarray, boxes: Boxes, enlarge: float, bottom_margin: float) -> _Members:
    """Box membership by the box-frame coordinates ``R^T (p - c)`` of the candidate points: those whose x lies
    within the box's circumscribed radius (points sorted by x once, a binary search per box) and y too."""
    order = np.argsort(xyz[:, 0], kind="stable")
    xs = xyz[order, 0]
    inside, scored, enlarged = [], [], []
    for m in range(len(boxes)):
        half = _half(boxes, m)
        reach = float(np.linalg.norm(half + enlarge)) * (1 + 1e-9) + 1e-9  # a rotation keeps |p - c|
        cx, cy = boxes.center[m, :2]
        cand = order[np.searchsorted(xs, cx - reach, side="left"):np.searchsorted(xs, cx + reach, side="right")]
        cand = np.sort(cand[np.abs(xyz[cand, 1] - cy) <= reach])
        loc = (xyz[cand] - boxes.center[m]) @ boxes.rotation[m]
        dist = np.abs(loc)
        ins = (dist <= half).all(axis=1)
        inside.append(cand[ins])
        scored.append(cand[ins & (loc[:, 2] >= -half[2] + bottom_margin)])
        enlarged.append(cand[(dist <= half + enlarge).all(axis=1)])
    return _Members(inside, scored, enlarged)


def points_in_boxes(points: np.ndarray, boxes: Boxes, enlarge: float = 0.0) -> np.ndarray:
    """(N, M) bool: point n lies in box m grown by ``enlarge`` metres on every side (devkit ``points_in_box``
    for ``enlarge=0``)."""
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    out = np.zeros((len(xyz), len(boxes)), dtype=bool)
    for m, idx in enumerate(_members(xyz, boxes, enlarge, 0.0).enlarged):
        out[idx, m] = True
    return out


class _Table:
    """Rows of equal-length arrays (the dataclass fields); ``len`` is the row count."""

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))

    def to_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_OBJECT_INT = ("box", "n_points", "n_scored", "best_region", "n_best", "n_cover", "n_ground", "n_unlabelled",
               "n_scored_ground", "n_scored_unlabelled", "n_scored_dropped", "dropped_reason")


@dataclass(frozen=True, eq=False)
class ObjectTable(_Table):
    """One row per box (arrays of length M).

    box: index in the sweep's :class:`Boxes`; cls; distance: xy distance of the centre from the sensor (m);
    n_points: points in the box; n_scored: of them above the bottom margin; counted: n_points >= min_points;
    best_region: region holding most scored points (-1: none); n_best: its scored points; best_share: n_best /
    n_scored (0 when nothing is scored); inside_share: share of the best region's points in the enlarged box (NaN
    without a best region); recovered; n_cover: regions holding >= cover_share of the scored points;
    n_ground / n_unlabelled: box points labelled ground / in no region and not ground; n_scored_ground,
    n_scored_unlabelled: the same among the scored points; n_scored_dropped: scored points in a cluster dropped by
    a filter (-1 when no ``dropped_reason`` was given); dropped_reason: the most common filter code among those
    (0: none).
    """

    box: np.ndarray
    cls: np.ndarray
    distance: np.ndarray
    n_points: np.ndarray
    n_scored: np.ndarray
    counted: np.ndarray
    best_region: np.ndarray
    n_best: np.ndarray
    best_share: np.ndarray
    inside_share: np.ndarray
    recovered: np.ndarray
    n_cover: np.ndarray
    n_ground: np.ndarray
    n_unlabelled: np.ndarray
    n_scored_ground: np.ndarray
    n_scored_unlabelled: np.ndarray
    n_scored_dropped: np.ndarray
    dropped_reason: np.ndarray

    @property
    def over_segmented(self) -> np.ndarray:
        return self.counted & (self.n_cover >= 2)

    @property
    def ground_share(self) -> np.ndarray:
        """Share of each object's points labelled ground (NaN for an empty box)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.n_ground / self.n_points

    @property
    def unlabelled_share(self) -> np.ndarray:
        """Share of each object's points in no region and not ground (NaN for an empty box)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.n_unlabelled / self.n_points

@dataclass(frozen=True, eq=False)
class RegionTable(_Table):
    """One row per region present in the sweep (arrays of length R).

    region: its id; n_points; majority_box: box (index) whose enlarged box holds most of its points (-1: none);
    n_majority: those points; n_background: its points in no enlarged box; purity = n_majority / n_points;
    background: n_background > n_points / 2; n_boxes: counted objects of which it holds >= cover_share of the
    scored points.
    """

    region: np.ndarray
    n_points: np.ndarray
    majority_box: np.ndarray
    n_majority: np.ndarray
    n_background: np.ndarray
    purity: np.ndarray
    background: np.ndarray
    n_boxes: np.ndarray

    @property
    def under_segmented(self) -> np.ndarray:
        return self.n_boxes >= 2


@dataclass(frozen=True, eq=False)
class SweepQuality:
    """The per-object and per-region tables of one sweep."""

    objects: ObjectTable
    regions: RegionTable


def evaluate_sweep(points: np.ndarray, region: np.ndarray, boxes: Boxes, ground: np.ndarray | None = None,
                   dropped_reason: np.ndarray | None = None, rule: RecoveryRule = RecoveryRule()) -> SweepQuality:
    """Per-object and per-region tables of one sweep (see the module docstring for the rules).

    points (N, >= 3) sensor frame; region (N,) int, -1 none; boxes in the same frame; ground (N,) bool or None;
    dropped_reason (N,) int (0: not dropped, k: dropped by filter k) or None. Raises :class:`InputError` for
    arrays of the wrong shape or type.
    """
    xyz, region, ground, dropped_reason = _check_sweep(points, region, ground, dropped_reason)
    mem = _members(xyz, boxes, rule.enlarge, rule.bottom_margin)
    labelled = region >= 0
    ids, ridx = np.unique(region[labelled], return_inverse=True)
    r_of = np.full(len(xyz), -1, dtype=np.int64)
    r_of[labelled] = ridx
    r_count = len(ids)
    r_size = np.bincount(ridx, minlength=r_count)
    in_enl = np.zeros((r_count, len(boxes)), dtype=np.int64)
    any_box = np.zeros(len(xyz), dtype=bool)
    for m, idx in enumerate(mem.enlarged):
        r = r_of[idx]
        in_enl[:, m] = np.bincount(r[r >= 0], minlength=r_count)
        any_box[idx] = True
    is_ground = ground if ground is not None else np.zeros(len(xyz), dtype=bool)
    unlabelled = ~labelled & ~is_ground
    dropped = unlabelled & (dropped_reason > 0) if dropped_reason is not None else None

    mm = len(boxes)
    cols: dict[str, Any] = {name: np.zeros(mm, dtype=np.int64) for name in _OBJECT_INT}
    best_share = np.zeros(mm)
    inside_share = np.full(mm, np.nan)
    n_boxes = np.zeros(r_count, dtype=np.int64)
    cols["box"] = np.arange(mm, dtype=np.int64)
    cols["best_region"][:] = -1
    for m in range(mm):
        sel, sc = mem.inside[m], mem.scored[m]
        n_sc = len(sc)
        cols["n_points"][m], cols["n_scored"][m] = len(sel), n_sc
        cols["n_ground"][m] = int(is_ground[sel].sum())
        cols["n_unlabelled"][m] = int(unlabelled[sel].sum())
        cols["n_scored_ground"][m] = int(is_ground[sc].sum())
        cols["n_scored_unlabelled"][m] = int(unlabelled[sc].sum())
        if dropped is None:
            cols["n_scored_dropped"][m] = -1
        else:
            codes = dropped_reason[sc[dropped[sc]]]
            cols["n_scored_dropped"][m] = len(codes)
            cols["dropped_reason"][m] = int(np.bincount(codes).argmax()) if len(codes) else 0
        r = r_of[sc]
        counts = np.bincount(r[r >= 0], minlength=r_count)
        if n_sc == 0 or not counts.any():
            continue
        best = int(counts.argmax())
        cover = counts >= rule.cover_share * n_sc
        cols["best_region"][m], cols["n_best"][m] = int(ids[best]), int(counts[best])
        cols["n_cover"][m] = int(cover.sum())
        best_share[m] = counts[best] / n_sc
        inside_share[m] = in_enl[best, m] / r_size[best]
        if cols["n_points"][m] >= rule.min_points:
            n_boxes += cover
    counted = cols["n_points"] >= rule.min_points
    with np.errstate(invalid="ignore"):
        recovered = counted & (best_share >= rule.min_share) & (inside_share >= rule.min_inside)
    objects = ObjectTable(cls=np.asarray(boxes.cls, dtype=object),
                          distance=np.hypot(boxes.center[:, 0], boxes.center[:, 1]), counted=counted,
                          best_share=best_share, inside_share=inside_share, recovered=recovered,
                          **{k: v for k, v in cols.items()})

    background_pts = np.bincount(r_of[labelled & ~any_box], minlength=r_count)
    if mm:
        majority = in_enl.argmax(axis=1)
        n_major = in_enl[np.arange(r_count), majority]
        majority = np.where(n_major > 0, majority, -1)
    else:
        majority = np.full(r_count, -1, dtype=np.int64)
        n_major = np.zeros(r_count, dtype=np.int64)
    regions = RegionTable(region=ids.astype(np.int64), n_points=r_size, majority_box=majority.astype(np.int64),
                          n_majority=n_major.astype(np.int64), n_background=background_pts,
                          purity=n_major / np.maximum(r_size, 1), background=2 * background_pts > r_size,
                          n_boxes=n_boxes)
    return SweepQuality(objects=objects, regions=regions)


def _concat(tables: Sequence, cls):
    if isinstance(tables, cls):
        return tables
    tables = list(tables)
    if not tables:
        raise InputError(f"no {cls.__name__} to aggregate")
    return cls(**{f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(cls)})


def concat_objects(tables: ObjectTable | Sequence[ObjectTable]) -> ObjectTable:
    """Several sweeps' object tables as one (rows in order; ``box`` stays each sweep's own index)."""
    return _concat(tables, ObjectTable)


def concat_regions(tables: RegionTable | Sequence[RegionTable]) -> RegionTable:
    """Several sweeps' region tables as one."""
    return _concat(tables, RegionTable)


def classify_misses(objects: ObjectTable, rule: RecoveryRule = RecoveryRule()) -> np.ndarray:
    """Kind of miss (M,) str of each counted, not recovered object ('' for the others): see the module docstring
    and :data:`MISS_KINDS`."""
    n = len(objects)
    kind = np.full(n, "", dtype=object)
    miss = objects.counted & ~objects.recovered
    n_sc = np.maximum(objects.n_scored, 1)
    with np.errstate(invalid="ignore"):
        merged = (objects.best_region >= 0) & (objects.inside_share < rule.min_inside)
    ground = objects.n_scored_ground / n_sc
    unl = objects.n_scored_unlabelled / n_sc
    other = (objects.n_scored - objects.n_scored_ground - objects.n_scored_unlabelled - objects.n_best) / n_sc
    known = objects.n_scored_dropped >= 0
    dropped_more = 2 * objects.n_scored_dropped >= objects.n_scored_unlabelled
    unl_kind = np.where(known, np.where(dropped_more, "dropped", "noise"), "unlabelled")
    loss = np.where((ground >= unl) & (ground >= other), "ground", np.where(unl >= other, unl_kind, "split"))
    kind[miss] = loss[miss]
    kind[miss & merged] = "merged"
    kind[miss & (objects.n_scored == 0)] = "no_scored"
    return kind


@dataclass(frozen=True)
class QualitySummary:
    """Summary over one or several sweeps (see :func:`summarize`).

    objects / recovered: counted and recovered objects; recall (NaN with no object); by_class and by_distance:
    name -> (objects, recovered, recall); over_segmentation: share of counted objects over-segmented;
    regions, background_regions, object_regions (regions holding >= cover_share of a counted object),
    under_segmented (of those, covering >= 2) and under_segmentation (their share); purity (point-weighted over
    non-background regions) and purity_region_mean; ground_share / unlabelled_share of counted objects' points;
    misses: kind -> count; misses_by_class: class (with a miss) -> kind -> count; dropped_reasons: filter name ->
    missed objects of kind ``dropped`` whose dropped points mostly fell to it; dropped_by_class: the same per class.
    """

    objects: int
    recovered: int
    recall: float
    by_class: dict[str, tuple[int, int, float]]
    by_distance: dict[str, tuple[int, int, float]]
    over_segmentation: float
    regions: int
    background_regions: int
    object_regions: int
    under_segmented: int
    under_segmentation: float
    purity: float
    purity_region_mean: float
    ground_share: float
    unlabelled_share: float
    misses: dict[str, int] = field(default_factory=dict)
    misses_by_class: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped_reasons: dict[str, int] = field(default_factory=dict)
    dropped_by_class: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _ratio(a, b) -> float:
    return float(a) / float(b) if b else math.nan


def _class_order(names) -> list[str]:
    present = set(names)
    known = [c for c in (*DETECTION_CLASSES, OTHER) if c in present]
    return known + sorted(present - set(known))


def summarize(objects: ObjectTable | Sequence[ObjectTable], regions: RegionTable | Sequence[RegionTable],
              rule: RecoveryRule = RecoveryRule(), reason_names: Sequence[str] = ()) -> QualitySummary:
    """Summary of one sweep's tables or of several sweeps' (concatenated first, so every rate is a ratio of sums
    over all sweeps). ``reason_names[k - 1]`` names dropped-reason code k (e.g. ``preprocess.pooling.REASONS``)."""
    obj, reg = concat_objects(objects), concat_regions(regions)
    c = obj.counted
    rec = obj.recovered & c

    def table(masks: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int, float]]:
        return {k: (int(m.sum()), int(rec[m].sum()), _ratio(rec[m].sum(), m.sum())) for k, m in masks.items()}

    by_class = table({k: c & (obj.cls == k) for k in _class_order(obj.cls[c])})
    by_distance = table({name: c & (obj.distance >= lo) & (obj.distance < hi) for name, lo, hi in DISTANCE_BANDS})
    kinds = classify_misses(obj, rule)
    misses = {k: int((kinds == k).sum()) for k in MISS_KINDS if (kinds == k).any()}
    misses_by_class = {cl: {k: int(((kinds == k) & (obj.cls == cl)).sum()) for k in MISS_KINDS
                            if ((kinds == k) & (obj.cls == cl)).any()} for cl in by_class
                       if (kinds[obj.cls == cl] != "").any()}
    def reasons(sel: np.ndarray) -> dict[str, int]:
        codes = np.bincount(obj.dropped_reason[sel].astype(np.int64), minlength=len(reason_names) + 1)
        return {(reason_names[k - 1] if k - 1 < len(reason_names) else str(k)): int(codes[k])
                for k in range(1, len(codes)) if codes[k]}

    drop = kinds == "dropped"
    dropped_reasons = reasons(drop)
    dropped_by_class = {cl: reasons(drop & (obj.cls == cl)) for cl in by_class if (drop & (obj.cls == cl)).any()}
    fg = ~reg.background
    object_regions = reg.n_boxes >= 1
    return QualitySummary(
        objects=int(c.sum()), recovered=int(rec.sum()), recall=_ratio(rec.sum(), c.sum()), by_class=by_class,
        by_distance=by_distance, over_segmentation=_ratio(obj.over_segmented.sum(), c.sum()),
        regions=len(reg), background_regions=int(reg.background.sum()), object_regions=int(object_regions.sum()),
        under_segmented=int(reg.under_segmented.sum()),
        under_segmentation=_ratio(reg.under_segmented.sum(), object_regions.sum()),
        purity=_ratio(reg.n_majority[fg].sum(), reg.n_points[fg].sum()),
        purity_region_mean=float(reg.purity[fg].mean()) if fg.any() else math.nan,
        ground_share=_ratio(obj.n_ground[c].sum(), obj.n_points[c].sum()),
        unlabelled_share=_ratio(obj.n_unlabelled[c].sum(), obj.n_points[c].sum()),
        misses=misses, misses_by_class=misses_by_class, dropped_reasons=dropped_reasons,
        dropped_by_class=dropped_by_class)


# ----------------------------------------------------------------------------------------------------------
# Builders


def boxes_from_devkit(boxes: Sequence[Any], other: str | None = OTHER) -> Boxes:
    """:class:`Boxes` from devkit ``Box`` objects (any frame; keep the one the points are in). Class: devkit's
    ``category_to_detection_name`` of ``box.name``, else ``other`` (None: such boxes are left out)."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    keep, names = [], []
    for b in boxes:
        name = category_to_detection_name(b.name) or other
        if name is not None:
            keep.append(b)
            names.append(name)
    rot = np.array([b.orientation.rotation_matrix for b in keep]).reshape(-1, 3, 3)
    return Boxes(center=np.array([b.center for b in keep]).reshape(-1, 3),
                 size=np.array([b.wlh for b in keep]).reshape(-1, 3),
                 yaw=np.arctan2(rot[:, 1, 0], rot[:, 0, 0]), cls=np.array(names, dtype=object), rotation=rot)


def boxes_from_nuscenes(nusc: Any, lidar_token: str, other: str | None = OTHER) -> Boxes:
    """The annotated boxes of a LiDAR keyframe (sample_data token) in its sensor frame, through devkit's
    ``NuScenes.get_sample_data`` (see :func:`boxes_from_devkit` for the classes)."""
    try:
        _, boxes, _ = nusc.get_sample_data(lidar_token)
    except KeyError:
        raise InputError(f"no sample_data with token {lidar_token!r}", getattr(nusc, "dataroot", None)) from None
    return boxes_from_devkit(boxes, other)


def boxes_from_kitti(label_txt: str | Path, calib_txt: str | Path, other: str | None = OTHER) -> Boxes:
    """KITTI ``label_2`` boxes in the LiDAR (velodyne) frame, through :func:`shared.fixtures.load_kitti_labels`;
    classes by :data:`KITTI_CLASSES` (an unknown type -> ``other``; None leaves those out)."""
    from shared.fixtures import load_kitti_labels

    kept = [(b, KITTI_CLASSES.get(b.cls, other)) for b in load_kitti_labels(label_txt, calib_txt)]
    kept = [(b, c) for b, c in kept if c is not None]
    # KittiBox.size is (length, width, height) with the length along the box x axis: devkit's wlh swaps the first two
    return Boxes(center=np.array([b.center for b, _ in kept]).reshape(-1, 3),
                 size=np.array([b.size[[1, 0, 2]] for b, _ in kept]).reshape(-1, 3),
                 yaw=np.array([b.yaw for b, _ in kept], dtype=np.float64),
                 cls=np.array([c for _, c in kept], dtype=object))
