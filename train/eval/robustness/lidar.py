"""LiDAR corruptions after nuScenes-C (Dong et al., CVPR 2023, github thu-ml/3D_Corruptions_AD) and Robo3D
(Kong et al., ICCV 2023, github ldkong1205/Robo3D). Formulas, tables, sources and our changes: docs/robustness.md.

Input of every function: ``points`` (N, C >= 4) float32 x, y, z (m, the LiDAR frame, sensor at the origin),
intensity (nuScenes units 0..255), then any extra columns (e.g. the multi-sweep time lag), unchanged unless stated;
``severity`` in 1..5; ``rng`` a ``numpy.random.Generator``. Output: :class:`CorruptedPoints`, the same column
layout. Non-finite input points are an :class:`~shared.errors.InputError`.

The beam (laser ring) of a point is not stored in calico's points, so :func:`hdl32e_beam` derives it from the
elevation angle, binned to nuScenes' Velodyne HDL-32E: 32 beams from -30.67 to +10.67 degrees, 1.333 degrees apart.
On the real nuScenes fixture scans it equals the sensor's ring index for every point beyond 10 m, for ~90 % of the
points at 5-10 m and ~62 % at 3-5 m (near the car the beams' origins are off the frame origin).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from train.eval.robustness.common import check_points, check_rng, check_severity

#: HDL-32E beam elevations (degrees), lowest first: beam k is at ``-30.67 + k * 41.34 / 31``.
HDL32E_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)

# --- severity tables (index severity - 1) --------------------------------------------------------------------
#: Beams dropped (distinct, drawn from beams 2..28) [Robo3D nuScenes-C light/moderate/heavy = 8/16/24 at 1/3/5].
BEAM_MISSING_BEAMS = (8, 12, 16, 20, 24)
BEAM_MISSING_CANDIDATES = tuple(range(2, 29))
#: Share of points dropped [nuScenes-C density_dec_global: 0.3 * (0.2, 0.4, 0.6, 0.8, 1.0)].
POINT_DROP_RATIOS = (0.06, 0.12, 0.18, 0.24, 0.30)
#: Fog attenuation coefficient alpha (1/m) [nuScenes-C fog_sim]; backscattering beta (1/sr) fixed, see FOG_BETA.
FOG_ALPHAS = (0.005, 0.01, 0.02, 0.03, 0.06)
#: nuScenes-C's beta: ``0.046 / MOR`` with the MOR of alpha = 0.06 (its ParameterSet computes beta before the
#: alpha argument overrides the default, so beta is the same at every severity).
FOG_BETA = 0.046 / (math.log(20) / 0.06)
#: Snowfall (precipitation rate mm/h, occupancy ratio) [nuScenes-C snow_sim_nus's snowflake files].
SNOW_PARAMS = ((2.621627143512277, 7.716049382716048e-07), (42.730958596843955, 4.9603174603174595e-06),
               (200.20719573938692, 1.3888888888888886e-05), (367.80410429625914, 2.083333333333333e-05),
               (791.3884281145265, 3.4722222222222215e-05))
#: Share of points hit by crosstalk [nuScenes-C lidar_crosstalk_noise]; noise std CROSSTALK_STD m.
CROSSTALK_RATIOS = (0.004, 0.008, 0.012, 0.016, 0.020)
CROSSTALK_STD = 3.0
#: Motion "jitter score" sigma (m) [Robo3D nuScenes-C default (light) 0.2; KITTI-C ratios 1 : 2 : 2.5].
MOTION_SIGMAS = (0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass(frozen=True)
class CorruptedPoints:
    """A corrupted point cloud and where each of its rows came from.

    Fields:
        points: (M, C) float32, the input's column layout.
        source: (M,) int64 row of the input each output row derives from (a kept, moved or re-ranged point).
        altered: (M,) bool, True where the row no longer measures its source's surface (a fog, snow or crosstalk
            return): a segmentation label copied from ``source`` is wrong there (Robo3D labels them "ignore").
    """

    points: np.ndarray
    source: np.ndarray
    altered: np.ndarray


def _result(points: np.ndarray, source: np.ndarray, altered: np.ndarray | None = None) -> CorruptedPoints:
    altered = np.zeros(len(points), dtype=bool) if altered is None else altered
    return CorruptedPoints(np.ascontiguousarray(points, dtype=np.float32), source.astype(np.int64), altered)


def hdl32e_beam(points: np.ndarray) -> np.ndarray:
    """(N,) int64 HDL-32E beam index 0..31 (0 lowest) of each point: the elevation ``atan2(z, hypot(x, y))``
    rounded to the nearest of :data:`HDL32E_ELEVATIONS_DEG`, clipped to 0..31."""
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    el = np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    step = (HDL32E_ELEVATIONS_DEG[-1] - HDL32E_ELEVATIONS_DEG[0]) / 31
    return np.clip(np.rint((el - HDL32E_ELEVATIONS_DEG[0]) / step), 0, 31).astype(np.int64)


def beam_missing(points, severity: int, rng: np.random.Generator, *, ring_column: int | None = None
                 ) -> CorruptedPoints:
    """Drop whole laser beams: ``BEAM_MISSING_BEAMS[severity - 1]`` distinct beams drawn uniformly from beams 2..28
    lose all their points. The beam is :func:`hdl32e_beam`, or column ``ring_column`` when the points carry the
    sensor's ring index (raw nuScenes files: column 4)."""
    pts, s, rng = check_points(points), check_severity(severity), check_rng(rng)
    beam = hdl32e_beam(pts) if ring_column is None else pts[:, ring_column].astype(np.int64)
    dropped = rng.choice(np.array(BEAM_MISSING_CANDIDATES), size=BEAM_MISSING_BEAMS[s - 1], replace=False)
    keep = np.flatnonzero(~np.isin(beam, dropped))
    return _result(pts[keep], keep)


