"""Ground removal by RANSAC: a global level plane, refined per polar patch (sector x range ring).

Real roads are not one plane (camber, slopes, kerbs), so one global plane either eats the bottom of objects or
leaves ground in the clusters. :func:`fit_ground` therefore

1. fits a *global* plane by RANSAC on an evenly strided subsample (at most ``max_fit_points``) whose normal must
   lie within ``max_normal_angle_deg`` of vertical (looser constraints lock onto walls and ramps on the real
   scans), refined by least squares on its inliers (z regressed on x, y: the plane is near level);
2. splits the points into polar patches around the sensor (``n_sectors`` azimuth sectors x range rings with
   edges ``ring_edges``) and fits a plane per patch by RANSAC, ring by ring from the sensor outwards. The
   reference plane of a patch is the global plane for the innermost ring; further out it is *level* (the global
   normal) through the inner neighbour's plane on their common ring boundary (sector mid-angle), so tilts do
   not extrapolate outwards. The reference is shifted to the ``patch_low_quantile`` of the patch's heights
   above it (clamped to ``max_patch_step``) to follow rising or falling terrain. Hypotheses are drawn from the
   patch points within ``patch_band`` of the shifted reference and must (a) be within ``max_normal_angle_deg``
   of vertical and within ``max_patch_tilt_deg`` of the reference normal and (b) pass within ``patch_band`` of
   the reference at the candidates' centre: a patch cannot jump onto a car roof or a wall. A patch with fewer
   than ``min_patch_points`` points, or whose best plane has fewer than ``min_patch_inliers`` inliers, takes
   its (unshifted) reference plane (``GroundResult.fitted`` is False there);
3. classifies every point in one pass: ``height`` = signed distance to its patch plane (positive above the
   ground); ground if ``|height| <= distance_threshold``, and, with ``below_is_ground`` (default), also if the
   point lies further below the plane (multi-path reflections, ditches: never objects).

Hypotheses are drawn on the host with ``numpy.random.default_rng(seed)``, so results are deterministic and the
CPU (Numba) and GPU (CuPy) backends evaluate exactly the same candidate planes.

Planes are ``(a, b, c, d)`` float64 with unit normal ``(a, b, c)``, ``c > 0`` (pointing up) and
``a x + b y + c z + d = 0`` on the plane, in the LiDAR frame (sensor at the origin, z up).

Bad input: points with a non-finite x, y or z are never ground, have patch -1 and height NaN, and do not take
part in any fit. When no level plane can be fitted at all (empty sweep, fewer than 3 finite points, collinear or
identical points, only walls), the global plane is the fallback ``z = -sensor_height`` and ``global_fitted`` is
False: the result is still defined.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from shared.backend import resolve_backend
from shared.errors import ConfigError, InputError

__all__ = ["GroundConfig", "GroundResult", "fit_ground", "fit_plane_reference", "plane_from_points"]


@dataclass(frozen=True)
class GroundConfig:
    """Parameters of :func:`fit_ground`. Tags as in METHOD.md: [paper], [proto], [ours].

    distance_threshold: inlier distance to the plane, metres (0.2 [proto]).
    max_normal_angle_deg: maximum angle between a plane normal and +z, degrees (10 [ours], see fixtures README).
    iterations: RANSAC hypotheses for the global plane [ours].
    patch_iterations: RANSAC hypotheses per patch [ours].
    max_fit_points: points (evenly strided) used to score global hypotheses [ours].
    max_patch_points: points (evenly strided) per patch used to score patch hypotheses [ours].
    n_sectors: azimuth sectors of the patch layout [ours].
    ring_edges: increasing range-ring boundaries in metres (xy distance from the sensor); rings are
        ``[0, e0), [e0, e1), ..., [e_last, inf)`` [ours].
    min_patch_points: fewer candidate points in a patch -> it inherits its reference plane [ours].
    min_patch_inliers: a best patch plane with fewer inliers is rejected (inherit) [ours].
    patch_band: metres; hypotheses come from points within this distance of the reference plane and must pass
        within it at the patch centre [ours].
    max_patch_tilt_deg: maximum angle between a patch plane's normal and its reference plane's normal [ours].
    patch_low_quantile: before the band test, the reference plane of a patch is shifted to this quantile of the
        heights of the patch points above it (follows rising or falling terrain; robust to a few points below
        the ground) [ours].
    max_patch_step: metres; that shift is clamped to +-max_patch_step [ours]. patch_band and max_patch_step
        are 0.3 m (were 0.5 and 2.0: with those a patch filled by a car next to the sensor, or the scan line on
        the side of a far one, could take a plane up to 1 m above the road, labelling the car's body ground;
        measured in docs/preprocess.md "Region quality").
    below_is_ground: points more than ``distance_threshold`` below their plane count as ground [ours].
    min_fit_range: metres; points closer than this to the sensor in x, y take no part in any fit (on nuScenes
        sweeps ~40% of the points are returns from the ego vehicle within 1.5 m; they are still classified) [ours].
    sensor_height: metres above ground of the sensor; only used for the fallback plane ``z = -sensor_height``
        when nothing can be fitted (1.84 [proto]).
    seed: seed of the hypothesis sampler.
    """

    distance_threshold: float = 0.2
    max_normal_angle_deg: float = 10.0
    iterations: int = 100
    patch_iterations: int = 40
    max_fit_points: int = 1024
    max_patch_points: int = 128
    n_sectors: int = 8
    ring_edges: tuple[float, ...] = (8.0, 16.0, 28.0, 45.0)
    min_patch_points: int = 20
    min_patch_inliers: int = 10
    patch_band: float = 0.3
    max_patch_tilt_deg: float = 5.0
    patch_low_quantile: float = 0.1
    max_patch_step: float = 0.3
    below_is_ground: bool = True
    min_fit_range: float = 2.5
    sensor_height: float = 1.84
    seed: int = 0

    def __post_init__(self):
        def positive(name, integer=False):
            v = getattr(self, name)
            if integer:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                    raise ConfigError(name, v, "must be an integer >= 1")
            elif not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v > 0):
                raise ConfigError(name, v, "must be a finite number > 0")

        for name in ("distance_threshold", "patch_band", "sensor_height"):
            positive(name)
        if not (isinstance(self.patch_low_quantile, (int, float)) and 0 <= self.patch_low_quantile < 1):
            raise ConfigError("patch_low_quantile", self.patch_low_quantile, "must be in [0, 1)")
        if not (isinstance(self.max_patch_step, (int, float)) and math.isfinite(self.max_patch_step)
                and self.max_patch_step >= 0):
            raise ConfigError("max_patch_step", self.max_patch_step, "must be a finite number >= 0")
        if not (isinstance(self.min_fit_range, (int, float)) and math.isfinite(self.min_fit_range)
                and self.min_fit_range >= 0):
            raise ConfigError("min_fit_range", self.min_fit_range, "must be a finite number >= 0")
        for name in ("iterations", "patch_iterations", "max_fit_points", "max_patch_points", "n_sectors"):
            positive(name, integer=True)
        for name in ("max_normal_angle_deg", "max_patch_tilt_deg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 < v < 90):
                raise ConfigError(name, v, "must be in (0, 90) degrees")
        for name in ("min_patch_points", "min_patch_inliers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 3:
                raise ConfigError(name, v, "must be an integer >= 3")
        try:
            edges = tuple(float(e) for e in self.ring_edges)
        except (TypeError, ValueError):
            raise ConfigError("ring_edges", self.ring_edges, "must be a sequence of numbers (metres)") from None
        object.__setattr__(self, "ring_edges", edges)  # lists (e.g. from TOML) become a hashable tuple
        if any(not (isinstance(e, (int, float)) and math.isfinite(e) and e > 0) for e in edges) or any(
            b <= a for a, b in zip(edges, edges[1:])
        ):
            raise ConfigError("ring_edges", self.ring_edges, "must be finite, > 0 and strictly increasing")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise ConfigError("seed", self.seed, "must be an integer")
        if self.n_sectors * (len(edges) + 1) > np.iinfo(np.int16).max:
            raise ConfigError("n_sectors", self.n_sectors, "n_sectors x rings must fit the int16 patch id")

    @property
    def n_rings(self) -> int:
        return len(self.ring_edges) + 1

    @property
    def n_patches(self) -> int:
        return self.n_sectors * self.n_rings

    @property
    def min_patch_cos(self) -> float:
        """cos(max_patch_tilt_deg)."""
        return math.cos(math.radians(self.max_patch_tilt_deg))

    @property
    def min_normal_z(self) -> float:
        """cos(max_normal_angle_deg): the smallest allowed z component of a unit normal."""
        return math.cos(math.radians(self.max_normal_angle_deg))


@dataclass(frozen=True, eq=False)
class GroundResult:
    """Output of :func:`fit_ground` for N input points and P = n_sectors * n_rings patches.

    mask: (N,) bool, True = ground. Non-finite points are False.
    height: (N,) float32, signed distance to the point's patch plane (positive above), NaN if non-finite.
    patch: (N,) int16, the point's patch ``ring * n_sectors + sector``, -1 if non-finite.
    planes: (P, 4) float64 patch planes ``a, b, c, d`` (unit normal, c > 0).
    fitted: (P,) bool, the patch plane was fitted (False: inherited from its reference plane).
    global_plane: (4,) float64; global_fitted False means it is the fallback ``z = -sensor_height``.
    """

    mask: np.ndarray
    height: np.ndarray
    patch: np.ndarray
    planes: np.ndarray
    fitted: np.ndarray
    global_plane: np.ndarray
    global_fitted: bool

    @property
    def n_ground(self) -> int:
        return int(self.mask.sum())


# ----------------------------------------------------------------------------------------------------------
# Numba kernels


@njit(cache=True, inline="always")
def _plane3(p0, p1, p2, out):
    """Plane through three points into ``out`` (a, b, c, d), c >= 0; False if degenerate."""
    ux = p1[0] - p0[0]
    uy = p1[1] - p0[1]
    uz = p1[2] - p0[2]
    vx = p2[0] - p0[0]
    vy = p2[1] - p0[1]
    vz = p2[2] - p0[2]
    a = uy * vz - uz * vy
    b = uz * vx - ux * vz
    c = ux * vy - uy * vx
    nrm = math.sqrt(a * a + b * b + c * c)
    if nrm < 1e-9:
        return False
    if c < 0:
        nrm = -nrm
    a /= nrm
    b /= nrm
    c /= nrm
    out[0] = a
    out[1] = b
    out[2] = c
    out[3] = -(a * p0[0] + b * p0[1] + c * p0[2])
    return True


@njit(cache=True, inline="always")
def _refine(pts, idx, n_idx, plane, thr, min_nz, out):
    """Least-squares plane (z regressed on x, y) of the inliers of ``plane`` among
    ``pts[idx[:n_idx]]``; written to ``out`` if it is level enough, else ``plane`` is copied. Returns inliers."""
    cnt = 0
    mx = 0.0
    my = 0.0
    mz = 0.0
    for k in range(n_idx):
        p = pts[idx[k]]
        if abs(plane[0] * p[0] + plane[1] * p[1] + plane[2] * p[2] + plane[3]) <= thr:
            cnt += 1
            mx += p[0]
            my += p[1]
            mz += p[2]
    for j in range(4):
        out[j] = plane[j]
    if cnt < 3:
        return cnt
    mx /= cnt
    my /= cnt
    mz /= cnt
    # least squares z = mz + ga (x - mx) + gb (y - my) (planes are within a few degrees of level, so this is
    # as good as the total least-squares fit here, and a 2x2 solve instead of an eigen decomposition)
    sxx = 0.0
    sxy = 0.0
    syy = 0.0
    sxz = 0.0
    syz = 0.0
    for k in range(n_idx):
        p = pts[idx[k]]
        if abs(plane[0] * p[0] + plane[1] * p[1] + plane[2] * p[2] + plane[3]) <= thr:
            dx = p[0] - mx
            dy = p[1] - my
            dz = p[2] - mz
            sxx += dx * dx
            sxy += dx * dy
            syy += dy * dy
            sxz += dx * dz
            syz += dy * dz
    det = sxx * syy - sxy * sxy
    if not (det > 1e-9 * (sxx + syy) * (sxx + syy)) or det <= 0:  # the inliers are (nearly) on a line
        return cnt
    ga = (sxz * syy - syz * sxy) / det
    gb = (syz * sxx - sxz * sxy) / det
    nrm = math.sqrt(ga * ga + gb * gb + 1.0)
    a = -ga / nrm
    b = -gb / nrm
    c = 1.0 / nrm
    if c < min_nz:
        return cnt
    out[0] = a
    out[1] = b
    out[2] = c
    out[3] = -(a * mx + b * my + c * mz)
    return cnt


@njit(cache=True, inline="always")
def _ransac(pts, cand, n_cand, sx, sy, sz, n_score, u, thr, min_nz, ref, band, min_cos, cx, cy, best):
    """RANSAC over hypotheses ``u`` (H, 3) uniform [0, 1) picking 3 points of ``cand[:n_cand]``.

    A hypothesis is valid if its unit normal has z >= min_nz and, when ``band > 0``, it passes within ``band`` of
    the reference plane ``ref`` at (cx, cy) with a normal within acos(min_cos) of ref's. Scored by inlier count
    over the scoring points, gathered beforehand into contiguous ``sx, sy, sz[:n_score]`` (the counting loop
    vectorises); the first best wins ties. Returns the best count (-1 if no valid
    hypothesis); the plane goes to ``best``.
    """
    best_cnt = -1
    h = np.empty(4)
    zref = 0.0
    if band > 0:
        zref = -(ref[0] * cx + ref[1] * cy + ref[3]) / ref[2]
    for it in range(u.shape[0]):
        i0 = cand[min(int(u[it, 0] * n_cand), n_cand - 1)]
        i1 = cand[min(int(u[it, 1] * n_cand), n_cand - 1)]
        i2 = cand[min(int(u[it, 2] * n_cand), n_cand - 1)]
        if i0 == i1 or i0 == i2 or i1 == i2:
            continue
        if not _plane3(pts[i0], pts[i1], pts[i2], h):
            continue
        if h[2] < min_nz:
            continue
        if band > 0:
            zh = -(h[0] * cx + h[1] * cy + h[3]) / h[2]
            if abs(zh - zref) > band:
                continue
            if h[0] * ref[0] + h[1] * ref[1] + h[2] * ref[2] < min_cos:
                continue
        cnt = 0
        a, b, c, d = h[0], h[1], h[2], h[3]
        for k in range(n_score):
            if abs(a * sx[k] + b * sy[k] + c * sz[k] + d) <= thr:
                cnt += 1
        if cnt > best_cnt:
            best_cnt = cnt
            for j in range(4):
                best[j] = h[j]
    return best_cnt


@njit(cache=True)
def _global_kernel(pts, max_fit, min_r2, u, thr, min_nz, fallback, out):
    """Global plane from an evenly strided subsample of the points at xy range^2 >= min_r2.
    Returns True if fitted, else ``out`` = fallback."""
    n = pts.shape[0]
    far = np.empty(n, np.int64)
    n_far = 0
    for i in range(n):
        if pts[i, 0] * pts[i, 0] + pts[i, 1] * pts[i, 1] >= min_r2:
            far[n_far] = i
            n_far += 1
    stride = max(1, (n_far + max_fit - 1) // max_fit)
    m = (n_far + stride - 1) // stride
    idx = np.empty(m, np.int64)
    sx = np.empty(m)
    sy = np.empty(m)
    sz = np.empty(m)
    for k in range(m):
        i = far[k * stride]
        idx[k] = i
        sx[k] = pts[i, 0]
        sy[k] = pts[i, 1]
        sz[k] = pts[i, 2]
    best = np.empty(4)
    dummy = np.zeros(4)
    cnt = -1
    if m >= 3:
        cnt = _ransac(pts, idx, m, sx, sy, sz, m, u, thr, min_nz, dummy, 0.0, -1.0, 0.0, 0.0, best)
    if cnt < 3:
        for j in range(4):
            out[j] = fallback[j]
        return False
    _refine(pts, idx, m, best, thr, min_nz, out)
    return True


@njit(cache=True, inline="always")
def _pseudo_angle(x, y):
    """A monotonic stand-in for atan2(y, x) on (-pi, pi], in (-2, 2] (no trigonometry); 0 at the origin."""
    s = abs(x) + abs(y)
    if s == 0:
        return 0.0
    p = x / s
    return p - 1.0 if y < 0 else 1.0 - p


@functools.lru_cache(maxsize=16)
def _sector_bounds(n_sectors: int) -> np.ndarray:
    """Pseudo-angles of the sector boundaries -pi + k 2 pi / S, k = 1..S-1 (sector = boundaries <= angle);
    read-only (cached)."""
    ang = -math.pi + 2 * math.pi * np.arange(1, n_sectors) / n_sectors
    out = np.array([_pseudo_angle.py_func(math.cos(a), math.sin(a)) for a in ang], dtype=np.float64)
    out.flags.writeable = False
    return out


@njit(cache=True)
def _finite_patches(xyz, bounds, edges2):
    """One pass over xyz (n, >=3): the rows with finite x, y, z as a contiguous (m, 3) float64 array, the finite
    mask (n,), and the patch ``ring * S + sector`` (m,) int16 of each finite row: sector = number of ``bounds``
    (S-1 pseudo-angles) <= the point's pseudo-angle, ring = number of squared ring edges ``edges2`` <= x^2 + y^2.
    """
    n = xyz.shape[0]
    n_sectors = bounds.shape[0] + 1
    finite = np.empty(n, np.bool_)
    pts = np.empty((n, 3))
    patch = np.empty(n, np.int16)
    m = 0
    for i in range(n):
        x = np.float64(xyz[i, 0])
        y = np.float64(xyz[i, 1])
        z = np.float64(xyz[i, 2])
        ok = np.isfinite(x) and np.isfinite(y) and np.isfinite(z)
        finite[i] = ok
        if not ok:
            continue
        pts[m, 0] = x
        pts[m, 1] = y
        pts[m, 2] = z
        a = _pseudo_angle(x, y)
        s = 0
        while s < bounds.shape[0] and a >= bounds[s]:
            s += 1
        r2 = x * x + y * y
        ring = 0
        while ring < edges2.shape[0] and r2 >= edges2[ring]:
            ring += 1
        patch[m] = ring * n_sectors + s
        m += 1
    if m < n:
        return pts[:m].copy(), finite, patch[:m].copy()
    return pts, finite, patch


@njit(cache=True)
def _patch_kernel(pts, patch, n_sectors, edges, gplane, u, thr, min_nz, band, min_cos, max_pts, min_pts,
                  min_inl, low_q, max_step, min_r2, below_is_ground, planes, fitted, height, mask):
    """Per-patch RANSAC (ring by ring) and one classification pass over all points."""
    n = pts.shape[0]
    n_rings = edges.shape[0] + 1
    n_p = n_sectors * n_rings
    # counting sort of the points by patch (stable)
    start = np.zeros(n_p + 1, np.int64)
    for i in range(n):
        start[patch[i] + 1] += 1
    for p in range(n_p):
        start[p + 1] += start[p]
    fill = start[:-1].copy()
    order = np.empty(n, np.int64)
    n_fit = np.zeros(n_p, np.int64)
    for i in range(n):
        if pts[i, 0] * pts[i, 0] + pts[i, 1] * pts[i, 1] >= min_r2:  # fit points first, in input order
            order[fill[patch[i]]] = i
            fill[patch[i]] += 1
            n_fit[patch[i]] += 1
    for i in range(n):
        if pts[i, 0] * pts[i, 0] + pts[i, 1] * pts[i, 1] < min_r2:
            order[fill[patch[i]]] = i
            fill[patch[i]] += 1
    cand = np.empty(n, np.int64)
    score = np.empty(n, np.int64)
    hs = np.empty(n)
    sx = np.empty(max_pts + 1)
    sy = np.empty(max_pts + 1)
    sz = np.empty(max_pts + 1)
    best = np.empty(4)
    ref = np.empty(4)
    for ring in range(n_rings):
        for s in range(n_sectors):
            p = ring * n_sectors + s
            if ring == 0:
                for j in range(4):
                    ref[j] = gplane[j]
            else:
                # level reference: the global normal through the inner patch's plane on the ring boundary
                ang = -math.pi + (s + 0.5) * 2.0 * math.pi / n_sectors
                bx = edges[ring - 1] * math.cos(ang)
                by = edges[ring - 1] * math.sin(ang)
                inner = planes[p - n_sectors]
                bz = -(inner[0] * bx + inner[1] * by + inner[3]) / inner[2]
                for j in range(3):
                    ref[j] = gplane[j]
                ref[3] = -(gplane[0] * bx + gplane[1] * by + gplane[2] * bz)
            for j in range(4):
                planes[p, j] = ref[j]
            fitted[p] = False
            a = start[p]
            b = a + n_fit[p]
            cnt_all = b - a
            if cnt_all < min_pts:
                continue
            stride = max(1, (cnt_all + max_pts - 1) // max_pts)
            n_c = 0
            n_s = 0
            cx = 0.0
            cy = 0.0
            for k in range(a, b, stride):
                i = order[k]
                q = pts[i]
                score[n_s] = i
                sx[n_s] = q[0]
                sy[n_s] = q[1]
                sz[n_s] = q[2]
                hs[n_s] = ref[0] * q[0] + ref[1] * q[1] + ref[2] * q[2] + ref[3]
                n_s += 1
            # follow the terrain: shift the reference to the low quantile of the heights (clamped)
            low = np.sort(hs[:n_s])[int(low_q * (n_s - 1))]
            low = min(max(low, -max_step), max_step)
            ref[3] -= low
            for k in range(n_s):
                i = score[k]
                q = pts[i]
                if abs(hs[k] - low) <= band:
                    cand[n_c] = i
                    n_c += 1
                    cx += q[0]
                    cy += q[1]
            if n_c < min_pts // stride or n_c < 3:
                continue
            cx /= n_c
            cy /= n_c
            c = _ransac(pts, cand, n_c, sx, sy, sz, n_s, u[p], thr, min_nz, ref, band, min_cos, cx, cy, best)
            if c < min_inl // stride or c < 3:
                continue
            _refine(pts, score, n_s, best, thr, min_nz, planes[p])
            # the refined plane must still respect the band at the patch centre
            zr = -(ref[0] * cx + ref[1] * cy + ref[3]) / ref[2]
            zp = -(planes[p, 0] * cx + planes[p, 1] * cy + planes[p, 3]) / planes[p, 2]
            tilt = planes[p, 0] * ref[0] + planes[p, 1] * ref[1] + planes[p, 2] * ref[2]
            if abs(zp - zr) > band or tilt < min_cos:
                for j in range(4):
                    planes[p, j] = best[j]
            fitted[p] = True
    for i in range(n):
        pl = planes[patch[i]]
        h = pl[0] * pts[i, 0] + pl[1] * pts[i, 1] + pl[2] * pts[i, 2] + pl[3]
        height[i] = h
        mask[i] = abs(h) <= thr or (below_is_ground and h < -thr)


# ----------------------------------------------------------------------------------------------------------
# Public API


def _check_xyz(xyz: np.ndarray) -> np.ndarray:
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise InputError(f"points must be an (N, 3) array (extra columns are ignored), got shape {xyz.shape}")
    return xyz[:, :3]


def _hypotheses(cfg: GroundConfig, n_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform [0, 1) draws: global (iterations, 3) and per patch (P, patch_iterations, 3)."""
    rng = np.random.default_rng(cfg.seed)
    return rng.random((cfg.iterations, 3)), rng.random((n_patches, cfg.patch_iterations, 3))


