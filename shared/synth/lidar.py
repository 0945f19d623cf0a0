"""Simulated Velodyne HDL-32E (nuScenes LIDAR_TOP): analytic ray casting against the scene world.

32 beams from -30.67 to +10.67 degrees, ``n_azimuth`` columns per revolution (~1085 in nuScenes), spinning
clockwise seen from above, one revolution per sweep (50 ms at 20 Hz). The sweep is *not* motion compensated,
as in the real data: each column is cast from the sensor pose at its own firing time, and the points are
then expressed in the LiDAR frame at the sweep timestamp (the end of the revolution).

Every ray yields a point as in the real nuScenes files: a ray that hits nothing within range is written as a
point within 0.5 m of the sensor, a ray that hits the ego vehicle's roof or bonnet as a self-return. Points
are ordered column by column, ring 0 (lowest beam) to 31 within a column, like the real files.

The kernel (:func:`_cast_kernel`, Numba, parallel over columns) intersects each ray analytically with
boxes, vertical cylinders and spheres (candidates culled per column by azimuth) and with the ground (a
height field, found by conservative marching plus bisection). :func:`cast_reference` is a plain-Python
reference of the same geometry used by the tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from shared.errors import ConfigError
from shared.synth.world import GROUND_REFLECTIVITY, MAX_GROUND_SLOPE, ground_z

#: Beam elevations (rad) of the HDL-32E, ring 0 (lowest) .. 31.
ELEVATIONS = np.radians(np.linspace(-30.67, 10.67, 32))
#: Lidar-frame azimuth (rad, from +x towards +y) of column 0; columns proceed clockwise.
AZIMUTH_START = math.radians(188.0)
#: The ego vehicle as axis-aligned boxes in the LiDAR frame (xmin, xmax, ymin, ymax, zmin, zmax):
#: roof under the sensor, body with bonnet and boot (Renault Zoe, sensor 1.84 m above ground).
EGO_BOXES = np.array([
    [-0.45, 0.45, -0.65, 0.75, -0.9, -0.30],
    [-0.87, 0.87, -1.75, 2.35, -1.7, -0.95],
])

HIT_NONE, HIT_GROUND, HIT_SELF, HIT_PRIM = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------- primitives
@njit(cache=True)
def _hit_box(pr, ox, oy, oz, dx, dy, dz):
    c, s = math.cos(pr[7]), math.sin(pr[7])
    px, py, pz = ox - pr[1], oy - pr[2], oz - pr[3]
    lo = (c * px + s * py, -s * px + c * py, pz)
    ld = (c * dx + s * dy, -s * dx + c * dy, dz)
    half = (pr[4], pr[5], pr[6])
    tmin, tmax, axis = -1e30, 1e30, -1
    for k in range(3):
        if abs(ld[k]) < 1e-12:
            if abs(lo[k]) > half[k]:
                return np.inf, 0.0, 0.0, 0.0
            continue
        t1 = (-half[k] - lo[k]) / ld[k]
        t2 = (half[k] - lo[k]) / ld[k]
        if t1 > t2:
            t1, t2 = t2, t1
        if t1 > tmin:
            tmin, axis = t1, k
        tmax = min(tmax, t2)
        if tmin > tmax:
            return np.inf, 0.0, 0.0, 0.0
    if tmin <= 1e-6 or axis < 0:
        return np.inf, 0.0, 0.0, 0.0
    sg = -1.0 if ld[axis] > 0 else 1.0
    if axis == 0:
        return tmin, sg * c, sg * s, 0.0
    if axis == 1:
        return tmin, -sg * s, sg * c, 0.0
    return tmin, 0.0, 0.0, sg


@njit(cache=True)
def _hit_cylinder(pr, ox, oy, oz, dx, dy, dz):
    px, py = ox - pr[1], oy - pr[2]
    r, z0, z1 = pr[4], pr[3] - pr[5], pr[3] + pr[5]
    best, nx, ny, nz = np.inf, 0.0, 0.0, 0.0
    a = dx * dx + dy * dy
    if a > 1e-12:
        b = px * dx + py * dy
        c = px * px + py * py - r * r
        disc = b * b - a * c
        if disc >= 0.0 and c > 0.0:
            t = (-b - math.sqrt(disc)) / a
            z = oz + t * dz
            if t > 1e-6 and z0 <= z <= z1:
                best = t
                nx, ny = (px + t * dx) / r, (py + t * dy) / r
    if dz < -1e-12 and oz > z1:
        t = (z1 - oz) / dz
        qx, qy = px + t * dx, py + t * dy
        if t < best and qx * qx + qy * qy <= r * r:
            best, nx, ny, nz = t, 0.0, 0.0, 1.0
    return best, nx, ny, nz


@njit(cache=True)
def _hit_sphere(pr, ox, oy, oz, dx, dy, dz):
    px, py, pz = ox - pr[1], oy - pr[2], oz - pr[3]
    r = pr[4]
    b = px * dx + py * dy + pz * dz
    c = px * px + py * py + pz * pz - r * r
    disc = b * b - c
    if disc < 0.0 or c <= 0.0:
        return np.inf, 0.0, 0.0, 0.0
    t = -b - math.sqrt(disc)
    if t <= 1e-6:
        return np.inf, 0.0, 0.0, 0.0
    return t, (px + t * dx) / r, (py + t * dy) / r, (pz + t * dz) / r


@njit(cache=True)
def _hit_prim(pr, ox, oy, oz, dx, dy, dz):
    typ = int(pr[0])
    if typ == 0:
        return _hit_box(pr, ox, oy, oz, dx, dy, dz)
    if typ == 1:
        return _hit_cylinder(pr, ox, oy, oz, dx, dy, dz)
    return _hit_sphere(pr, ox, oy, oz, dx, dy, dz)


@njit(cache=True)
def _hit_aabb(b, dx, dy, dz):
    """Entry distance of a ray from the origin into the axis-aligned box b (6,), inf if none."""
    tmin, tmax = -1e30, 1e30
    d = (dx, dy, dz)
    for k in range(3):
        lo, hi = b[2 * k], b[2 * k + 1]
        if abs(d[k]) < 1e-12:
            if lo > 0.0 or hi < 0.0:
                return np.inf
            continue
        t1, t2 = lo / d[k], hi / d[k]
        if t1 > t2:
            t1, t2 = t2, t1
        tmin, tmax = max(tmin, t1), min(tmax, t2)
        if tmin > tmax:
            return np.inf
    return tmin if tmin > 0.0 else np.inf


@njit(cache=True)
def _hit_ground(P, ox, oy, oz, dx, dy, dz, max_range, t0):
    """(t, material, t_reached) of the first ground crossing of the ray at or beyond ``t0``; t = inf if none
    within max_range. ``t_reached`` is how far the ray is known to stay above the ground.

    Conservative marching: with ground slopes at most MAX_GROUND_SLOPE, the height of the ray above the
    ground, f(t), falls at most at rate ``-dz + slope * |d_xy|``, so stepping by f / rate never steps over
    a crossing (except at curb faces, which are shorter than the smallest step); the crossing is then
    refined by regula falsi. The caller passes ``t0`` > 0 only when the ray is known to stay above the
    ground before it (see :func:`_cast_kernel`).
    """
    rate = -dz + MAX_GROUND_SLOPE * math.sqrt(dx * dx + dy * dy)
    if rate <= 1e-6:
        return np.inf, 0, max_range
    t = t0
    g, mat = ground_z(P, ox + t * dx, oy + t * dy)
    f = oz + t * dz - g
    if f <= 0.0:
        if t0 == 0.0:
            return np.inf, 0, 0.0
        t = 0.0  # should not happen (see the caller); start again from the sensor
        g, mat = ground_z(P, ox, oy)
        f = oz - g
        if f <= 0.0:
            return np.inf, 0, 0.0
    for _ in range(2000):
        t_new = t + max(f / rate, 0.05)
        if t_new > max_range:
            return np.inf, 0, min(max_range, t + f / rate)
        g, mat = ground_z(P, ox + t_new * dx, oy + t_new * dy)
        f_new = oz + t_new * dz - g
        if f_new <= 0.0:
            # regula falsi (Illinois) between t (above ground) and t_new (below)
            lo, hi, flo, fhi = t, t_new, f, f_new
            side = 0
            for _ in range(8):
                mid = (lo * fhi - hi * flo) / (fhi - flo)
                g, mat = ground_z(P, ox + mid * dx, oy + mid * dy)
                fm = oz + mid * dz - g
                if abs(fm) < 1e-4 or hi - lo < 1e-3:
                    return mid, mat, lo
                if fm > 0.0:
                    lo, flo = mid, fm
                    if side == 1:
                        fhi *= 0.5
                    side = 1
                else:
                    hi, fhi = mid, fm
                    if side == -1:
                        flo *= 0.5
                    side = -1
            g, mat = ground_z(P, ox + hi * dx, oy + hi * dy)
            return hi, mat, lo
        if f_new < 1e-4:
            return t_new, mat, t
        t, f = t_new, f_new
    return np.inf, 0, t


@njit(cache=True, parallel=True)
def _cast_kernel(origins, rots, azim, elev, P, prims, col_ptr, col_idx, ego_boxes, max_range, ground_refl,
                 out_t, out_kind, out_refl, out_cos, out_prim, out_dir, inter):
    n_az, n_el = azim.shape[0], elev.shape[0]
    for j in prange(n_az):
        ox, oy, oz = origins[j, 0], origins[j, 1], origins[j, 2]
        R = rots[j]
        ca, sa = math.cos(azim[j]), math.sin(azim[j])
        # Rings go up in elevation and share the column's origin and azimuth, so over the ground path they
        # see, a higher ray lies above a lower one: it cannot meet the (height-field) ground before the
        # horizontal distance up to which the lower ray is known to stay above it. Start marching there.
        rho_clear = 0.0
        for i in range(n_el):
            ce, se = math.cos(elev[i]), math.sin(elev[i])
            lx, ly, lz = ce * ca, ce * sa, se
            dx = R[0, 0] * lx + R[0, 1] * ly + R[0, 2] * lz
            dy = R[1, 0] * lx + R[1, 1] * ly + R[1, 2] * lz
            dz = R[2, 0] * lx + R[2, 1] * ly + R[2, 2] * lz
            out_dir[j, i, 0] = dx
            out_dir[j, i, 1] = dy
            out_dir[j, i, 2] = dz
            t_self = np.inf
            for b in range(ego_boxes.shape[0]):
                t_self = min(t_self, _hit_aabb(ego_boxes[b], lx, ly, lz))
            if t_self < np.inf:
                out_t[j, i] = t_self
                out_kind[j, i] = 2
                out_refl[j, i] = 0.02
                out_cos[j, i] = 0.5
                out_prim[j, i] = -1
                continue
            best, kind, refl, cosi, hit = max_range, 0, 0.0, 0.0, -1
            dxy = math.sqrt(dx * dx + dy * dy)
            t0 = rho_clear / dxy if dxy > 1e-9 else 0.0
            tg, mat, t_clear = _hit_ground(P, ox, oy, oz, dx, dy, dz, max_range, min(t0, max_range))
            rho_clear = t_clear * dxy
            if tg < best:
                hx, hy = ox + tg * dx, oy + tg * dy
                e = 0.05
                g0 = ground_z(P, hx, hy)[0]
                gx = (ground_z(P, hx + e, hy)[0] - g0) / e
                gy = (ground_z(P, hx, hy + e)[0] - g0) / e
                nn = math.sqrt(gx * gx + gy * gy + 1.0)
                best, kind, refl, hit = tg, 1, ground_refl[mat], -1
                cosi = abs(-gx * dx - gy * dy + dz) / nn
            last_agent = -1
            for q in range(col_ptr[j], col_ptr[j + 1]):
                p = col_idx[q]
                t, nx, ny, nz = _hit_prim(prims[p], ox, oy, oz, dx, dy, dz)
                if t < max_range:
                    ag = int(prims[p, 9])
                    if ag >= 0 and ag != last_agent:
                        inter[j, ag] += 1
                        last_agent = ag
                    if t < best:
                        best, kind, refl, hit = t, 3, prims[p, 8], p
                        cosi = abs(nx * dx + ny * dy + nz * dz)
            out_t[j, i] = best
            out_kind[j, i] = kind
            out_refl[j, i] = refl
            out_cos[j, i] = cosi
            out_prim[j, i] = hit


# ---------------------------------------------------------------------------------------------- wrapper
def bounding_radius(prims: np.ndarray) -> np.ndarray:
    """Radius (M,) of the vertical cylinder around each primitive's axis that contains it (xy)."""
    r = np.where(prims[:, 0] == 0, np.hypot(prims[:, 4], prims[:, 5]), prims[:, 4])
    return r


