"""The per-sweep pipeline: ground removal -> DBSCAN -> semantic pooling, camera projection, two-view augmentation.

:func:`process_sweep` composes the stages on one sweep's points and returns a :class:`SweepResult` with every
per-point output in the input's point order, the per-stage timings and summary statistics. The configuration is
one frozen :class:`SweepConfig` holding one frozen config per stage; :meth:`SweepConfig.from_overrides` applies
``section.field=value`` overrides (the CLI's ``--set``) and :meth:`SweepConfig.to_dict` gives the resolved
configuration as plain JSON-able values (to write next to the outputs; :meth:`SweepConfig.from_dict` reads it
back).

Bad input never crashes: points with a non-finite x, y or z, or a coordinate beyond
``ValidateConfig.max_abs_coord`` (corrupt values that would blow up the grid kernels), are masked out before
the stages (never ground, region -1, never projected) and counted; an empty sweep or one with fewer than 3 valid
points gets the defined empty result (no ground, no regions) without running the kernels.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import time
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from preprocess.augment import AugmentConfig, sample_views
from preprocess.cluster import ClusterConfig, cluster_nonground, reattach_low_points
from preprocess.ground import GroundConfig, GroundResult, fit_ground
from preprocess.pooling import REASONS, PoolingConfig, PoolingResult, pool_regions
from preprocess.project import Projection, ProjectConfig, project_points
from shared.backend import resolve_backend
from shared.errors import ConfigError, InputError
from shared.records import CameraCalib

#: Names of the per-stage timings in :attr:`SweepResult.timings_ms`, in pipeline order.
STAGES: tuple[str, ...] = ("validate", "ground", "cluster", "pooling", "project", "augment")


@dataclass(frozen=True)
class ValidateConfig:
    """Input checks of :func:`process_sweep`.

    max_abs_coord: points with |x|, |y| or |z| above this (metres) are masked out like non-finite ones [ours;
        the sensors reach ~120 m, so 10 km only catches corrupt values].
    """

    max_abs_coord: float = 1e4

    def __post_init__(self):
        v = self.max_abs_coord
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not v > 0:
            raise ConfigError("validate.max_abs_coord", v, "must be a number > 0")


@dataclass(frozen=True)
class SweepConfig:
    """Configuration of :func:`process_sweep`: one frozen config per stage (see each class for its fields)."""

    validate: ValidateConfig = field(default_factory=ValidateConfig)
    ground: GroundConfig = field(default_factory=GroundConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    project: ProjectConfig = field(default_factory=ProjectConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            cls = _SECTION_TYPES[f.name]
            if not isinstance(v, cls):
                raise ConfigError(f.name, v, f"expected a {cls.__name__}")

    @classmethod
    def sections(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | Iterable[str] = (),
                       base: SweepConfig | None = None) -> SweepConfig:
        """``base`` (default: all defaults) with ``overrides`` applied.

        ``overrides`` maps ``"section.field"`` to a value, or is a sequence of ``"section.field=value"``
        strings (the CLI's ``--set``). String values are parsed as Python/JSON literals (``0.5``, ``true``,
        ``[0.9, 1.1]``, ``0.9,1.1``) and otherwise kept as text, then converted to the field's type.
        Raises :class:`ConfigError` naming the key for an unknown section or field, a value of the wrong type,
        or a value the stage's config rejects.
        """
        if not isinstance(overrides, Mapping):
            overrides = parse_assignments(overrides)
        base = base or cls()
        by_section: dict[str, dict[str, Any]] = {}
        for key, raw in overrides.items():
            section, _, name = str(key).partition(".")
            if section not in _SECTION_TYPES or not name:
                raise ConfigError(str(key), raw, f"unknown key; expected section.field with section one of "
                                                 f"{', '.join(cls.sections())}")
            sub = getattr(base, section)
            names = [f.name for f in dataclasses.fields(sub)]
            if name not in names:
                raise ConfigError(str(key), raw, f"unknown field of {section}; known: {', '.join(names)}")
            by_section.setdefault(section, {})[name] = _coerce(str(key), raw, _type_guide(sub, name))
        new = {}
        for section, changes in by_section.items():
            try:
                new[section] = dataclasses.replace(getattr(base, section), **changes)
            except ConfigError as exc:
                field_name = exc.field if exc.field.startswith(section + ".") else f"{section}.{exc.field}"
                raise ConfigError(field_name, exc.value, _why(exc)) from None
            except (TypeError, ValueError) as exc:  # a stage config that does not validate its own types
                keys = ", ".join(f"{section}.{k}" for k in changes)
                raise ConfigError(keys, list(changes.values()), f"rejected ({exc})") from None
        return dataclasses.replace(base, **new)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved configuration as ``{section: {field: value}}`` of JSON-able values (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_jsonable))

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> SweepConfig:
        """Inverse of :meth:`to_dict` (missing fields keep their defaults)."""
        flat = {f"{s}.{k}": v for s, fields in d.items() for k, v in dict(fields).items()}
        for key in flat:
            if "." not in key or key.split(".")[0] not in _SECTION_TYPES:
                raise ConfigError(key, flat[key], "unknown section")
        return cls.from_overrides(flat)


_SECTION_TYPES = {"validate": ValidateConfig, "ground": GroundConfig, "cluster": ClusterConfig,
                  "pooling": PoolingConfig, "project": ProjectConfig, "augment": AugmentConfig}


def _type_guide(sub, name: str) -> Any:
    """A value whose type says what ``name`` of the config ``sub`` takes: its annotation when it is a plain
    ``bool``/``int``/``float``/``str`` (so a float field with an integer default still takes 0.5), else the
    current value."""
    try:
        hint = typing.get_type_hints(type(sub)).get(name)
    except Exception:  # unresolvable annotations: fall back on the value
        hint = None
    if hint in (bool, int, float, str):
        return hint()
    return getattr(sub, name)


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _why(exc: ConfigError) -> str:
    prefix = f"config value {exc.field}={exc.value!r}: "
    s = str(exc)
    return s[len(prefix):] if s.startswith(prefix) else s


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["a.b=1", ...]`` -> ``{"a.b": "1"}``; an item without ``=`` raises :class:`ConfigError`."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            raise ConfigError("--set", item, "expected section.field=value, e.g. cluster.eps=0.5")
        out[key.strip()] = value.strip()
    return out


def _parse_literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return raw


def _coerce(key: str, raw: Any, current: Any) -> Any:
    """Convert an override to the type of the field's current value; ConfigError naming ``key`` if it can't."""
    value = _parse_literal(raw) if isinstance(raw, str) else raw
    if isinstance(current, str):
        return raw if isinstance(raw, str) else str(value)
    if current is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise ConfigError(key, raw, "expected a boolean (true/false)")
    if isinstance(current, (int, np.integer)):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, raw, "expected an integer")
    if isinstance(current, (float, np.floating)):
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, raw, "expected a number")
    if isinstance(current, tuple):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, raw, "expected a list of values, e.g. [0.9, 1.1]")
        if current and all(isinstance(c, float) for c in current):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(key, raw, "expected a list of numbers")
            return tuple(float(v) for v in value)
        return tuple(value)
    return value


@dataclass(frozen=True)
class SweepStats:
    """Summary statistics of one processed sweep.

    points: points in the input; nonfinite_points: of them with a non-finite x, y or z; out_of_range_points:
    finite but beyond ``validate.max_abs_coord`` (both masked out). ground_fraction: ground / valid points.
    clusters: DBSCAN clusters before the filters; regions_kept: regions after the filters. noise_fraction:
    DBSCAN noise / non-ground valid points. region_points:
    points with a region id. dropped: clusters dropped by the pooling filters, per reason
    (:data:`preprocess.pooling.REASONS`). projected_pairs / visible_points: (point, camera) pairs and points seen by
    at least one camera (0 without cameras).
    """

    points: int
    nonfinite_points: int
    out_of_range_points: int
    ground_points: int
    ground_fraction: float
    clusters: int
    regions_kept: int
    region_points: int
    noise_points: int
    noise_fraction: float
    projected_pairs: int = 0
    visible_points: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Per-point outputs of :func:`process_sweep` for N input points, in the input's order.

    ground: (N,) bool. region: (N,) int16, -1 = semantic-less (ground, noise, filtered, invalid).
    labels: (N,) int32 DBSCAN labels, -1 = noise / not clustered. valid: (N,) bool, finite and in range.
    projection: visible (point, camera) pairs (see :mod:`preprocess.project`), None without cameras.
    aug_params: (num_views, 7) float32 augmentation record (see :mod:`preprocess.augment`).
    timings_ms: per stage (:data:`STAGES`) and ``total``, milliseconds. ground_result / pooling: the raw stage
    outputs for the valid points (None when the kernels did not run).
    """

    ground: np.ndarray
    region: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    projection: Projection | None
    aug_params: np.ndarray
    timings_ms: dict[str, float]
    stats: SweepStats
    ground_result: GroundResult | None = None
    pooling: PoolingResult | None = None


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise InputError(f"points must be an (N, C >= 3) array, got shape {points.shape}")
    if not np.issubdtype(points.dtype, np.number):
        raise InputError(f"points must be numeric, got dtype {points.dtype}")
    return points


