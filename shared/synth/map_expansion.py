"""The nuScenes map expansion (v1.3 schema) of a synthetic dataset: ``maps/expansion/<location>.json``.

Each scene's world (:mod:`shared.synth.world`) is one straight or curved road; its map layers are laid out on the
same road coordinates (s, d) the ray caster and the camera renderer use (d > 0 left of the driving direction,
traffic keeps right, so the lanes at d < 0 drive towards +s):

* ``drivable_area`` and ``road_segment``: the carriageway ``|d| < hw`` over the road's extent ``World.s_range``
  (the same area as the drivable-area basemap ``maps/<token>.png``);
* ``walkway``: the sidewalks ``hw < |d| < hw + sw``;
* ``carpark_area``: the 2.5 m parking lanes at the outer edge of each side (worlds with ``parking``);
* ``road_divider``: the centre line ``d = 0`` (painted double and solid in the world);
* ``lane_divider``: the dashed lines between driving lanes of one direction, ``|d| = i * lane``;
* ``ped_crossing``: 4 m wide crossings over the driving lanes (and bike lanes; not over the parking lanes), the first
  within 40 m ahead of the ego vehicle's start, then every 50-90 m; placed by a generator of their own
  (``(seed, scene, 1)``), so the rest of the data stays as it was;
* ``stop_line``: 1 m deep, 1.5 m before each crossing, across the lanes approaching it (``PED_CROSSING`` type).

Crossings and stop lines exist in the map only (the simulated paint has no zebra or stop bars). The tables the
devkit's :class:`NuScenesMap` loads but we have nothing for (``lane``, ``road_block``, ``traffic_light``,
``lane_connector``, ``arcline_path_3``, ``connectivity``) are present and empty.

Scenes that share a location (more than four scenes: :data:`shared.synth.tables.LOCATIONS` repeat) lie apart in
the global frame (:meth:`shared.synth.config.SynthConfig.scene_offset`, :func:`moved_map`), so a location's file
holds every scene's roads side by side, none overlapping another's.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from shared.synth.tables import token
from shared.synth.world import R_HW, R_LANE, R_NLANE, R_SW, World, road_xy

#: Map expansion schema version (the devkit refuses anything below 1.3).
MAP_VERSION = "1.3"
#: Arc-length step (m) of the polygon and line vertices along the road (chord error < 2 mm at radius 250 m).
VERTEX_STEP = 2.0
#: Crossing width along the road, stop-line depth and its gap before the crossing (m).
CROSSING_WIDTH, STOP_LINE_DEPTH, STOP_LINE_GAP = 4.0, 1.0, 1.5
#: Parking lane width (m), as :func:`shared.synth.world.make_world` lays it out.
PARKING_WIDTH = 2.5
#: The tables of the expansion that hold nothing for a synthetic road (lists, except the two keyed by lane).
EMPTY_LISTS = ("lane", "road_block", "traffic_light", "lane_connector")
EMPTY_DICTS = ("arcline_path_3", "connectivity")


@dataclass(frozen=True)
class SceneMap:
    """One scene's map geometry in global xy (m): polygons (N, 2) float64 per polygon layer, polylines (N, 2)
    per line layer, and each stop line's crossing index into ``ped_crossing``; ``extent`` (xmax, ymax)."""

    drivable_area: tuple[np.ndarray, ...]
    walkway: tuple[np.ndarray, ...]
    carpark_area: tuple[np.ndarray, ...]
    ped_crossing: tuple[np.ndarray, ...]
    stop_line: tuple[np.ndarray, ...]
    stop_line_crossing: tuple[int, ...]
    road_divider: tuple[np.ndarray, ...]
    lane_divider: tuple[np.ndarray, ...]
    extent: tuple[float, float]


def _line(world: World, s0: float, s1: float, d: float) -> np.ndarray:
    """Global xy (N, 2) of the parallel at lateral offset d from arc length s0 to s1."""
    n = max(2, int(math.ceil(abs(s1 - s0) / VERTEX_STEP)) + 1)
    return np.array([road_xy(world.road, float(s), d) for s in np.linspace(s0, s1, n)])


def _strip(world: World, s0: float, s1: float, d0: float, d1: float) -> np.ndarray:
    """Polygon (N, 2) of the road-coordinate rectangle s0..s1 x d0..d1 (its two long sides follow the road)."""
    return np.vstack([_line(world, s0, s1, d0), _line(world, s1, s0, d1)])


def moved_map(sm: SceneMap, offset: tuple[float, float]) -> SceneMap:
    """The map layers moved by ``offset`` (x, y) m in the global frame (the same object for a zero offset)."""
    if offset == (0.0, 0.0):
        return sm
    d = np.array(offset, dtype=np.float64)
    layers = {f.name: tuple(p + d for p in getattr(sm, f.name)) for f in dataclasses.fields(sm)
              if f.name not in ("stop_line_crossing", "extent")}
    return dataclasses.replace(sm, **layers, extent=(sm.extent[0] + offset[0], sm.extent[1] + offset[1]))


def crossing_positions(world: World, rng: np.random.Generator) -> list[float]:
    """Arc lengths of the crossings' centres: the first 5..40 m ahead of the ego vehicle's start, then every
    50..90 m (and as far back), within the road's extent less 10 m."""
    lo, hi = world.s_range[0] + 10.0, world.s_range[1] - 10.0
    first = world.ego.s(0.0) + float(rng.uniform(5.0, 40.0))
    out = [first]
    s = first
    while True:
        s += float(rng.uniform(50.0, 90.0))
        if s > hi:
            break
        out.append(s)
    s = first
    while True:
        s -= float(rng.uniform(50.0, 90.0))
        if s < lo:
            break
        out.insert(0, s)
    return [c for c in out if lo <= c <= hi]