def column_candidates(prims: np.ndarray, origin: np.ndarray, rot: np.ndarray, azim: np.ndarray,
                      max_range: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-column candidate lists (CSR): ``col_ptr`` (n_az + 1,) int64 and ``col_idx`` (K,) int64.

    A primitive is a candidate of every column whose azimuth lies within its angular extent seen from
    ``origin`` (3,) with the LiDAR orientation ``rot`` (3, 3), widened by ``margin`` metres (sensor motion
    during the sweep) and two columns. Primitive indices are ascending within a column.
    """
    n = azim.shape[0]
    if prims.shape[0] == 0:
        return np.zeros(n + 1, np.int64), np.zeros(0, np.int64)
    dphi = 2 * np.pi / n
    loc = (prims[:, 1:4] - origin) @ rot
    dist = np.hypot(loc[:, 0], loc[:, 1])
    rb = bounding_radius(prims) + margin
    keep = np.nonzero(dist - rb < max_range)[0]
    dist, rb, loc = dist[keep], rb[keep], loc[keep]
    az = np.arctan2(loc[:, 1], loc[:, 0])
    half = np.where(dist > rb, np.arcsin(np.clip(rb / np.maximum(dist, 1e-9), 0, 1)), np.pi)
    jc = np.round((azim[0] - az) / dphi).astype(np.int64) % n
    h = np.minimum(np.ceil(half / dphi).astype(np.int64) + 2, n // 2)
    counts = 2 * h + 1
    counts = np.where(h >= n // 2, n, counts)
    start = np.where(h >= n // 2, 0, jc - h)
    prim_rep = np.repeat(keep, counts)
    offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = (np.repeat(start, counts) + offs) % n
    order = np.lexsort((prim_rep, cols))
    cols, prim_rep = cols[order], prim_rep[order]
    col_ptr = np.zeros(n + 1, np.int64)
    col_ptr[1:] = np.cumsum(np.bincount(cols, minlength=n))
    return col_ptr, prim_rep.astype(np.int64)


@dataclass(frozen=True, eq=False)
class SweepRays:
    """Raw ray-casting result of one sweep, arrays (n_az, 32): ``t`` range (m), ``kind`` (HIT_*),
    ``reflectivity``, ``cos_incidence``, ``prim`` (primitive index or -1); ``dirs`` (n_az, 32, 3) global
    unit directions, ``origins`` (n_az, 3) global ray origins; ``intersections`` (n_agents,) int64: rays that
    intersect each agent whether or not something else is in front."""

    t: np.ndarray
    kind: np.ndarray
    reflectivity: np.ndarray
    cos_incidence: np.ndarray
    prim: np.ndarray
    dirs: np.ndarray
    origins: np.ndarray
    intersections: np.ndarray


def column_azimuths(n_azimuth: int) -> np.ndarray:
    """LiDAR-frame azimuths (n_azimuth,) float64 of the columns, clockwise from :data:`AZIMUTH_START`."""
    return AZIMUTH_START - np.arange(n_azimuth) * (2 * np.pi / n_azimuth)


def cast_sweep(road: np.ndarray, prims: np.ndarray, n_agents: int, lidar_poses: np.ndarray,
               max_range: float = 100.0) -> SweepRays:
    """Cast all rays of one sweep.

    ``road`` (N_ROAD_PARAMS,) float64; ``prims`` (M, 10) float64 (see :mod:`shared.synth.world`), agent ids
    in column 9 below ``n_agents``; ``lidar_poses`` (n_az, 4, 4) float64: lidar2global at each column's
    firing time.
    """
    lidar_poses = np.ascontiguousarray(lidar_poses, dtype=np.float64)
    if lidar_poses.ndim != 3 or lidar_poses.shape[1:] != (4, 4) or lidar_poses.shape[0] < 90:
        raise ConfigError("lidar_poses", lidar_poses.shape, "expected (n_azimuth >= 90, 4, 4)")
    prims = np.ascontiguousarray(prims, dtype=np.float64).reshape(-1, 10)
    if prims.size and (prims[:, 9].max() >= n_agents):
        raise ConfigError("prims", int(prims[:, 9].max()), f"agent id not below n_agents={n_agents}")
    if not np.isfinite(prims).all():
        raise ConfigError("prims", "non-finite", "primitive parameters must be finite")
    n = lidar_poses.shape[0]
    azim = column_azimuths(n)
    origins = np.ascontiguousarray(lidar_poses[:, :3, 3])
    rots = np.ascontiguousarray(lidar_poses[:, :3, :3])
    mid = lidar_poses[n // 2]
    margin = float(np.linalg.norm(origins[-1] - origins[0])) + 0.1
    col_ptr, col_idx = column_candidates(prims, mid[:3, 3], mid[:3, :3], azim, max_range, margin)
    shape = (n, ELEVATIONS.shape[0])
    out_t = np.empty(shape)
    out_kind = np.empty(shape, np.int8)
    out_refl = np.empty(shape)
    out_cos = np.empty(shape)
    out_prim = np.empty(shape, np.int64)
    dirs = np.empty(shape + (3,))
    inter = np.zeros((n, max(n_agents, 1)), np.int64)
    _cast_kernel(origins, rots, azim, ELEVATIONS, np.ascontiguousarray(road, dtype=np.float64), prims,
                 col_ptr, col_idx, EGO_BOXES, float(max_range), GROUND_REFLECTIVITY,
                 out_t, out_kind, out_refl, out_cos, out_prim, dirs, inter)
    return SweepRays(out_t, out_kind, out_refl, out_cos, out_prim, dirs, origins, inter.sum(axis=0)[:n_agents])


def inside_primitives(prims: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Boolean (K, M): whether each point (K, 3) lies inside each primitive (M, 10). Plain numpy."""
    d = pts[:, None, :] - prims[None, :, 1:4]
    c, s = np.cos(prims[:, 7]), np.sin(prims[:, 7])
    lx = c * d[..., 0] + s * d[..., 1]
    ly = -s * d[..., 0] + c * d[..., 1]
    a, b, cc = prims[:, 4], prims[:, 5], prims[:, 6]
    box = (np.abs(lx) <= a) & (np.abs(ly) <= b) & (np.abs(d[..., 2]) <= cc)
    cyl = (d[..., 0] ** 2 + d[..., 1] ** 2 <= a ** 2) & (np.abs(d[..., 2]) <= b)
    sph = (d ** 2).sum(-1) <= a ** 2
    typ = prims[:, 0].astype(int)
    return np.where(typ == 0, box, np.where(typ == 1, cyl, sph))


def cast_reference(road: np.ndarray, prims: np.ndarray, origin: np.ndarray, direction: np.ndarray,
                   max_range: float = 100.0, step: float = 0.01) -> tuple[float, int, int]:
    """Reference for one global ray, independent of the kernel's intersection formulas: march in ``step``
    metre steps and return (t, kind, prim) of the first sample below the ground or inside a primitive
    (point-containment tests), ``(max_range, HIT_NONE, -1)`` if none. No ego-vehicle test, no culling.
    Slow (numpy over all samples); for tests.
    """
    o = np.asarray(origin, float)
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    ts = np.arange(step, max_range, step)
    pts = o + ts[:, None] * d
    gz = np.array([ground_z(road, x, y)[0] for x, y in pts[:, :2]])
    below = np.nonzero(pts[:, 2] <= gz)[0]
    best, kind, hit = (ts[below[0]], HIT_GROUND, -1) if below.size else (max_range, HIT_NONE, -1)
    if prims.shape[0]:
        # only primitives whose bounding sphere comes near the ray
        rel = prims[:, 1:4] - o
        along = np.clip(rel @ d, 0, max_range)
        miss = np.linalg.norm(rel - along[:, None] * d, axis=1)
        rad = np.sqrt(bounding_radius(prims) ** 2 + np.where(prims[:, 0] == 0, prims[:, 6], prims[:, 5]) ** 2)
        near = np.nonzero(miss <= rad + 0.01)[0]
        if near.size:
            inside = inside_primitives(prims[near], pts)
            rows = np.nonzero(inside.any(axis=1))[0]
            if rows.size and ts[rows[0]] < best:
                best, kind, hit = ts[rows[0]], HIT_PRIM, int(near[np.argmax(inside[rows[0]])])
    return float(best), kind, hit


def to_points(rays: SweepRays, global2lidar: np.ndarray, rng: np.random.Generator, range_noise: float,
              dropout: float, keep_all_rays: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of a sweep in the LiDAR frame at the sweep timestamp.

    Adds Gaussian range noise, drops returns at random (more at long range and grazing incidence) and
    derives an integer intensity 0..255 from reflectivity and incidence. Returns ``points`` (N, 5) float32
    (x, y, z, intensity, ring), ``prim`` (N,) int64 hit primitive per point (-1 for none/ground/self) and
    ``is_return`` (N,) bool (a real return, not a no-return or self-return placeholder).
    """
    n, m = rays.t.shape
    kind = rays.kind.reshape(-1).copy()
    t0 = rays.t.reshape(-1)
    refl, cosi = rays.reflectivity.reshape(-1), rays.cos_incidence.reshape(-1)
    ret = np.nonzero((kind == HIT_GROUND) | (kind == HIT_PRIM))[0]
    far = np.clip((t0[ret] - 60.0) / 40.0, 0, None)
    p_drop = dropout + 0.35 * far ** 2 + 0.5 * (cosi[ret] < 0.03) + 0.2 * (refl[ret] < 0.06) * far
    dropped = rng.random(ret.size) < p_drop
    kind[ret[dropped]] = HIT_NONE
    ret = ret[~dropped]
    loc = np.empty((n * m, 3))
    # returns: noisy range along the global ray, then into the LiDAR frame at the sweep timestamp
    t_ret = t0[ret] + rng.normal(0.0, range_noise, size=ret.size)
    glob = rays.origins[ret // m] + t_ret[:, None] * rays.dirs.reshape(-1, 3)[ret]
    loc[ret] = glob @ global2lidar[:3, :3].T + global2lidar[:3, 3]
    # self-returns: the ego vehicle is rigid with the sensor, so the local ray gives the point directly
    sel = np.nonzero(kind == HIT_SELF)[0]
    az = column_azimuths(n)[sel // m]
    el = ELEVATIONS[sel % m]
    t_self = t0[sel] + rng.normal(0.0, range_noise, size=sel.size)
    loc[sel] = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1) * t_self[:, None]
    # no return: a placeholder point near the sensor, as in the real files
    none = np.nonzero(kind == HIT_NONE)[0]
    frac = 1.0 - (none // m + 0.5) / n
    loc[none] = np.stack([np.zeros(none.size), -0.45 * frac, -0.03 * frac], axis=1)
    inten = np.empty(n * m)
    gain = rng.lognormal(0.0, 0.35, size=ret.size)
    inten[ret] = np.clip(np.round(255.0 * refl[ret] * (0.3 + 0.7 * cosi[ret]) * gain), 0, 255)
    inten[none] = rng.integers(0, 25, size=none.size)
    inten[sel] = rng.integers(0, 12, size=sel.size)
    ring = np.tile(np.arange(m, dtype=np.float64), n)
    pts = np.column_stack([loc, inten, ring]).astype(np.float32)
    is_return = np.zeros(n * m, bool)
    is_return[ret] = True
    prim = np.where(is_return & (kind == HIT_PRIM), rays.prim.reshape(-1), -1)
    if not keep_all_rays:
        pts, prim, is_return = pts[ret], prim[ret], is_return[ret]
    return pts, prim, is_return