def process_sweep(
    points: np.ndarray,
    cameras: Sequence[CameraCalib] | None = None,
    cfg: SweepConfig = SweepConfig(),
    backend: str = "cpu",
    seed: int = 0,
    token: str | int = 0,
) -> SweepResult:
    """Run every per-sweep stage on ``points`` (N, C >= 3) (x, y, z in the LiDAR frame; extra columns ignored).

    cameras: the sweep's cameras (``lidar2cam`` with the full chain), or None to skip the projection.
    backend: ``auto|cpu|gpu`` for ground removal and DBSCAN (resolved once here).
    seed, token: the global seed and the sweep's token or index; they seed the augmentation parameters.
    Returns a :class:`SweepResult`; invalid points are masked out (see the module docstring).
    """
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    def tick(stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        timings[stage] = (t1 - t0) * 1e3
        return t1

    t = time.perf_counter()
    points = _check_points(points)
    backend = resolve_backend(backend)
    n = points.shape[0]
    limit = float(cfg.validate.max_abs_coord)
    with np.errstate(over="ignore", invalid="ignore"):
        xyz = np.ascontiguousarray(points[:, :3], dtype=np.float32)  # float64 beyond float32 -> inf: masked
        all_valid = bool(np.abs(xyz).max(initial=0.0) <= limit)  # NaN compares False
    n_nonfinite = 0
    if all_valid:
        valid = np.ones(n, dtype=bool)
        idx: slice | np.ndarray = slice(None)
        proj_in = xyz
    else:
        finite = np.isfinite(xyz).all(axis=1)
        n_nonfinite = int(n - finite.sum())
        with np.errstate(invalid="ignore"):
            valid = finite & (np.abs(xyz) <= limit).all(axis=1)
        idx = np.flatnonzero(valid)
        proj_in = np.where(valid[:, None], xyz, np.float32(np.nan))
        xyz = xyz[idx]
    m = xyz.shape[0]
    ground = np.zeros(n, dtype=bool)
    region = np.full(n, -1, dtype=np.int16)
    labels = np.full(n, -1, dtype=np.int32)
    t = tick("validate", t)

    ground_result = pooled = None
    clusters = regions_kept = noise = 0
    nonground = 0
    if m >= 3:
        ground_result = fit_ground(xyz, cfg.ground, backend=backend)
        g = np.asarray(ground_result.mask, dtype=bool)
        ground[idx] = g
        t = tick("ground", t)

        nonground = int(m - g.sum())
        lab = cluster_nonground(xyz, g, cfg.cluster, backend=backend)  # (m,) int32, ground -1
        if cfg.cluster.reattach_radius > 0:  # ground points under a cluster's lowest points join it
            lab, g = reattach_low_points(xyz, g, lab, cfg.cluster)
            ground_result = dataclasses.replace(ground_result, mask=g)
            ground[idx] = g
        labels[idx] = lab
        clusters = int(lab.max()) + 1 if lab.size else 0
        noise = int(((lab < 0) & ~g).sum())
        t = tick("cluster", t)

        pooled = pool_regions(xyz, ground_result, lab, cfg.pooling)
        reg = np.asarray(pooled.region)
        region[idx] = reg
        regions_kept = int(np.unique(reg[reg >= 0]).size)
        t = tick("pooling", t)
    else:
        for stage in ("ground", "cluster", "pooling"):
            timings[stage] = 0.0

    projection = None
    if cameras is not None:
        projection = project_points(proj_in, cameras, cfg.project)
    t = tick("project", t)

    aug = sample_views(cfg.augment, seed, token)
    tick("augment", t)
    timings["total"] = (time.perf_counter() - t_all) * 1e3

    n_ground = int(ground.sum())
    stats = SweepStats(
        points=int(n),
        nonfinite_points=n_nonfinite,
        out_of_range_points=int(n - m - n_nonfinite),
        ground_points=n_ground,
        ground_fraction=float(n_ground / m) if m else 0.0,
        clusters=clusters,
        regions_kept=regions_kept,
        region_points=int((region >= 0).sum()),
        noise_points=noise,
        noise_fraction=float(noise / nonground) if nonground else 0.0,
        projected_pairs=len(projection) if projection is not None else 0,
        visible_points=int(projection.visible().sum()) if projection is not None else 0,
        dropped=dataclasses.asdict(pooled.dropped) if pooled is not None else {r: 0 for r in REASONS},
    )
    return SweepResult(ground=ground, region=region, labels=labels, valid=valid, projection=projection,
                       aug_params=aug, timings_ms=timings, stats=stats, ground_result=ground_result,
                       pooling=pooled)


def warm_up(cfg: SweepConfig = SweepConfig(), backend: str = "cpu",
            cameras: Sequence[CameraCalib] | None = None, columns: int = 4) -> float:
    """Run :func:`process_sweep` once on a small synthetic sweep (a plane and a box, ``columns`` float32
    columns) so that the Numba kernels are loaded from their cache (or compiled, the first time) before a
    timed run. Returns the wall time in milliseconds."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    ground = np.c_[rng.uniform(-20, 20, (1500, 2)), rng.normal(-1.8, 0.02, 1500)]
    box = np.c_[rng.uniform(5, 8, (300, 2)), rng.uniform(-1.4, -0.3, 300)]
    pts = np.zeros((1800, max(3, columns)), dtype=np.float32)
    pts[:, :3] = np.vstack([ground, box])
    process_sweep(pts, cameras, cfg, backend=backend)
    return (time.perf_counter() - t0) * 1e3