def scene_map(world: World, rng: np.random.Generator) -> SceneMap:
    """The six map layers of one world (see the module docstring); ``rng`` places the crossings only."""
    P = world.road
    hw, sw, lane, n_lanes = float(P[R_HW]), float(P[R_SW]), float(P[R_LANE]), int(P[R_NLANE])
    s0, s1 = world.s_range
    walk = (_strip(world, s0, s1, hw, hw + sw), _strip(world, s0, s1, -hw - sw, -hw))
    park = ((_strip(world, s0, s1, hw - PARKING_WIDTH, hw), _strip(world, s0, s1, -hw, -hw + PARKING_WIDTH))
            if world.parking else ())
    d_cross = hw - PARKING_WIDTH if world.parking else hw
    d_lanes = n_lanes * lane
    crossings, stops, stop_of = [], [], []
    for k, sc in enumerate(crossing_positions(world, rng)):
        a, b = sc - CROSSING_WIDTH / 2, sc + CROSSING_WIDTH / 2
        crossings.append(_strip(world, a, b, -d_cross, d_cross))
        # lanes at d < 0 drive towards +s and stop before a; those at d > 0 drive towards -s and stop after b
        stops.append(_strip(world, a - STOP_LINE_GAP - STOP_LINE_DEPTH, a - STOP_LINE_GAP, -d_lanes, 0.0))
        stops.append(_strip(world, b + STOP_LINE_GAP, b + STOP_LINE_GAP + STOP_LINE_DEPTH, 0.0, d_lanes))
        stop_of += [k, k]
    dividers = tuple(_line(world, s0, s1, side * i * lane) for i in range(1, n_lanes) for side in (-1.0, 1.0))
    return SceneMap(drivable_area=(_strip(world, s0, s1, -hw, hw),), walkway=walk, carpark_area=park,
                    ped_crossing=tuple(crossings), stop_line=tuple(stops), stop_line_crossing=tuple(stop_of),
                    road_divider=(_line(world, s0, s1, 0.0),), lane_divider=dividers,
                    extent=(float(world.extent[2]), float(world.extent[3])))


class _Builder:
    """Accumulates the geometric tables (node, line, polygon) with deterministic tokens."""

    def __init__(self, seed: int, location: str):
        self.seed, self.location = seed, location
        self.node: list[dict] = []
        self.line: list[dict] = []
        self.polygon: list[dict] = []

    def tok(self, *key) -> str:
        return token(self.seed, "map", self.location, *key)

    def _nodes(self, xy: np.ndarray) -> list[str]:
        out = []
        for x, y in xy:
            t = self.tok("node", len(self.node))
            self.node.append({"token": t, "x": round(float(x), 4), "y": round(float(y), 4)})
            out.append(t)
        return out

    def add_polygon(self, xy: np.ndarray) -> str:
        t = self.tok("polygon", len(self.polygon))
        self.polygon.append({"token": t, "exterior_node_tokens": self._nodes(xy), "holes": []})
        return t

    def add_line(self, xy: np.ndarray) -> str:
        t = self.tok("line", len(self.line))
        self.line.append({"token": t, "node_tokens": self._nodes(xy)})
        return t


def expansion(scenes: list[SceneMap], seed: int, location: str) -> dict:
    """The map expansion JSON object (v1.3) of one location holding the maps of ``scenes``."""
    B = _Builder(seed, location)
    out: dict[str, list[dict]] = {k: [] for k in ("drivable_area", "road_segment", "walkway", "carpark_area",
                                                  "ped_crossing", "stop_line", "road_divider", "lane_divider")}

    def rec(layer: str, **fields) -> str:
        t = B.tok(layer, len(out[layer]))
        out[layer].append({"token": t, **fields})
        return t

    for sm in scenes:
        da_poly = [B.add_polygon(p) for p in sm.drivable_area]
        da = rec("drivable_area", polygon_tokens=da_poly)
        seg = rec("road_segment", polygon_token=da_poly[0], is_intersection=False, drivable_area_token=da)
        for p in sm.walkway:
            rec("walkway", polygon_token=B.add_polygon(p))
        for p in sm.carpark_area:
            rec("carpark_area", polygon_token=B.add_polygon(p), road_block_token="")
        crossing_tok = [rec("ped_crossing", polygon_token=B.add_polygon(p), road_segment_token=seg)
                        for p in sm.ped_crossing]
        for p, k in zip(sm.stop_line, sm.stop_line_crossing, strict=True):
            rec("stop_line", polygon_token=B.add_polygon(p), stop_line_type="PED_CROSSING",
                ped_crossing_tokens=[crossing_tok[k]], traffic_light_tokens=[], road_block_token="")
        for ln in sm.road_divider:
            rec("road_divider", line_token=B.add_line(ln), road_segment_token=seg)
        for ln in sm.lane_divider:
            rec("lane_divider", line_token=B.add_line(ln), lane_divider_segments=[])
    width = max((sm.extent[0] for sm in scenes), default=1.0)
    height = max((sm.extent[1] for sm in scenes), default=1.0)
    obj: dict = {"version": MAP_VERSION, "canvas_edge": [width, height],
                 "polygon": B.polygon, "line": B.line, "node": B.node, **out}
    obj.update({k: [] for k in EMPTY_LISTS})
    obj.update({k: {} for k in EMPTY_DICTS})
    return obj


def expansion_bytes(scenes: list[SceneMap], seed: int, location: str) -> bytes:
    """:func:`expansion` serialised (compact, deterministic key order)."""
    return json.dumps(expansion(scenes, seed, location), separators=(",", ":")).encode()