def fit_ground(xyz: np.ndarray, cfg: GroundConfig = GroundConfig(), backend: str = "cpu") -> GroundResult:
    """Ground mask and planes of one sweep.

    xyz: (N, 3) (or (N, C >= 3), extra columns ignored) float32/float64 points in the LiDAR frame.
    backend: ``cpu`` (Numba), ``gpu`` (CuPy) or ``auto``.
    Returns a :class:`GroundResult`; see the module docstring for the algorithm and the bad-input rules.
    """
    xyz = _check_xyz(xyz)
    backend = resolve_backend(backend)
    n = xyz.shape[0]
    if xyz.dtype not in (np.float32, np.float64):
        xyz = xyz.astype(np.float64)
    edges = np.asarray(cfg.ring_edges, dtype=np.float64)
    pts, finite, patch = _finite_patches(xyz, _sector_bounds(cfg.n_sectors), edges * edges)
    all_finite = len(pts) == n
    fallback = np.array([0.0, 0.0, 1.0, cfg.sensor_height])
    u_global, u_patch = _hypotheses(cfg, cfg.n_patches)
    if backend == "gpu":
        gplane, gfit, planes, fitted, height, mask = _fit_ground_gpu(pts, patch, cfg, u_global, u_patch, fallback)
    else:
        gplane = np.empty(4)
        gfit = bool(_global_kernel(pts, cfg.max_fit_points, cfg.min_fit_range ** 2, u_global,
                                   cfg.distance_threshold, cfg.min_normal_z, fallback, gplane))
        planes = np.empty((cfg.n_patches, 4))
        fitted = np.zeros(cfg.n_patches, np.bool_)
        height = np.empty(pts.shape[0], np.float32)
        mask = np.empty(pts.shape[0], np.bool_)
        _patch_kernel(pts, patch, cfg.n_sectors, edges, gplane, u_patch, cfg.distance_threshold,
                      cfg.min_normal_z, cfg.patch_band, cfg.min_patch_cos, cfg.max_patch_points,
                      cfg.min_patch_points, cfg.min_patch_inliers, cfg.patch_low_quantile, cfg.max_patch_step,
                      cfg.min_fit_range ** 2, cfg.below_is_ground, planes, fitted, height, mask)
    if all_finite:
        full_mask, full_h, full_patch = mask, height.astype(np.float32, copy=False), patch.astype(np.int16, copy=False)
    else:
        full_mask = np.zeros(n, np.bool_)
        full_mask[finite] = mask
        full_h = np.full(n, np.nan, np.float32)
        full_h[finite] = height
        full_patch = np.full(n, -1, np.int16)
        full_patch[finite] = patch
    return GroundResult(mask=full_mask, height=full_h, patch=full_patch, planes=planes, fitted=fitted,
                        global_plane=gplane, global_fitted=gfit)