def point_dropping(points, severity: int, rng: np.random.Generator) -> CorruptedPoints:
    """Drop ``int(N * POINT_DROP_RATIOS[severity - 1])`` points drawn uniformly without replacement (the rest keep
    their order)."""
    pts, s, rng = check_points(points), check_severity(severity), check_rng(rng)
    n = len(pts)
    drop = rng.choice(n, size=int(n * POINT_DROP_RATIOS[s - 1]), replace=False)
    keep = np.setdiff1d(np.arange(n), drop)
    return _result(pts[keep], keep)


# --- fog (Hahner et al., ICCV 2021, as nuScenes-C runs it) -----------------------------------------------------
_C = 299792458.0  # speed of light, m/s
_TAU_H = 2e-8     # half-power pulse width, s
_R1, _R2 = 0.9, 1.0   # receiver FOV starts / fully covers the transmitted beam, m
_BETA0 = 1e-6 / math.pi  # differential reflectivity of the hard target (gamma / pi)


@functools.lru_cache(maxsize=8)
def fog_table(alpha: float, r_max: float = 200.0, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Hahner's integral lookup table for attenuation ``alpha``: for the hard-target range ``r0 = 0, 0.1, ..,
    r_max`` m, (fog_distance (m), fog_integral (s/m^2)), the range ``R <= r0`` where the soft-target (fog)
    response ``S(R) = int_0^{2 tau_h} sin^2(pi t / (2 tau_h)) exp(-2 alpha (R - ct/2)) xi(R - ct/2) / (R - ct/2)^2 dt``
    peaks and that peak; ``xi`` is the linear crossover between R1 = 0.9 m and R2 = 1.0 m. Both (2001,) arrays.

    ``S`` is evaluated on Hahner's grid ``R = linspace(0, r_max, n)`` with the trapezoid rule on ``n + 1`` times
    (he uses Simpson on ``n``); ``S(R)`` does not depend on ``r0`` for ``R <= r0``, so the table is a running max.
    """
    r = np.linspace(0.0, r_max, n)
    t = np.linspace(0.0, 2 * _TAU_H, n + 1)
    rr = r[:, None] - _C * t[None, :] / 2            # (n, n + 1) range of the scattering volume
    xi = np.clip((rr - _R1) / (_R2 - _R1), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_sq = np.where(rr > _R1, 1.0 / rr ** 2, 0.0)
    f = np.sin(np.pi * t / (2 * _TAU_H))[None, :] ** 2 * np.exp(-2 * alpha * rr) * xi * inv_sq
    s = np.trapz(f, t, axis=1)
    r0 = np.round(np.arange(int(round(r_max * 10)) + 1) * 0.1, 1)
    # for each r0: argmax over the R grid with R <= r0 (first maximum, as np.argmax on Hahner's zero-padded list)
    running = np.maximum.accumulate(s)
    arg = np.zeros(len(s), dtype=np.int64)
    best = 0
    for i in range(1, len(s)):          # first index reaching each running maximum
        if s[i] > s[best]:
            best = i
        arg[i] = best
    last = np.searchsorted(r, r0, side="right") - 1  # last R grid index <= r0
    integral = np.where(last >= 0, running[np.maximum(last, 0)], 0.0)
    distance = np.where(integral > 0, r[arg[np.maximum(last, 0)]], 0.0)
    return distance, integral


def fog(points, severity: int, rng: np.random.Generator) -> CorruptedPoints:
    """Hahner et al.'s fog simulation with nuScenes-C's parameters (alpha = ``FOG_ALPHAS[severity - 1]``,
    beta = :data:`FOG_BETA`, noise 1 m, response clipped at 255):

    * hard target: ``i_hard = round(exp(-2 alpha r0) i)``, ``r0 = |xyz|``;
    * soft target: ``i_fog = min(255, fog_integral(r0) * i * r0^2 * beta / beta0)`` (:func:`fog_table`);
    * where ``i_fog > i_hard`` the return is the fog's: xyz scaled to ``fog_distance(r0) * r0 / u`` with
      ``u ~ U(max(r0 - 1, r0 / 2), r0 + 1)``, intensity ``i_fog`` (``altered``); elsewhere intensity ``i_hard``.

    Extra columns are kept. No point is added or removed.
    """
    pts, s, rng = check_points(points), check_severity(severity), check_rng(rng)
    alpha = FOG_ALPHAS[s - 1]
    out = pts.copy()
    xyz = pts[:, :3].astype(np.float64)
    inten = pts[:, 3].astype(np.float64)
    r0 = np.linalg.norm(xyz, axis=1)
    hard = np.round(np.exp(-2 * alpha * r0) * inten)
    distance, integral = fog_table(alpha)
    key = np.minimum(np.round(r0 * 10).astype(np.int64), len(integral) - 1)
    soft = np.minimum(integral[key] * inten * r0 ** 2 * FOG_BETA / _BETA0, 255.0)
    fogged = soft > hard
    u = rng.uniform(np.maximum(r0 - 1.0, r0 / 2), r0 + 1.0)  # drawn for every point: the stream does not depend
    scale = np.where(fogged & (r0 > 0), distance[key] / np.where(r0 > 0, r0, 1.0) * r0 / u, 1.0)  # on the data
    out[:, :3] = (xyz * scale[:, None]).astype(np.float32)
    out[:, 3] = np.where(fogged, soft, hard).astype(np.float32)
    return _result(out, np.arange(len(pts)), fogged)


# --- snow (simplified from Hahner et al., CVPR 2022, with nuScenes-C's snowfall parameters) --------------------
_SNOW_D_MAX_MM = 20.0


def snow_rates(severity: int) -> tuple[float, float]:
    """(hit rate lambda (1/m), extinction alpha (1/m)) of the snowfall of ``severity``: flakes are spheres with
    diameter D ~ Exp(mean 10 / Lambda mm) truncated at 20 mm, ``Lambda = 25.5 rate^-0.48`` /cm (Gunn & Marshall
    1958, as the particle sampler), filling a volume fraction ``phi`` = the occupancy ratio. A beam axis meets
    ``lambda = n_V pi E[D^2] / 4 = 1.5 phi E[D^2] / E[D^3]`` flakes per metre; ``alpha = 2 lambda`` (extinction
    efficiency 2 of large particles)."""
    rate, phi = SNOW_PARAMS[check_severity(severity) - 1]
    mean_mm = 10.0 / (25.5 * rate ** -0.48)
    d = np.linspace(0.0, _SNOW_D_MAX_MM, 20001)
    w = np.exp(-d / mean_mm)
    m2, m3 = np.trapz(w * d ** 2, d), np.trapz(w * d ** 3, d)
    lam = 1.5 * phi * m2 / m3 * 1000.0  # D in mm -> 1/m
    return float(lam), float(2 * lam)


def snow(points, severity: int, rng: np.random.Generator, *, min_range: float = 1.0) -> CorruptedPoints:
    """Snowfall, simplified (the full simulator ray-traces sampled flakes through each beam's cross-section):

    * each beam meets its first flake at ``s ~ Exp(lambda)`` (:func:`snow_rates`); where ``min_range <= s < r``
      (``r = |xyz|``) the return is the flake's: xyz scaled by ``s / r``, intensity ``i * U(0, 1)`` (``altered``);
    * every other return is attenuated both ways: ``i' = round(exp(-2 alpha r) i)``.

    Extra columns are kept; no point is added or removed (a LiDAR gives one return per beam here).
    """
    pts, s, rng = check_points(points), check_severity(severity), check_rng(rng)
    lam, alpha = snow_rates(s)
    out = pts.copy()
    xyz = pts[:, :3].astype(np.float64)
    r = np.linalg.norm(xyz, axis=1)
    hit_at = rng.exponential(1.0 / lam, size=len(pts))
    frac = rng.uniform(0.0, 1.0, size=len(pts))
    hit = (hit_at >= min_range) & (hit_at < r)
    scale = np.where(hit, hit_at / np.where(r > 0, r, 1.0), 1.0)
    out[:, :3] = (xyz * scale[:, None]).astype(np.float32)
    inten = pts[:, 3].astype(np.float64)
    out[:, 3] = np.where(hit, inten * frac, np.round(np.exp(-2 * alpha * r) * inten)).astype(np.float32)
    return _result(out, np.arange(len(pts)), hit)


def crosstalk(points, severity: int, rng: np.random.Generator) -> CorruptedPoints:
    """Crosstalk between LiDARs (nuScenes-C / Robo3D ``lidar_crosstalk_noise``): ``int(N * CROSSTALK_RATIOS[s-1])``
    points drawn without replacement get ``N(0, 3^2)`` noise on x, y, z and intensity (intensity clipped at 0;
    ``altered``); the extra columns (time lag, ring) are not perturbed."""
    pts, s, rng = check_points(points), check_severity(severity), check_rng(rng)
    n = len(pts)
    idx = rng.choice(n, size=int(n * CROSSTALK_RATIOS[s - 1]), replace=False)
    out = pts.copy()
    noise = rng.normal(0.0, CROSSTALK_STD, size=(len(idx), 4))
    out[idx, :4] = (pts[idx, :4].astype(np.float64) + noise).astype(np.float32)
    out[idx, 3] = np.maximum(out[idx, 3], 0.0)
    altered = np.zeros(n, dtype=bool)
    altered[idx] = True
    return _result(out, np.arange(n), altered)


def motion_distortion(points, severity: int, rng: np.random.Generator) -> CorruptedPoints:
    """Motion distortion (Robo3D's motion blur with a rolling-shutter offset), ``sigma = MOTION_SIGMAS[s - 1]``:

    ``xyz' = xyz + tau * delta + j`` with ``delta ~ N(0, sigma^2 I_3)`` once per scan, ``tau in [0, 1)`` the share of
    the sweep already swept at the point's azimuth (``((atan2(y, x) - phi0) mod 2 pi) / 2 pi``, ``phi0 ~ U(0, 2 pi)``
    the unknown start azimuth), and per-point jitter ``j_x, j_y ~ N(0, (0.1 sigma)^2)``, ``j_z ~ N(0, (0.05
    sigma)^2)``, each clipped to +-3 sigma (Robo3D). Labels stay valid (not ``altered``)."""
    pts, s, rng = check_points(points), check_severity(severity), check_rng(rng)
    sigma = MOTION_SIGMAS[s - 1]
    n = len(pts)
    delta = rng.normal(0.0, sigma, size=3)
    phi0 = rng.uniform(0.0, 2 * np.pi)
    jitter = np.stack([rng.normal(0.0, 0.1 * sigma, n), rng.normal(0.0, 0.1 * sigma, n),
                       rng.normal(0.0, 0.05 * sigma, n)], axis=1)
    jitter = np.clip(jitter, -3 * sigma, 3 * sigma)
    tau = np.mod(np.arctan2(pts[:, 1].astype(np.float64), pts[:, 0]) - phi0, 2 * np.pi) / (2 * np.pi)
    out = pts.copy()
    out[:, :3] = (pts[:, :3].astype(np.float64) + tau[:, None] * delta[None, :] + jitter).astype(np.float32)
    return _result(out, np.arange(n))
