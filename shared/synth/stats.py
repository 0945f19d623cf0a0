"""Sweep statistics compared between real nuScenes scans and synthetic ones (tests, docs and figures)."""
from __future__ import annotations

import numpy as np

#: Ground height in the LiDAR frame (m): the sensor is 1.84 m above the ground (fixtures README: -1.77, -1.81).
GROUND_Z = -1.8


def sweep_stats(points: np.ndarray) -> dict[str, float]:
    """Statistics of one nuScenes-format sweep ``points`` (N, 5) float32.

    * ``points``: all points (every ray gives one in real nuScenes files);
    * ``no_return``: placeholder points of rays without a return (x = 0, -0.5 < y <= 0, |z| < 0.06);
    * ``self``: other points within 1.5 m (xy) of the sensor and 0-1 m below it (the ego vehicle's roof);
    * ``ground_frac``: fraction of all points within 0.25 m of z = -1.8 m;
    * ``range_q25/50/75/90``: quantiles of the xy range of the remaining (real) returns;
    * ``intensity_median``, ``intensity_q90``: over all points.
    """
    p = np.asarray(points, dtype=np.float64)
    marker = (np.abs(p[:, 0]) < 0.05) & (p[:, 1] <= 0.01) & (p[:, 1] > -0.5) & (np.abs(p[:, 2]) < 0.06)
    rxy_all = np.hypot(p[:, 0], p[:, 1])
    selfr = (rxy_all < 1.5) & (p[:, 2] > -1.0) & (p[:, 2] < 0.0) & ~marker
    ret = ~marker & ~selfr
    rxy = np.hypot(p[ret, 0], p[ret, 1])
    q = np.quantile(rxy, [0.25, 0.5, 0.75, 0.9])
    return {
        "points": float(len(p)),
        "no_return": float(marker.sum()),
        "self": float(selfr.sum()),
        "ground_frac": float((np.abs(p[:, 2] - GROUND_Z) < 0.25).mean()),
        "range_q25": float(q[0]),
        "range_q50": float(q[1]),
        "range_q75": float(q[2]),
        "range_q90": float(q[3]),
        "intensity_median": float(np.median(p[:, 3])),
        "intensity_q90": float(np.quantile(p[:, 3], 0.9)),
    }


#: Bands a sweep must fall in, derived from the two real fixture scans (values n008 / n015 in the comment)
#: widened to allow for other streets: the synthetic sweeps are held to them.
BANDS: dict[str, tuple[float, float]] = {
    "points": (34_000, 35_500),  # 34,752 / 34,688 (32 rings x ~1,085 columns)
    "no_return": (1_500, 13_000),  # 10,272 / 4,393 (open sky)
    "self": (3_000, 5_500),  # 4,178 / 4,133
    "ground_frac": (0.20, 0.45),  # 0.292 / 0.373
    "range_q25": (3.0, 8.0),  # 4.7 / 5.5
    "range_q50": (5.0, 14.0),  # 6.8 / 9.2
    "range_q75": (9.0, 28.0),  # 12.0 / 18.6
    "range_q90": (18.0, 50.0),  # 26.3 / 35.3
    "intensity_median": (5.0, 20.0),  # 9 / 12
    "intensity_q90": (20.0, 80.0),  # 30 / 48
}


def outside_bands(stats: dict[str, float]) -> dict[str, float]:
    """The statistics that fall outside :data:`BANDS`."""
    return {k: v for k, v in stats.items() if k in BANDS and not BANDS[k][0] <= v <= BANDS[k][1]}