def _fit_ground_gpu(pts, patch, cfg, u_global, u_patch, fallback):
    """CuPy path of :func:`fit_ground`: the same hypotheses as the CPU path, each batch of hypotheses scored at
    once as an (H, M) distance matrix on the GPU; the 3x3 least-squares refinement runs on the host (tiny).
    ``patch`` (M,) int16: the points' patches from :func:`_finite_patches` (computed once, on the host)."""
    import cupy as cp

    thr, min_nz, band = cfg.distance_threshold, cfg.min_normal_z, cfg.patch_band
    d_pts = cp.asarray(pts)

    def best_of(cand, score, u, ref, cx, cy):
        """cand, score: device index arrays. Returns (best plane (4,) host or None, count)."""
        n_c = int(cand.shape[0])
        k = cp.minimum((cp.asarray(u) * n_c).astype(cp.int64), n_c - 1)
        i = cand[k]  # (H, 3)
        p0, p1, p2 = d_pts[i[:, 0]], d_pts[i[:, 1]], d_pts[i[:, 2]]
        nrm = cp.cross(p1 - p0, p2 - p0)
        ln = cp.sqrt((nrm * nrm).sum(axis=1))
        distinct = (i[:, 0] != i[:, 1]) & (i[:, 0] != i[:, 2]) & (i[:, 1] != i[:, 2])
        ok = distinct & (ln >= 1e-9)
        ln = cp.where(nrm[:, 2] < 0, -ln, ln)
        ln = cp.where(ok, ln, 1.0)
        nrm = nrm / ln[:, None]
        d = -(nrm * p0).sum(axis=1)
        ok &= nrm[:, 2] >= min_nz
        if ref is not None:
            zref = -(ref[0] * cx + ref[1] * cy + ref[3]) / ref[2]
            zh = -(nrm[:, 0] * cx + nrm[:, 1] * cy + d) / cp.where(ok, nrm[:, 2], 1.0)
            ok &= cp.abs(zh - zref) <= band
            ok &= nrm @ cp.asarray(ref[:3]) >= cfg.min_patch_cos
        sp = d_pts[score]  # (M, 3)
        dist = cp.abs(nrm @ sp.T + d[:, None])  # (H, M)
        cnt = (dist <= thr).sum(axis=1).astype(cp.int64)
        cnt = cp.where(ok, cnt, -1)
        h = int(cp.argmax(cnt))
        c = int(cnt[h])
        if c < 0:
            return None, -1
        return np.append(cp.asnumpy(nrm[h]), float(d[h])), c

    min_r2 = cfg.min_fit_range ** 2
    far_h = np.flatnonzero(pts[:, 0] ** 2 + pts[:, 1] ** 2 >= min_r2)
    gplane = fallback.copy()
    gfit = False
    stride = max(1, -(-len(far_h) // cfg.max_fit_points))
    sub_h_idx = far_h[::stride]
    sub = cp.asarray(sub_h_idx)
    if sub.shape[0] >= 3:
        best, c = best_of(sub, sub, u_global, None, 0.0, 0.0)
        if best is not None and c >= 3:
            sub_h = np.ascontiguousarray(pts[sub_h_idx])
            _refine(sub_h, np.arange(len(sub_h)), len(sub_h), best, thr, min_nz, gplane)
            gfit = True
    # patches
    x, y = d_pts[:, 0], d_pts[:, 1]
    patch = cp.asarray(patch).astype(cp.int64)
    near = (x * x + y * y < min_r2).astype(cp.int64)
    # fit points first within each patch, in input order (as the CPU counting sort)
    order = cp.argsort(patch * 2 + near)  # cupy's sort is always stable
    start = np.zeros(cfg.n_patches + 1, np.int64)
    start[1:] = np.cumsum(cp.asnumpy(cp.bincount(patch, minlength=cfg.n_patches)))
    n_fit = cp.asnumpy(cp.bincount(patch, weights=(1 - near).astype(cp.float64), minlength=cfg.n_patches))
    n_fit = np.rint(n_fit).astype(np.int64)
    planes = np.empty((cfg.n_patches, 4))
    fitted = np.zeros(cfg.n_patches, np.bool_)
    for r in range(cfg.n_rings):
        for sec in range(cfg.n_sectors):
            p = r * cfg.n_sectors + sec
            if r == 0:
                ref = gplane.copy()
            else:
                ang = -math.pi + (sec + 0.5) * 2.0 * math.pi / cfg.n_sectors
                bx, by = cfg.ring_edges[r - 1] * math.cos(ang), cfg.ring_edges[r - 1] * math.sin(ang)
                inner = planes[p - cfg.n_sectors]
                bz = -(inner[0] * bx + inner[1] * by + inner[3]) / inner[2]
                ref = np.append(gplane[:3], -(gplane[0] * bx + gplane[1] * by + gplane[2] * bz))
            planes[p] = ref
            a = int(start[p])
            b = a + int(n_fit[p])
            if b - a < cfg.min_patch_points:
                continue
            st = max(1, -(-(b - a) // cfg.max_patch_points))
            score = order[a:b:st]
            sp = d_pts[score]
            hs = sp @ cp.asarray(ref[:3]) + ref[3]
            n_s = int(hs.shape[0])
            low = float(cp.sort(hs)[int(cfg.patch_low_quantile * (n_s - 1))])
            low = min(max(low, -cfg.max_patch_step), cfg.max_patch_step)
            ref = ref.copy()
            ref[3] -= low
            in_band = cp.abs(hs - low) <= band
            cand = score[in_band]
            n_c = int(cand.shape[0])
            if n_c < cfg.min_patch_points // st or n_c < 3:
                continue
            cx, cy = (float(v) for v in cp.asnumpy(d_pts[cand, :2].mean(axis=0)))
            best, c = best_of(cand, score, u_patch[p], ref, cx, cy)
            if best is None or c < cfg.min_patch_inliers // st or c < 3:
                continue
            score_h = cp.asnumpy(sp)
            out = np.empty(4)
            _refine(score_h, np.arange(len(score_h)), len(score_h), best, thr, min_nz, out)
            zr = -(ref[0] * cx + ref[1] * cy + ref[3]) / ref[2]
            zp = -(out[0] * cx + out[1] * cy + out[3]) / out[2]
            planes[p] = out if abs(zp - zr) <= band and out[:3] @ ref[:3] >= cfg.min_patch_cos else best
            fitted[p] = True
    d_planes = cp.asarray(planes)
    pl = d_planes[patch]
    height = (pl[:, :3] * d_pts).sum(axis=1) + pl[:, 3]
    mask = cp.abs(height) <= thr
    if cfg.below_is_ground:
        mask |= height < -thr
    return gplane, gfit, planes, fitted, cp.asnumpy(height), cp.asnumpy(mask)


# ----------------------------------------------------------------------------------------------------------
# References (slow, obviously right) used by the tests


def plane_from_points(p0, p1, p2) -> np.ndarray | None:
    """(4,) plane through three points (unit normal, c >= 0), None if they are collinear."""
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    nrm = np.cross(p1 - p0, p2 - p0)
    ln = np.linalg.norm(nrm)
    if ln < 1e-9:
        return None
    nrm = nrm / ln
    if nrm[2] < 0:
        nrm = -nrm
    return np.append(nrm, -nrm @ p0)


def fit_plane_reference(xyz: np.ndarray, u: np.ndarray, thr: float, min_nz: float) -> tuple[np.ndarray, int]:
    """Plain-numpy RANSAC over the same hypotheses ``u`` (H, 3) on all of ``xyz`` (no subsample, no refine):
    the best level plane and its inlier count (first best wins ties)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    n = len(xyz)
    best, best_cnt = None, -1
    for row in u:
        i = np.minimum((row * n).astype(np.int64), n - 1)
        if len(set(i.tolist())) < 3:
            continue
        pl = plane_from_points(*xyz[i])
        if pl is None or pl[2] < min_nz:
            continue
        cnt = int((np.abs(xyz @ pl[:3] + pl[3]) <= thr).sum())
        if cnt > best_cnt:
            best, best_cnt = pl, cnt
    return best, best_cnt
