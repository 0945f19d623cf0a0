"""Two-view augmentation for point-region contrast (METHOD.md section 2).

Each view of a sweep is a similarity transform of the LiDAR points about the sensor origin::

    p' = s * Rz(angle) @ F @ p + t,     F = diag(-1 if flip_x else 1, -1 if flip_y else 1, 1)

(flip_x negates x, flip_y negates y; both before the rotation). The same points appear in every view, so
point i of view 1 corresponds to point i of view 2. Only x, y, z change; other columns are kept.

The parameters of a view are stored as a compact float32 record of :data:`PARAM_FIELDS`::

    [angle (radians), scale, flip_x (0/1), flip_y (0/1), tx, ty, tz (metres)]

one row per view, ``(num_views, 7)`` float32 (28 bytes per view), so a store can hold them; everything here
(:func:`apply`, :func:`as_matrix`, :func:`inverse_matrix`) reads the float32 record, so a stored record
reproduces the views exactly. The parameters of a sweep are drawn from a generator seeded by the global seed
and a stable hash (BLAKE2b) of the sweep's token or index (:func:`sweep_rng`), never Python's ``hash()``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

# The record and its pure functions live in shared/augment_params.py (train/ needs them without preprocess/);
# re-exported here.
from shared.augment_params import (  # noqa: F401
    NUM_PARAMS,
    PARAM_FIELDS,
    _check_params,
    _linear,
    _transform,
    apply,
    apply_inverse,
    as_matrix,
    inverse_matrix,
    records_from_draws,
)
from shared.errors import ConfigError


def _pair(field: str, value, lo_min: float = -np.inf) -> None:
    if len(value) != 2 or not all(np.isfinite(v) for v in value):
        raise ConfigError(field, value, "must be two finite numbers (low, high)")
    if value[0] > value[1]:
        raise ConfigError(field, value, "low must be <= high")
    if value[0] < lo_min:
        raise ConfigError(field, value, f"low must be >= {lo_min}")


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the two-view augmentation.

    rotation_deg: range of the rotation about z, uniform, degrees [paper: (-90, 90)].
    scale: range of the isotropic scale, uniform [paper: (0.9, 1.1)].
    flip_x_prob, flip_y_prob: probability of negating x / y [ours: 0, off; the paper names rotation and scaling].
    translation_std: standard deviation of a normal translation per axis (x, y, z), metres [ours: 0, off].
    num_views: views per sweep [paper: 2].
    """

    rotation_deg: tuple[float, float] = (-90.0, 90.0)
    scale: tuple[float, float] = (0.9, 1.1)
    flip_x_prob: float = 0.0
    flip_y_prob: float = 0.0
    translation_std: tuple[float, float, float] = (0.0, 0.0, 0.0)
    num_views: int = 2

    def __post_init__(self):
        _pair("augment.rotation_deg", self.rotation_deg)
        if self.rotation_deg[1] - self.rotation_deg[0] > 360.0:
            raise ConfigError("augment.rotation_deg", self.rotation_deg, "range wider than 360 degrees")
        _pair("augment.scale", self.scale)
        if self.scale[0] <= 0:
            raise ConfigError("augment.scale", self.scale, "scales must be > 0")
        for name in ("flip_x_prob", "flip_y_prob"):
            p = getattr(self, name)
            if not (0.0 <= p <= 1.0):
                raise ConfigError(f"augment.{name}", p, "must be a probability in [0, 1]")
        t = self.translation_std
        if len(t) != 3 or not all(np.isfinite(v) and v >= 0 for v in t):
            raise ConfigError("augment.translation_std", t, "must be three finite numbers >= 0 (x, y, z)")
        if isinstance(self.num_views, bool) or int(self.num_views) != self.num_views or self.num_views < 1:
            raise ConfigError("augment.num_views", self.num_views, "must be an integer >= 1")

    @property
    def rotation_rad(self) -> tuple[float, float]:
        """``rotation_deg`` in radians."""
        return float(np.deg2rad(self.rotation_deg[0])), float(np.deg2rad(self.rotation_deg[1]))


def sweep_rng(seed: int, token: str | int) -> np.random.Generator:
    """A generator seeded by ``seed`` (int >= 0) and the sweep's ``token`` (str, or an int index: ``str(index)``).

    The token enters through a BLAKE2b digest, so the stream is the same in every process and Python version.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", seed, "must be an integer >= 0")
    digest = hashlib.blake2b(str(token).encode("utf-8"), digest_size=16).digest()
    words = [int(w) for w in np.frombuffer(digest, dtype="<u4")]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def sample_views(cfg: AugmentConfig, seed: int, token: str | int) -> np.ndarray:
    """Parameters of ``cfg.num_views`` views of one sweep: (num_views, 7) float32 (see :data:`PARAM_FIELDS`).

    Reproducible from (seed, token). The same random numbers are drawn whatever the config values, so
    e.g. turning flips on does not change the sampled angles.
    """
    rng = sweep_rng(seed, token)
    v = int(cfg.num_views)
    u = rng.random((v, 4))
    normal = rng.standard_normal((v, 3))
    return records_from_draws(u, normal, cfg.rotation_rad, cfg.scale, cfg.flip_x_prob, cfg.flip_y_prob,
                              cfg.translation_std)
