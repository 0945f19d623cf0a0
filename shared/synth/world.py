"""The 3-D world of one synthetic scene: a road with a non-planar ground, traffic participants, static
structure and the ego vehicle's trajectory.

Frames and conventions (as nuScenes): the global frame has z up; a road is described by road coordinates
``(s, d)`` (arc length along its centre line, lateral offset positive to the left of the driving direction).
The centre line is a circular arc (or a straight line for curvature 0). Everything geometric the ray caster
needs is packed into plain float64 arrays:

* road parameters ``P`` (:data:`N_ROAD_PARAMS`,), see the ``R_*`` indices;
* primitives ``(M, 10)``: ``type, cx, cy, cz, a, b, c, yaw, reflectivity, agent`` with type 0 = box
  (half sizes a, b, c along its own x, y, z; rotated by ``yaw`` about z), 1 = vertical cylinder (radius a,
  half height b), 2 = sphere (radius a); ``agent`` is the index of the annotated object it belongs to, or -1
  for static structure.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

# ---------------------------------------------------------------------------------------------- road / ground
R_OX, R_OY, R_H0, R_K, R_Z0, R_GRADE, R_CAMBER, R_HW, R_CURB, R_SW, R_LANE, R_UND, R_BUMP, R_NLANE = range(14)
N_ROAD_PARAMS = 14

#: Ground materials: reflectivity of asphalt, lane paint, concrete (curb and sidewalk), terrain (grass, soil).
GROUND_REFLECTIVITY = np.array([0.055, 0.45, 0.13, 0.07])
MAT_ASPHALT, MAT_PAINT, MAT_CONCRETE, MAT_TERRAIN = 0, 1, 2, 3
#: Largest ground slope (rise per metre) the ground function can produce apart from curb faces:
#: grade 0.04 + camber 0.025 or terrain undulation (0.4 m amplitude: 0.075, its ramp: 0.027) + bumps 0.03.
MAX_GROUND_SLOPE = 0.18


@njit(cache=True)
def road_xy(P, s, d):
    """Global (x, y) of road coordinates (s, d)."""
    h0, k = P[R_H0], P[R_K]
    if abs(k) < 1e-9:
        ch, sh = math.cos(h0), math.sin(h0)
        return P[R_OX] + s * ch - d * sh, P[R_OY] + s * sh + d * ch
    r = 1.0 / k
    cx = P[R_OX] - r * math.sin(h0)
    cy = P[R_OY] + r * math.cos(h0)
    th = h0 + k * s
    return cx + (r - d) * math.sin(th), cy - (r - d) * math.cos(th)


@njit(cache=True)
def road_heading(P, s):
    """Heading (rad, global yaw) of the centre line at arc length s."""
    return P[R_H0] + P[R_K] * s


@njit(cache=True)
def road_sd(P, x, y):
    """Road coordinates (s, d) of the global point (x, y)."""
    h0, k = P[R_H0], P[R_K]
    if abs(k) < 1e-9:
        ch, sh = math.cos(h0), math.sin(h0)
        dx, dy = x - P[R_OX], y - P[R_OY]
        return dx * ch + dy * sh, -dx * sh + dy * ch
    r = 1.0 / k
    cx = P[R_OX] - r * math.sin(h0)
    cy = P[R_OY] + r * math.cos(h0)
    vx, vy = x - cx, y - cy
    sg = 1.0 if r > 0 else -1.0
    th = math.atan2(sg * vx, -sg * vy)
    dth = th - h0
    dth = (dth + math.pi) % (2.0 * math.pi) - math.pi
    return dth / k, r - sg * math.sqrt(vx * vx + vy * vy)


@njit(cache=True)
def ground_profile(P, s, d):
    """Ground height and material at road coordinates (s, d).

    Cross profile: a cambered road (crown at d = 0) with lane paint, a curb of height ``P[R_CURB]`` at
    ``|d| = hw``, a sidewalk rising 2 % away from the road, then undulating terrain. Along the road: a
    constant grade and small bumps.
    """
    hw, sw = P[R_HW], P[R_SW]
    ad = abs(d)
    z = P[R_Z0] + P[R_GRADE] * s + P[R_BUMP] * math.sin(0.9 * s + 0.3) * math.cos(1.7 * d)
    if ad < hw:
        z -= P[R_CAMBER] * ad
        mat = MAT_ASPHALT
        lane = P[R_LANE]
        # centre line (double, solid), lane dividers (dashed 3 m / 6 m), edge lines (solid)
        if ad < 0.25 and ad > 0.05 or ad > hw - 0.45 and ad < hw - 0.3:
            mat = MAT_PAINT
        else:
            for i in range(1, int(P[R_NLANE])):
                if abs(ad - i * lane) < 0.075 and (s % 9.0) < 3.0:
                    mat = MAT_PAINT
        return z, mat
    z += -P[R_CAMBER] * hw + P[R_CURB]
    if ad < hw + sw:
        return z + 0.02 * (ad - hw), MAT_CONCRETE
    e = ad - hw - sw
    ramp = min(1.0, e / 15.0)
    z += 0.02 * sw + ramp * P[R_UND] * (math.sin(0.05 * s + 0.09 * e) + 0.5 * math.sin(0.15 * s - 0.08 * e))
    return z, MAT_TERRAIN


@njit(cache=True)
def ground_z(P, x, y):
    """Ground height and material at the global point (x, y)."""
    s, d = road_sd(P, x, y)
    return ground_profile(P, s, d)


def ground_height(P: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Ground heights (N,) float64 at global points ``xy`` (N, 2)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.array([ground_z(P, float(x), float(y))[0] for x, y in xy])


# ---------------------------------------------------------------------------------------------- objects
#: Category -> (mean size w, l, h in metres, relative std) of the nuScenes detection classes.
CLASS_SIZES: dict[str, tuple[tuple[float, float, float], float]] = {
    "vehicle.car": ((1.95, 4.62, 1.73), 0.07),
    "vehicle.truck": ((2.51, 6.93, 2.84), 0.15),
    "vehicle.bus.rigid": ((2.94, 11.2, 3.47), 0.06),
    "vehicle.trailer": ((2.90, 12.3, 3.87), 0.12),
    "vehicle.construction": ((2.82, 6.40, 3.19), 0.15),
    "vehicle.motorcycle": ((0.77, 2.11, 1.47), 0.08),
    "vehicle.bicycle": ((0.60, 1.70, 1.28), 0.08),
    "human.pedestrian.adult": ((0.67, 0.73, 1.77), 0.07),
    "movable_object.trafficcone": ((0.41, 0.41, 1.07), 0.10),
    "movable_object.barrier": ((2.53, 0.50, 0.98), 0.08),
}

#: Camera colour (BGR) per category.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "vehicle.car": (60, 60, 200),
    "vehicle.truck": (40, 120, 220),
    "vehicle.bus.rigid": (40, 200, 230),
    "vehicle.trailer": (150, 150, 150),
    "vehicle.construction": (20, 170, 250),
    "vehicle.motorcycle": (200, 60, 160),
    "vehicle.bicycle": (220, 120, 40),
    "human.pedestrian.adult": (60, 200, 60),
    "movable_object.trafficcone": (0, 110, 255),
    "movable_object.barrier": (230, 230, 230),
}

Part = tuple[int, float, float, float, float, float, float]  # type, dx, dy, dz (from box centre), a, b, c


def _parts(category: str, w: float, l: float, h: float, rider: bool) -> list[Part]:
    """Primitives of an object in its box frame (x along the length, origin at the box centre)."""
    hb = -h / 2  # box bottom
    if category == "vehicle.car":
        lower = (0, 0.0, 0.0, hb + 0.2 + 0.2 * h, l / 2, w / 2, 0.2 * h)  # body from 0.2 m up to 0.6 h
        cabin = (0, -0.06 * l, 0.0, hb + 0.8 * h, 0.27 * l, 0.44 * w, 0.2 * h)
        return [lower, cabin]
    if category in ("vehicle.truck", "vehicle.construction"):
        cab = (0, 0.38 * l, 0.0, hb + 0.3 + (0.85 * h - 0.3) / 2, 0.12 * l, w / 2, (0.85 * h - 0.3) / 2)
        cargo = (0, -0.12 * l, 0.0, hb + 0.6 + (h - 0.6) / 2, 0.38 * l, w / 2, (h - 0.6) / 2)
        return [cab, cargo]
    if category == "vehicle.bus.rigid":
        return [(0, 0.0, 0.0, hb + 0.3 + (h - 0.3) / 2, l / 2, w / 2, (h - 0.3) / 2)]
    if category == "vehicle.trailer":
        return [(0, 0.0, 0.0, hb + 1.0 + (h - 1.0) / 2, l / 2, w / 2, (h - 1.0) / 2),
                (0, 0.3 * l, 0.0, hb + 0.5, 0.15, 0.15, 0.5)]
    if category in ("vehicle.motorcycle", "vehicle.bicycle"):
        hc = 0.7 * h if rider else h
        frame = (0, 0.0, 0.0, hb + 0.1 + (hc - 0.1) / 2, l / 2, min(w / 2, 0.2), (hc - 0.1) / 2)
        parts = [frame]
        if rider:
            parts.append((1, -0.1 * l, 0.0, hb + 0.55 * h + 0.225 * h, 0.22, 0.225 * h, 0.0))
        return parts
    if category == "human.pedestrian.adult":
        legs = (1, 0.0, 0.0, hb + 0.24 * h, 0.17, 0.24 * h, 0.0)
        torso = (1, 0.0, 0.0, hb + 0.64 * h, 0.24, 0.22 * h, 0.0)
        head = (2, 0.0, 0.0, h / 2 - 0.11, 0.11, 0.0, 0.0)
        return [legs, torso, head]
    if category == "movable_object.trafficcone":
        return [(0, 0.0, 0.0, hb + 0.02, l / 2, w / 2, 0.02), (1, 0.0, 0.0, 0.02, 0.12, h / 2 - 0.04, 0.0)]
    if category == "movable_object.barrier":
        return [(0, 0.0, 0.0, 0.1, 0.15, w / 2, h / 2 - 0.1)]
    raise ValueError(category)


@dataclass(frozen=True, eq=False)
class Agent:
    """An annotated object. It moves along the road: ``s(t) = s0 + v t`` (or ``ego_s(t) + s0`` when
    ``follows_ego``) at lateral offset ``d``; ``reverse`` objects face against the road direction.
    ``size`` = (w, l, h) as nuScenes annotations."""

    category: str
    size: tuple[float, float, float]
    s0: float
    d: float
    v: float = 0.0
    reverse: bool = False
    yaw_offset: float = 0.0
    follows_ego: bool = False
    parked: bool = False
    rider: bool = False
    reflectivity: float = 0.15
    colour: tuple[int, int, int] = (128, 128, 128)
    parts: tuple = ()

    @property
    def moving(self) -> bool:
        return self.follows_ego or abs(self.v) > 0.2

    def attribute(self, speed: float) -> str | None:
        """The nuScenes attribute name at a given speed (m/s)."""
        c = self.category
        if c.startswith("human.pedestrian"):
            return "pedestrian.moving" if speed > 0.2 else "pedestrian.standing"
        if c in ("vehicle.bicycle", "vehicle.motorcycle"):
            return "cycle.with_rider" if self.rider else "cycle.without_rider"
        if c.startswith("vehicle."):
            if self.parked:
                return "vehicle.parked"
            return "vehicle.moving" if speed > 0.3 else "vehicle.stopped"
        return None


#: Top speed (m/s) of the ego vehicle.
EGO_VMAX = 15.0
#: The road reaches this far (m of arc length) behind the ego vehicle's start and beyond its end, the map's road
#: (``World.s_range``) another ``ROAD_TAIL`` m; the world's extent keeps ``EXTENT_MARGIN`` m around that road.
ROAD_AROUND_EGO, ROAD_TAIL, EXTENT_MARGIN = 110.0, 30.0, 120.0


def max_extent(duration: float) -> float:
    """The largest side (m) :attr:`World.extent` of a world of ``duration`` seconds can have: the road's arc length
    (the ego vehicle's path at most ``EGO_VMAX * duration``, plus ``ROAD_AROUND_EGO + ROAD_TAIL`` at each end; a
    curved road's chord is shorter) plus ``EXTENT_MARGIN`` on each side."""
    return EGO_VMAX * duration + 2.0 * (ROAD_AROUND_EGO + ROAD_TAIL) + 2.0 * EXTENT_MARGIN


@dataclass(frozen=True, eq=False)
class EgoMotion:
    """Ego trajectory along the road: start speed ``v0`` (m/s), acceleration ``acc`` (m/s^2), capped to
    [0, ``vmax``], lane offset ``d``."""

    s0: float
    v0: float
    acc: float
    d: float
    vmax: float = EGO_VMAX

    def speed(self, t: float) -> float:
        return float(np.clip(self.v0 + self.acc * t, 0.0, self.vmax))

    def s(self, t: float) -> float:
        """Distance travelled (m) by time t (s), integrating the clipped speed (closed form)."""
        v0, a = self.v0, self.acc
        if abs(a) < 1e-9:
            return self.s0 + v0 * t
        t_lim = ((self.vmax if a > 0 else 0.0) - v0) / a  # time the speed hits its bound
        if t <= t_lim:
            return self.s0 + v0 * t + 0.5 * a * t * t
        return self.s0 + v0 * t_lim + 0.5 * a * t_lim * t_lim + (self.vmax if a > 0 else 0.0) * (t - t_lim)


@dataclass(frozen=True, eq=False)
class World:
    """One scene's world: road parameters ``road`` (N_ROAD_PARAMS,) float64, static primitives
    ``static_prims`` (M, 10) float64 with colours ``static_colours`` (M, 3) uint8, the agents and the ego
    motion; ``duration`` in seconds; ``kind`` urban|suburban|open."""

    road: np.ndarray
    static_prims: np.ndarray
    static_colours: np.ndarray
    agents: tuple[Agent, ...]
    ego: EgoMotion
    duration: float
    kind: str
    extent: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))  # xmin, ymin, xmax, ymax
    s_range: tuple[float, float] = (-100.0, 100.0)  # the part of the road that exists (arc length)
    parking: bool = False  # a 2.5 m parking lane at the outer edge of each side
    bike_lane: bool = False  # a 1.5 m bike lane beside the driving lanes on each side

    # --- poses --------------------------------------------------------------------------------------------
    def ego_pose(self, t: float) -> np.ndarray:
        """ego2global (4, 4) float64 at time t: on the ground, yaw along the road, pitch/roll from the ground."""
        P = self.road
        s = self.ego.s(t)
        x, y = road_xy(P, s, self.ego.d)
        yaw = road_heading(P, s)
        z, _ = ground_z(P, x, y)
        fx, fy = math.cos(yaw), math.sin(yaw)
        lx, ly = -fy, fx
        zf = ground_z(P, x + 1.3 * fx, y + 1.3 * fy)[0] - ground_z(P, x - 1.3 * fx, y - 1.3 * fy)[0]
        zl = ground_z(P, x + 0.8 * lx, y + 0.8 * ly)[0] - ground_z(P, x - 0.8 * lx, y - 0.8 * ly)[0]
        pitch = -math.atan2(zf, 2.6)
        roll = math.atan2(zl, 1.6)
        m = np.eye(4)
        m[:3, :3] = _rz(yaw) @ _ry(pitch) @ _rx(roll)
        m[:3, 3] = (x, y, z)
        return m

    def agent_pose(self, i: int, t: float) -> tuple[np.ndarray, float, float]:
        """Box centre (3,), yaw (rad) and speed (m/s) of agent i at time t."""
        a = self.agents[i]
        if a.follows_ego:
            s, speed = self.ego.s(t) + a.s0, self.ego.speed(t)
        else:
            s, speed = a.s0 + a.v * t, abs(a.v)
        x, y = road_xy(self.road, s, a.d)
        z, _ = ground_z(self.road, x, y)
        yaw = road_heading(self.road, s) + (math.pi if a.reverse else 0.0) + a.yaw_offset
        return np.array([x, y, z + a.size[2] / 2]), float(yaw), speed

    def primitives(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """All primitives (M, 10) float64 and their colours (M, 3) uint8 at time t (agents first, then static)."""
        rows, cols = [], []
        for i, a in enumerate(self.agents):
            c, yaw, _ = self.agent_pose(i, t)
            cy, sy = math.cos(yaw), math.sin(yaw)
            for typ, dx, dy, dz, pa, pb, pc in a.parts:
                rows.append((typ, c[0] + cy * dx - sy * dy, c[1] + sy * dx + cy * dy, c[2] + dz,
                             pa, pb, pc, yaw, a.reflectivity, i))
                cols.append(a.colour)
        dyn = np.array(rows, dtype=np.float64).reshape(-1, 10)
        dcol = np.array(cols, dtype=np.uint8).reshape(-1, 3)
        return np.vstack([dyn, self.static_prims]), np.vstack([dcol, self.static_colours])


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _ry(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rx(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


# ---------------------------------------------------------------------------------------------- generation
def _shade(rng: np.random.Generator, colour: tuple[int, int, int]) -> tuple[int, int, int]:
    f = rng.uniform(0.7, 1.15)
    return tuple(int(np.clip(c * f + rng.integers(-15, 16), 0, 255)) for c in colour)


def _make_agent(rng, category, s0, d, v=0.0, reverse=False, parked=False, rider=False, follows_ego=False,
                yaw_offset=0.0, size=None) -> Agent:
    if size is None:
        mean, rel = CLASS_SIZES[category]
        f = float(np.clip(rng.normal(1.0, rel), 1 - 2.5 * rel, 1 + 2.5 * rel))
        g = float(np.clip(rng.normal(1.0, rel / 2), 0.9, 1.1))
        size = (mean[0] * g, mean[1] * f, mean[2] * g)
    if rider and category in ("vehicle.bicycle", "vehicle.motorcycle"):
        size = (size[0], size[1], max(size[2], 1.7))
    refl = {"movable_object.trafficcone": 0.5, "movable_object.barrier": 0.3,
            "human.pedestrian.adult": 0.1}.get(category, float(rng.uniform(0.08, 0.35)))
    w, l, h = size
    return Agent(category=category, size=(float(w), float(l), float(h)), s0=float(s0), d=float(d), v=float(v),
                 reverse=reverse, parked=parked, rider=rider, follows_ego=follows_ego, yaw_offset=yaw_offset,
                 reflectivity=refl, colour=_shade(rng, CLASS_COLOURS[category]),
                 parts=tuple(_parts(category, w, l, h, rider)))


def make_world(rng: np.random.Generator, duration: float, density: float = 1.0) -> World:
    """A random scene world. Deterministic given the generator state.

    The road starts at the global origin region chosen so that the scene's extent (road ± 120 m) lies in
    positive coordinates (as nuScenes map frames do); see :attr:`World.extent`.
    """
    kind = str(rng.choice(["urban", "urban", "suburban", "open"]))
    n_lanes = int(rng.choice([1, 2, 2]))
    lane = 3.5
    parking = kind != "open" and rng.random() < 0.7
    bike_lane = rng.random() < 0.5
    # cross section, from the centre line outwards: driving lanes, a bike lane, a parking lane
    bike_w = 1.5 if bike_lane else 0.0
    hw = n_lanes * lane + bike_w + (2.5 if parking else 0.0)
    sw = float(rng.uniform(2.5, 4.5)) if kind != "open" else float(rng.uniform(1.0, 2.0))
    curvature = float(rng.choice([0.0, 0.0, 1.0]) * rng.uniform(-1 / 250, 1 / 250))
    P = np.zeros(N_ROAD_PARAMS)
    P[R_H0] = rng.uniform(-math.pi, math.pi)
    P[R_K] = curvature
    P[R_GRADE] = rng.uniform(-0.04, 0.04)
    P[R_CAMBER] = rng.uniform(0.01, 0.025)
    P[R_HW] = hw
    P[R_CURB] = rng.uniform(0.1, 0.18) if kind != "open" else 0.05
    P[R_SW] = sw
    P[R_LANE] = lane
    P[R_UND] = rng.uniform(0.1, 0.4)
    P[R_BUMP] = rng.uniform(0.003, 0.012)
    P[R_NLANE] = n_lanes

    # ego
    r = rng.random()
    if r < 0.15:
        v0, acc = 0.0, float(rng.uniform(0.8, 1.8))  # starting from a stop
    elif r < 0.25:
        v0, acc = float(rng.uniform(4, 8)), float(-rng.uniform(0.8, 1.5))  # braking to a stop
    else:
        v0, acc = float(rng.uniform(4, 11)), float(rng.uniform(-0.2, 0.2))
    ego_lane = int(rng.integers(0, n_lanes))
    ego = EgoMotion(s0=0.0, v0=v0, acc=acc, d=-(ego_lane + 0.5) * lane)
    s_end = ego.s(duration)
    s_lo, s_hi = -ROAD_AROUND_EGO, s_end + ROAD_AROUND_EGO

    agents: list[Agent] = []
    dens = density

    # a construction zone off the driving lanes: cones and barriers in the parking lane (or on the verge
    # beyond the sidewalk), a construction vehicle beside the road
    zone = None
    if rng.random() < 0.5 * min(1.0, dens):
        side = int(rng.choice([-1, 1]))
        s0 = float(rng.uniform(15, max(20.0, s_end + 40)))
        n_cones, n_barriers = int(rng.integers(6, 12)), int(rng.integers(2, 6))
        zone = (side, s0 - 6.0, s0 + max(3.0 * n_cones, 4 + 2.7 * n_barriers) + 6.0)
        d_cone = side * (hw - 2.2) if parking else side * (hw + sw + 0.6)
        d_bar = side * (hw - 0.5) if parking else side * (hw + sw + 1.6)
        for j in range(n_cones):
            agents.append(_make_agent(rng, "movable_object.trafficcone", s0 + 3.0 * j, d_cone))
        for j in range(n_barriers):
            agents.append(_make_agent(rng, "movable_object.barrier", s0 + 4 + 2.7 * j, d_bar))
        agents.append(_make_agent(rng, "vehicle.construction", s0 + 12, side * (hw + sw + 4.5), parked=True))

    # parked vehicles along the parking lanes
    if parking:
        for side in (-1, 1):
            s = s_lo + rng.uniform(0, 8)
            while s < s_hi:
                if zone is not None and zone[0] == side and zone[1] - 8 < s < zone[2]:
                    s = zone[2]
                    continue
                cat = str(rng.choice(["vehicle.car"] * 14 + ["vehicle.truck", "vehicle.trailer"]))
                a = _make_agent(rng, cat, 0.0, 0.0)
                l, w = a.size[1], a.size[0]
                if rng.random() < 0.6 * dens:
                    d = side * (hw - 0.35 - w / 2)
                    agents.append(_make_agent(rng, cat, s + l / 2, d, reverse=side > 0, parked=True,
                                              yaw_offset=float(rng.normal(0, 0.03)), size=a.size))
                s += l + rng.uniform(1.0, 6.0)

    # moving traffic in the other lanes, platoons with one speed per lane
    for side in (-1, 1):
        for li in range(n_lanes):
            d = side * (li + 0.5) * lane
            if side < 0 and li == ego_lane:
                continue
            v = float(rng.uniform(3, 13)) if rng.random() > 0.15 else 0.0
            s = s_lo - (v * duration if side > 0 else 0.0) + rng.uniform(0, 20)
            top = s_hi + (v * duration if side > 0 else 0.0)
            if side < 0:
                s -= v * duration
            while s < top:
                cat = str(rng.choice(["vehicle.car"] * 16 + ["vehicle.truck"] * 2 + ["vehicle.bus.rigid",
                                      "vehicle.motorcycle", "vehicle.construction"]))
                a = _make_agent(rng, cat, 0.0, 0.0)
                l = a.size[1]
                if rng.random() < 0.5 * dens:
                    sign = -1.0 if side > 0 else 1.0
                    rider = cat == "vehicle.motorcycle"
                    agents.append(_make_agent(rng, cat, s + l / 2, d + rng.normal(0, 0.15), v=sign * v,
                                              reverse=side > 0, rider=rider, size=a.size))
                s += l + rng.uniform(6.0, 25.0) + 0.8 * v

    # ego lane: a lead vehicle and a follower
    if rng.random() < 0.6:
        agents.append(_make_agent(rng, "vehicle.car", rng.uniform(12, 25), ego.d + rng.normal(0, 0.1),
                                  follows_ego=True))
    if rng.random() < 0.4:
        agents.append(_make_agent(rng, str(rng.choice(["vehicle.car", "vehicle.truck"])),
                                  -rng.uniform(11, 20), ego.d + rng.normal(0, 0.1), follows_ego=True))

    # cyclists in the bike lanes, one speed per lane
    if bike_lane:
        for side in (-1, 1):
            v = float(rng.uniform(3, 7))
            s = s_lo - v * duration + rng.uniform(0, 30)
            while s < s_hi + v * duration:
                cat = str(rng.choice(["vehicle.bicycle", "vehicle.bicycle", "vehicle.motorcycle"]))
                if rng.random() < 0.35 * dens:
                    agents.append(_make_agent(rng, cat, s, side * (n_lanes * lane + 0.75),
                                              v=v * (1 if side < 0 else -1), reverse=side > 0, rider=True))
                s += rng.uniform(8, 40)

    # sidewalk life: pedestrians, parked bicycles
    if kind != "open" or rng.random() < 0.5:
        for side in (-1, 1):
            n_ped = rng.poisson(dens * (s_hi - s_lo) / (12.0 if kind == "urban" else 30.0))
            for _ in range(n_ped):
                d = side * (hw + rng.uniform(0.9, max(1.0, sw - 1.3)))
                if rng.random() < 0.6:
                    v = float(rng.uniform(0.9, 1.7) * rng.choice([-1, 1]))
                    agents.append(_make_agent(rng, "human.pedestrian.adult", rng.uniform(s_lo, s_hi), d, v=v,
                                              reverse=v < 0))
                else:
                    agents.append(_make_agent(rng, "human.pedestrian.adult", rng.uniform(s_lo, s_hi), d,
                                              yaw_offset=float(rng.uniform(-math.pi, math.pi))))
            for _ in range(rng.poisson(0.6 * dens)):
                s = rng.uniform(s_lo, s_hi)
                for j in range(int(rng.integers(1, 4))):
                    agents.append(_make_agent(rng, "vehicle.bicycle", s + 0.8 * j, side * (hw + sw - 0.5),
                                              parked=True, yaw_offset=math.pi / 2))

    # static structure
    prims, cols = [], []
    outer = hw + sw
    for side in (-1, 1):
        if kind == "urban" or (kind == "suburban" and rng.random() < 0.5):
            s = s_lo - 20
            while s < s_hi + 20:
                length = rng.uniform(12, 40) if kind == "urban" else rng.uniform(8, 16)
                if rng.random() < (0.85 if kind == "urban" else 0.55):
                    depth = rng.uniform(10, 25)
                    height = rng.uniform(6, 35) if kind == "urban" else rng.uniform(5, 9)
                    setback = rng.uniform(0.2, 2.0) if kind == "urban" else rng.uniform(6, 12)
                    dc = side * (outer + setback + depth / 2)
                    sc = s + length / 2
                    x, y = road_xy(P, sc, dc)
                    z = ground_z(P, x, y)[0]
                    prims.append((0, x, y, z + height / 2 - 0.5, length / 2, depth / 2, height / 2 + 0.5,
                                  road_heading(P, sc), rng.uniform(0.08, 0.35), -1))
                    cols.append(_shade(rng, (170, 180, 190)))
                s += length + rng.uniform(0, 12 if kind == "urban" else 25)
        # poles (street lights) near the curb
        s = s_lo + rng.uniform(0, 20)
        while s < s_hi:
            x, y = road_xy(P, s, side * (hw + 0.5))
            z = ground_z(P, x, y)[0]
            ph = rng.uniform(6, 9)
            prims.append((1, x, y, z + ph / 2, 0.12, ph / 2, 0, 0, 0.25, -1))
            cols.append((90, 90, 90))
            s += rng.uniform(20, 35)
        # trees
        if kind != "urban" or rng.random() < 0.5:
            s = s_lo + rng.uniform(0, 10)
            while s < s_hi:
                dt = side * (outer + rng.uniform(1.5, 8.0)) if kind != "urban" else side * (hw + sw - 0.8)
                x, y = road_xy(P, s, dt)
                z = ground_z(P, x, y)[0]
                trunk = rng.uniform(2.0, 3.5)
                crown = rng.uniform(1.5, 3.0)
                prims.append((1, x, y, z + trunk / 2, 0.15, trunk / 2, 0, 0, 0.1, -1))
                cols.append((30, 60, 90))
                prims.append((2, x, y, z + trunk + crown * 0.8, crown, 0, 0, 0, 0.07, -1))
                cols.append(_shade(rng, (40, 120, 50)))
                s += rng.uniform(7, 18)
        # street furniture and vegetation on and beyond the sidewalk: sign posts, bins, bollards, hedges, bushes
        n_items = rng.poisson((s_hi - s_lo) / (10.0 if kind != "open" else 25.0))
        for _ in range(n_items):
            s = rng.uniform(s_lo, s_hi)
            item = rng.choice(["sign", "bin", "bollard", "hedge", "bush", "bush"])
            if item in ("sign", "bollard"):
                dd = side * (hw + rng.uniform(0.3, 0.7))
            elif item == "bin":
                dd = side * (hw + rng.uniform(0.4, 0.7))
            else:
                dd = side * (outer + rng.uniform(0.3, 4.0))
            x, y = road_xy(P, s, dd)
            z = ground_z(P, x, y)[0]
            hd = road_heading(P, s)
            if item == "sign":
                prims.append((1, x, y, z + 1.25, 0.04, 1.25, 0, 0, 0.2, -1))
                cols.append((150, 150, 150))
                prims.append((0, x, y, z + 2.2, 0.03, 0.35, 0.35, hd, 0.8, -1))
                cols.append((200, 90, 30))
            elif item == "bin":
                prims.append((1, x, y, z + 0.5, 0.3, 0.5, 0, 0, 0.12, -1))
                cols.append((40, 90, 40))
            elif item == "bollard":
                prims.append((1, x, y, z + 0.45, 0.09, 0.45, 0, 0, 0.3, -1))
                cols.append((60, 60, 60))
            elif item == "hedge":
                hl, hh = rng.uniform(2, 10), rng.uniform(0.8, 1.8)
                prims.append((0, x, y, z + hh / 2 - 0.1, hl / 2, 0.5, hh / 2 + 0.1, hd, 0.09, -1))
                cols.append(_shade(rng, (40, 100, 45)))
            else:
                r = rng.uniform(0.5, 1.4)
                prims.append((2, x, y, z + 0.6 * r, r, 0, 0, 0, 0.08, -1))
                cols.append(_shade(rng, (45, 115, 55)))
        # a wall/fence segment in open areas
        if kind == "open" and rng.random() < 0.6:
            sc = rng.uniform(s_lo, s_hi)
            length = rng.uniform(20, 60)
            x, y = road_xy(P, sc, side * (outer + rng.uniform(4, 15)))
            z = ground_z(P, x, y)[0]
            prims.append((0, x, y, z + 0.6, length / 2, 0.15, 1.1, road_heading(P, sc), 0.2, -1))
            cols.append((140, 140, 120))

    # place the scene in positive global coordinates (nuScenes map frames): shift the road origin
    ss = np.linspace(s_lo - ROAD_TAIL, s_hi + ROAD_TAIL, 64)
    pts = np.array([road_xy(P, s, 0.0) for s in ss])
    margin = EXTENT_MARGIN
    shift = -pts.min(axis=0) + margin
    P[R_OX] += shift[0]
    P[R_OY] += shift[1]
    st = np.array(prims, dtype=np.float64).reshape(-1, 10)
    st[:, 1:3] += shift
    pts += shift
    extent = (0.0, 0.0, float(pts[:, 0].max() + margin), float(pts[:, 1].max() + margin))
    return World(road=P, static_prims=st, static_colours=np.array(cols, dtype=np.uint8).reshape(-1, 3),
                 agents=tuple(agents), ego=ego, duration=duration, kind=kind, extent=extent,
                 s_range=(s_lo - ROAD_TAIL, s_hi + ROAD_TAIL), parking=bool(parking), bike_lane=bool(bike_lane))


# ---------------------------------------------------------------------------------------------- class anchors
#: The nuScenes detection class of each annotated category (as devkit's ``category_to_detection_name``).
DETECTION_NAME: dict[str, str] = {
    "vehicle.car": "car", "vehicle.truck": "truck", "vehicle.bus.rigid": "bus", "vehicle.trailer": "trailer",
    "vehicle.construction": "construction_vehicle", "vehicle.motorcycle": "motorcycle",
    "vehicle.bicycle": "bicycle", "human.pedestrian.adult": "pedestrian",
    "movable_object.trafficcone": "traffic_cone", "movable_object.barrier": "barrier",
}
#: Category of each detection class.
DETECTION_CATEGORY: dict[str, str] = {v: k for k, v in DETECTION_NAME.items()}
#: devkit's ``detection_cvpr_2019`` ``class_range`` (m): ground truth farther from the ego vehicle is not evaluated
#: (a test compares this with the installed devkit's config).
CLASS_RANGE: dict[str, float] = {
    "car": 50.0, "truck": 50.0, "bus": 50.0, "trailer": 50.0, "construction_vehicle": 50.0,
    "pedestrian": 40.0, "motorcycle": 40.0, "bicycle": 40.0, "traffic_cone": 30.0, "barrier": 30.0,
}
_VEHICLES = ("vehicle.car", "vehicle.truck", "vehicle.bus.rigid", "vehicle.trailer", "vehicle.construction")
#: Clearance (m) kept between an anchor's footprint and any other object's.
ANCHOR_CLEARANCE = 0.3
#: Ego vehicle footprint half extents (m) along and across the road (Renault Zoe, see lidar.EGO_BOXES).
_EGO_HALF = (2.3, 0.95)


def _half_sd(w: float, l: float, yaw_offset: float) -> tuple[float, float]:
    """Half extents along and across the road of a (w, l) footprint turned by ``yaw_offset`` from the road."""
    c, s = abs(math.cos(yaw_offset)), abs(math.sin(yaw_offset))
    return c * l / 2 + s * w / 2, s * l / 2 + c * w / 2


def _along_scale(P: np.ndarray, d: float) -> float:
    """Centre-line arc length per metre along a parallel at lateral offset d (1 on a straight road)."""
    return 1.0 / max(0.5, 1.0 - P[R_K] * d)


def static_footprints(world: World) -> np.ndarray:
    """Road-coordinate footprints (K, 4) float64 of the static primitives: s, d and half extents along s (in
    centre-line arc length) and d; boxes by their rotated extents, cylinders and spheres by their radius."""
    P = world.road
    out = np.empty((len(world.static_prims), 4))
    for i, pr in enumerate(world.static_prims):
        s, d = road_sd(P, pr[1], pr[2])
        if pr[0] == 0:
            hs, hd = _half_sd(2 * pr[5], 2 * pr[4], pr[7] - road_heading(P, s))
        else:
            hs = hd = pr[4]
        out[i] = (s, d, hs * _along_scale(P, d), hd)
    return out


def agent_tracks(world: World, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Road-coordinate footprints of the agents and, as the last row, the ego vehicle at ``times`` (T,):
    s (n + 1, T), d (n + 1,), half extents along s (n + 1,) and across (n + 1,), all float64."""
    n = len(world.agents)
    ego_s = np.array([world.ego.s(float(t)) for t in times])
    S = np.empty((n + 1, len(times)))
    D, HS, HD = np.empty(n + 1), np.empty(n + 1), np.empty(n + 1)
    for i, a in enumerate(world.agents):
        S[i] = ego_s + a.s0 if a.follows_ego else a.s0 + a.v * times
        D[i] = a.d
        HS[i], HD[i] = _half_sd(a.size[0], a.size[1], a.yaw_offset)
        HS[i] *= _along_scale(world.road, a.d)
    S[n], D[n], HS[n], HD[n] = ego_s, world.ego.d, _EGO_HALF[0], _EGO_HALF[1]
    return S, D, HS, HD


def _anchor_slots(world: World, rng: np.random.Generator, category: str, size, side: int):
    """Plausible resting places across the road for an anchor of ``category`` on ``side`` (-1 right, 1 left):
    a list of (d, yaw_offset, parked)."""
    P = world.road
    hw, sw = float(P[R_HW]), float(P[R_SW])
    w, l, _ = size
    if category in _VEHICLES:  # parked in the parking lane or on the verge beyond the sidewalk (bus: at a stop)
        parked = category != "vehicle.bus.rigid"
        slots = [(side * (hw + sw + 0.6 + w / 2), 0.0, parked)]
        if world.parking:
            slots.insert(0, (side * (hw - 0.25 - w / 2), 0.0, parked))
        return slots
    if category in ("vehicle.motorcycle", "vehicle.bicycle"):  # parked across the sidewalk, or in the parking lane
        slots = [(side * (hw + max(sw - 0.3 - l / 2, 0.3 + l / 2)), math.pi / 2, True)]
        if world.parking:
            slots.insert(0, (side * (hw - 0.4 - w / 2), 0.0, True))
        return slots
    if category == "human.pedestrian.adult":  # standing on the sidewalk
        d = side * (hw + float(rng.uniform(0.6, max(0.7, sw - 0.5))))
        return [(d, float(rng.uniform(-math.pi, math.pi)), False)]
    if category == "movable_object.trafficcone":  # closing a parking bay, or at the kerb
        slots = [(side * (hw + 0.35), 0.0, False)]
        if world.parking:
            slots.insert(0, (side * (hw - 1.25), 0.0, False))
        return slots
    if category == "movable_object.barrier":  # across a parking bay, or along the kerb
        slots = [(side * (hw + 0.45), math.pi / 2, False)]
        if world.parking:
            slots.insert(0, (side * (hw - 1.3), 0.0, False))
        return slots
    raise ValueError(category)


#: How far (m, along the road) from the ego vehicle an anchor stands at most: near enough for a few LiDAR returns.
_ANCHOR_REACH = {"movable_object.trafficcone": 14.0, "movable_object.barrier": 18.0, "human.pedestrian.adult": 20.0,
                 "vehicle.bicycle": 18.0, "vehicle.motorcycle": 20.0}


def _sight_clear(s0: float, d0: float, s1: float, d1: float, boxes: np.ndarray) -> bool:
    """Whether the segment (s0, d0) -> (s1, d1) in road coordinates, leaving out 2.5 m at its start (the ego
    vehicle) and 0.6 m at its end (the object seen), misses every footprint ``boxes`` (K, 4): s, d, half
    extents along s and d."""
    length = math.hypot(s1 - s0, d1 - d0)
    if length < 3.2 or not len(boxes):
        return True
    f = np.linspace(2.5 / length, 1.0 - 0.6 / length, max(2, int(length / 0.2)))
    ps, pd = s0 + f * (s1 - s0), d0 + f * (d1 - d0)
    inside = (np.abs(ps[:, None] - boxes[None, :, 0]) < boxes[None, :, 2]) & \
        (np.abs(pd[:, None] - boxes[None, :, 1]) < boxes[None, :, 3])
    return not inside.any()


def add_anchors(world: World, rng: np.random.Generator, categories, key_times,
                tries: int = 120) -> tuple[World, list[float]]:
    """The world with one standing object ("anchor") of each of ``categories`` added near the ego vehicle's
    path, within devkit's class range of its position at one of the keyframe times ``key_times`` (s).

    Anchors rest where such objects do: vehicles in the parking lane or on the verge (a bus at a stop), bicycles
    and motorcycles parked on the sidewalk, a pedestrian standing on it, a cone and a barrier closing a parking
    bay or at the kerb. A place is taken only if the anchor's footprint keeps :data:`ANCHOR_CLEARANCE` from every
    static primitive, from the ego vehicle and from every agent over the whole scene (checked every 50 ms), and
    if the line of sight from the ego vehicle at the keyframe passes no object taller than 1 m (a footprint test;
    the caller verifies with the LiDAR).
    Where no such place is found in half the ``tries``, a vehicle may stop at the kerb side of the outer driving
    lane (not the ego vehicle's), and the moving traffic that would drive through it is taken out of the scene.
    An anchor with no place at all is left out. Returns the new world and the keyframe time each placed anchor
    was placed for. Deterministic given the generator state.
    """
    P = world.road
    times = np.arange(-0.5, world.duration + 0.05, 0.05)
    st = static_footprints(world)
    S, D, HS, HD = agent_tracks(world, times)  # agents, then the ego vehicle as the last row
    H = np.array([a.size[2] for a in world.agents] + [0.0])
    sp = world.static_prims
    tall = (sp[:, 3] - np.where(sp[:, 0] == 0, sp[:, 6], np.where(sp[:, 0] == 1, sp[:, 5], sp[:, 4])) <
            ground_height(P, sp[:, 1:3]) + 1.0) & (sp[:, 4] > 0.2)  # reaching below 1 m, wider than a pole
    blockers = st[tall]
    agents = list(world.agents)
    key_times = np.asarray(key_times, dtype=np.float64)
    targets: list[float] = []
    gap = ANCHOR_CLEARANCE
    lane, n_lanes = float(P[R_LANE]), int(P[R_NLANE])
    for category in categories:
        reach = CLASS_RANGE[DETECTION_NAME[category]] - 4.0
        probe = _make_agent(rng, category, 0.0, 0.0)
        vehicle = category in _VEHICLES
        for attempt in range(tries):
            side = -1 if rng.random() < (0.5 if vehicle else 0.75) else 1
            in_lane = vehicle and attempt >= tries // 2
            if in_lane:  # stopped at the kerb side of the outer driving lane
                d, yaw_offset, parked = side * (n_lanes * lane - 0.3 - probe.size[0] / 2), 0.0, False
            else:
                slots = _anchor_slots(world, rng, category, probe.size, side)
                d, yaw_offset, parked = slots[int(rng.integers(0, len(slots)))]
            t_key = float(key_times[int(rng.integers(0, len(key_times)))])
            dd = abs(d - world.ego.d)
            if dd > reach - 3.0:
                continue
            ds_max = min(math.sqrt(reach ** 2 - dd ** 2), _ANCHOR_REACH.get(category, 30.0))
            ds = float(rng.uniform(min(3.0, ds_max), ds_max)) * (1.0 if rng.random() < 0.7 else -1.0)
            s = world.ego.s(t_key) + ds
            hs, hd = _half_sd(probe.size[0], probe.size[1], yaw_offset)
            hs *= _along_scale(P, d)
            k = int(round((t_key - times[0]) / 0.05))
            occ = np.column_stack([S[:, k], D, HS, HD])[H > 1.0]
            if not _sight_clear(S[-1, k], D[-1], s, d, np.vstack([occ, blockers])):
                continue
            if np.any((np.abs(st[:, 0] - s) < st[:, 2] + hs + gap) & (np.abs(st[:, 1] - d) < st[:, 3] + hd + gap)):
                continue
            lat = np.abs(D - d) < HD + hd + gap
            hit = lat & np.any(np.abs(S - s) < (HS + hs + gap)[:, None], axis=1)
            if hit.any():
                idx = np.nonzero(hit)[0]
                movable = [i < len(agents) and not agents[i].follows_ego and abs(agents[i].v) > 0 for i in idx]
                if not (in_lane and all(movable)):
                    continue
                keep = np.ones(len(D), bool)
                keep[idx] = False
                agents = [a for i, a in enumerate(agents) if keep[i]]
                S, D, HS, HD, H = S[keep], D[keep], HS[keep], HD[keep], H[keep]
            agents.append(_make_agent(rng, category, s, d, reverse=side > 0, parked=parked, yaw_offset=yaw_offset,
                                      size=probe.size))
            S = np.vstack([S[:-1], np.full((1, len(times)), s), S[-1:]])
            D, HS, HD, H = (np.concatenate([x[:-1], [v], x[-1:]])
                            for x, v in ((D, d), (HS, hs), (HD, hd), (H, probe.size[2])))
            targets.append(t_key)
            break
    return dataclasses.replace(world, agents=tuple(agents)), targets


@njit(cache=True)
def _drivable_kernel(P, s0, s1, res, out):
    h, w = out.shape
    hw = P[R_HW]
    for r in range(h):
        y = (h - r - 0.5) * res
        for c in range(w):
            x = (c + 0.5) * res
            s, d = road_sd(P, x, y)
            if abs(d) < hw and s0 <= s <= s1:
                out[r, c] = 255


def drivable_raster(world: World, resolution: float = 0.1) -> np.ndarray:
    """The drivable area as a uint8 raster (H, W) with 255 = road, in the devkit's MapMask convention:
    pixel (row, col) covers global x = col * res, y = (H - row) * res."""
    w = int(math.ceil(world.extent[2] / resolution))
    h = int(math.ceil(world.extent[3] / resolution))
    out = np.zeros((h, w), dtype=np.uint8)
    _drivable_kernel(world.road, world.s_range[0], world.s_range[1], resolution, out)
    return out


def location_raster(placed, resolution: float = 0.1) -> np.ndarray:
    """The drivable area of several worlds in one raster (MapMask convention, see :func:`drivable_raster`):
    ``placed`` is a sequence of (world, (ox, oy)), each world moved by its offset (m, a multiple of
    ``resolution``) in the global frame. One world at offset (0, 0) gives its :func:`drivable_raster`."""
    parts = [(drivable_raster(w, resolution), int(round(ox / resolution)), int(round(oy / resolution)))
             for w, (ox, oy) in placed]
    height = max(r.shape[0] + row for r, _, row in parts)
    width = max(r.shape[1] + col for r, col, _ in parts)
    out = np.zeros((height, width), dtype=np.uint8)
    for r, col, row in parts:  # a pixel's row counts down from y = height * resolution
        window = out[height - row - r.shape[0]:height - row, col:col + r.shape[1]]
        np.maximum(window, r, out=window)
    return out
