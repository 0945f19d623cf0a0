"""The on-disk store: layout, encoding of processed sweeps, atomic shard commits, derived tables.

Layout (see docs/store.md)::

    STORE/versions/<id>/version.json          spec (hashed into <id>), resolved config, lineage, scenes
    STORE/versions/<id>/shards/<scene>/       one shard per scene, complete or absent:
        zarr.json, <array>/...                  a Zarr v3 group of flat arrays + int64 offsets
        sweeps.parquet                          per-sweep statistics and stage timings
        errors.parquet                          failed sweeps and warnings (token, file, stage, reason, level)
        manifest.json                           counts + size and sha256 of every file above, inputs_sha256
                                                (written last)
    STORE/versions/<id>/shards/.tmp-<scene>-<host>-<pid>-<uuid>/   a shard being written (never read)
    STORE/versions/<id>/{sweeps,errors,scenes}.parquet            derived from the shards by finalize()
    STORE/versions/<id>/tables.json                               their bytes, sha256 and rows (finalize())
    STORE/versions/<id>/runs/<UTC time>Z-<host>-<pid>-<uuid>.json  one record per run (write_run_record())

Per-point encoding (N points of a sweep, P (point, camera) pairs, R regions; bytes before compression)::

    xyz        int16   (N, 3)  x, y, z in centimetres (XYZ_SCALE = 0.01 m): |error| <= 5 mm; clipped to
                               +-327.67 m (flag bit 2); 0 for a non-finite point (flag bit 1 unset)   6 B
    flags      uint8   (N,)    bit 0 ground, bit 1 finite, bit 2 clipped                             1 B
    region     int16   (N,)    region id, -1 = semantic-less                                         2 B
    features   float16 (N, F)  the point file's other columns (nuScenes: intensity, ring: exact,
                               integers < 2048)                                                      2F B
    proj_point int32   (P,)    point index within its sweep } pairs sorted by point then camera,
    proj_cam   uint8   (P,)    index into attrs["channels"] } offsets proj_offsets (S+1,)
    proj_uv    uint16  (P, 2)  pixel u, v in 1/8 px (UV_SCALE): |error| <= 1/16 px
    proj_depth uint16  (P,)    camera depth in centimetres (DEPTH_SCALE): |error| <= 5 mm           11 B/pair

Per sweep (S sweeps): ``offsets`` int64 (S+1,) into the point arrays, ``proj_offsets``, ``region_offsets``,
``timestamp`` int64 (S,), ``aug_params`` float32 (S, V, 7), ``lidar2ego``/``ego2global`` float64 (S, 4, 4),
``cam_intrinsic`` float64 (S, C, 3, 3), ``cam_lidar2cam`` float64 (S, C, 4, 4) (NaN for a camera the sweep
lacks), ``cam_size`` int32 (S, C, 2). Per region: ``region_id`` int16, ``region_points`` int32,
``region_centroid``/``region_min``/``region_max`` float32 (R, 3) (from the unquantised points).
Group attributes: format version, scene, sweep tokens, channels, scales, feature count.

Arrays are chunked in pieces of about :data:`CHUNK_BYTES` (uncompressed) along the first axis, compressed
with Blosc(lz4, byte shuffle) (arrays under :data:`COMPRESS_MIN_BYTES` are stored raw), and every array whose
data spans several chunks is written as one Zarr shard (the sharding codec), so a scene's array is one file that
a reader still slices chunk by chunk. The arrays of a shard are written concurrently in one call into zarr's
event loop.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from data_catalog.version import DOC_SHA256, FORMAT_VERSION, canonical_json, doc_checksum, sha256_file
from shared.errors import InputError
from shared.records import CAMERAS, CameraCalib

#: Metres per int16 unit of ``xyz``; the largest |coordinate| stored is 32767 * XYZ_SCALE.
XYZ_SCALE = 0.01
XYZ_LIMIT = 32767 * XYZ_SCALE
#: Pixels per uint16 unit of ``proj_uv`` (images up to 8191 px).
UV_SCALE = 0.125
#: Metres per uint16 unit of ``proj_depth``.
DEPTH_SCALE = 0.01
#: Target uncompressed chunk size.
CHUNK_BYTES = 2 << 20
#: Arrays smaller than this (uncompressed) are stored without compression.
COMPRESS_MIN_BYTES = 64 << 10

FLAG_GROUND = np.uint8(1)
FLAG_FINITE = np.uint8(2)
FLAG_CLIPPED = np.uint8(4)

#: Stage timing columns of the sweeps table (milliseconds): ``load`` is reading the point file, the others
#: are ``SweepResult.timings_ms``.
TIMING_STAGES: tuple[str, ...] = ("load", "validate", "ground", "cluster", "pooling", "project", "augment",
                                  "total")

MANIFEST = "manifest.json"
SWEEPS_TABLE = "sweeps.parquet"
ERRORS_TABLE = "errors.parquet"
SCENES_TABLE = "scenes.parquet"
#: Files of a shard left out of its content hash: they hold timings, which differ from run to run.
VOLATILE_FILES: tuple[str, ...] = (SWEEPS_TABLE,)


def _pa():
    import pyarrow as pa

    return pa


def sweeps_schema():
    pa = _pa()
    cols = [
        ("token", pa.string()), ("scene", pa.string()), ("index", pa.int32()), ("timestamp", pa.int64()),
        ("is_key_frame", pa.bool_()), ("file", pa.string()), ("backend", pa.string()),
        ("points", pa.int64()), ("nonfinite_points", pa.int64()), ("clipped_points", pa.int64()),
        ("ground_points", pa.int64()), ("ground_fraction", pa.float64()), ("clusters", pa.int64()),
        ("regions_kept", pa.int64()), ("region_points", pa.int64()), ("noise_points", pa.int64()),
        ("noise_fraction", pa.float64()), ("projected_pairs", pa.int64()), ("visible_points", pa.int64()),
        ("region_size_min", pa.float64()), ("region_size_p10", pa.float64()), ("region_size_p50", pa.float64()),
        ("region_size_p90", pa.float64()), ("region_size_max", pa.float64()),
    ]
    cols += [(f"t_{s}_ms", pa.float64()) for s in TIMING_STAGES]
    return pa.schema(cols)


#: Levels of a row of the errors table: ``error``, the sweep is not in the shard (its point file is missing or
#: unreadable, its calibration is broken, ...); ``warning``, the sweep is in the shard without something
#: (a camera image missing: that camera is marked absent for the sweep, NaN calibration and no projections).
LEVELS: tuple[str, ...] = ("error", "warning")


def errors_schema():
    """Columns of ``errors.parquet``. ``level`` (:data:`LEVELS`) came with format version 2; an older table
    without it reads as all ``error`` (:func:`read_shard_tables`), which is what its rows were."""
    pa = _pa()
    return pa.schema([("token", pa.string()), ("scene", pa.string()), ("file", pa.string()),
                      ("stage", pa.string()), ("reason", pa.string()), ("level", pa.string())])


# ----------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _quantise_point(xyz, i, is_ground, inv_scale, q, flags):
    """Point i of xyz (N, >= 3): q[i] (int16 x, y, z; 0 where not finite) and flags[i] (ground if is_ground,
    finite, clipped). Returns 1 if it was clipped, else 0."""
    x = np.float64(xyz[i, 0])
    y = np.float64(xyz[i, 1])
    z = np.float64(xyz[i, 2])
    f = np.uint8(0)
    if is_ground:
        f |= FLAG_GROUND
    clipped = 0
    if np.isfinite(x) and np.isfinite(y) and np.isfinite(z):
        f |= FLAG_FINITE
        clip = False
        for k in range(3):
            v = np.rint(np.float64(xyz[i, k]) * inv_scale)
            if v > 32767.0:
                v = 32767.0
                clip = True
            elif v < -32767.0:
                v = -32767.0
                clip = True
            q[i, k] = np.int16(v)
        if clip:
            f |= FLAG_CLIPPED
            clipped = 1
    else:
        q[i, 0] = 0
        q[i, 1] = 0
        q[i, 2] = 0
    flags[i] = f
    return clipped


@njit(cache=True)
def _quantise_kernel(xyz, ground, use_ground, inv_scale, q, flags):
    """One pass over xyz (N, >= 3): q (N, 3) int16 (0 where not finite), flags (N,) uint8 (ground if
    use_ground, finite, clipped). Returns the number of clipped points."""
    n_clipped = 0
    for i in range(xyz.shape[0]):
        n_clipped += _quantise_point(xyz, i, use_ground and ground[i], inv_scale, q, flags)
    return n_clipped


def _check_xyz(xyz: np.ndarray) -> np.ndarray:
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise InputError(f"points must be an (N, >= 3) array, got shape {xyz.shape}")
    if xyz.dtype not in (np.float32, np.float64):
        xyz = xyz.astype(np.float64)
    return xyz


def quantise_xyz(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) float -> (int16 (N, 3) in XYZ_SCALE units, finite (N,) bool, clipped (N,) bool).

    Non-finite points are stored as 0; finite coordinates beyond +-XYZ_LIMIT are clipped.
    """
    xyz = _check_xyz(xyz)
    q = np.empty((xyz.shape[0], 3), np.int16)
    flags = np.empty(xyz.shape[0], np.uint8)
    _quantise_kernel(xyz, np.zeros(0, np.bool_), False, 1.0 / XYZ_SCALE, q, flags)
    return q, (flags & FLAG_FINITE) != 0, (flags & FLAG_CLIPPED) != 0


def dequantise_xyz(q: np.ndarray) -> np.ndarray:
    """int16 (N, 3) -> float32 (N, 3) metres."""
    return q.astype(np.float32) * np.float32(XYZ_SCALE)


@njit(cache=True)
def _uint16_kernel(values, scale, clamp, out):
    """out (same shape, uint16) = round-half-even(min(values, clamp) / scale) (float64 division), as
    ``np.round``; returns False (out partly written) as soon as a value falls outside [0, 65535]."""
    v = values.reshape(-1)
    o = out.reshape(-1)
    for i in range(v.shape[0]):
        q = np.rint(np.float64(min(v[i], clamp)) / scale)
        if not (q >= 0.0 and q <= 65535.0):
            return False
        o[i] = np.uint16(q)
    return True


def _to_uint16(values: np.ndarray, scale: float, what: str, clamp: float = np.inf,
               out: np.ndarray | None = None) -> np.ndarray:
    """Quantise ``values`` (any shape, float) to uint16 units of ``scale`` after clamping them to ``clamp``
    (compared in the values' own dtype) into ``out`` (new if None; contiguous uint16 of the same shape);
    InputError naming ``what`` if one falls outside the uint16 range."""
    values = np.ascontiguousarray(values)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    out = np.empty(values.shape, np.uint16) if out is None else out
    if not _uint16_kernel(values, float(scale), values.dtype.type(clamp), out):
        raise InputError(f"{what} out of the store's range [0, {65535 * scale}] (scale {scale})")
    return out


@njit(cache=True, inline="always")
def _half_bits(f):
    """IEEE binary16 bits (uint16) of the binary32 bits ``f`` (uint32), rounding to nearest even: the
    algorithm of numpy's ``npy_floatbits_to_halfbits`` (tested bit for bit against ``astype(np.float16)``)."""
    h_sgn = np.uint32((f & np.uint32(0x80000000)) >> np.uint32(16))
    f_exp = f & np.uint32(0x7F800000)
    if f_exp >= np.uint32(0x47800000):  # overflow, inf or NaN
        if f_exp == np.uint32(0x7F800000):
            f_sig = f & np.uint32(0x007FFFFF)
            if f_sig != 0:  # NaN: keep the top of the payload, stay a NaN
                ret = np.uint32(0x7C00) + (f_sig >> np.uint32(13))
                if ret == np.uint32(0x7C00):
                    ret += np.uint32(1)
                return np.uint16(h_sgn + ret)
        return np.uint16(h_sgn + np.uint32(0x7C00))  # inf, or overflow to inf
    if f_exp <= np.uint32(0x38000000):  # subnormal half or signed zero
        if f_exp < np.uint32(0x33000000):
            return np.uint16(h_sgn)
        e = f_exp >> np.uint32(23)
        f_sig = np.uint32(0x00800000) + (f & np.uint32(0x007FFFFF))
        f_sig >>= np.uint32(113) - e
        if (f_sig & np.uint32(0x00003FFF)) != np.uint32(0x00001000) or (f & np.uint32(0x000007FF)) != 0:
            f_sig += np.uint32(0x00001000)
        return np.uint16(h_sgn + (f_sig >> np.uint32(13)))
    h_exp = (f_exp - np.uint32(0x38000000)) >> np.uint32(13)
    f_sig = f & np.uint32(0x007FFFFF)
    if (f_sig & np.uint32(0x00003FFF)) != np.uint32(0x00001000):
        f_sig += np.uint32(0x00001000)
    return np.uint16(h_sgn + h_exp + (f_sig >> np.uint32(13)))


@njit(cache=True)
def _half_kernel(bits, col0, out):
    """out (N, C - col0) uint16 = binary16 bits of the binary32 bits ``bits[:, col0:]`` (N, C) uint32."""
    for i in range(bits.shape[0]):
        for k in range(out.shape[1]):
            out[i, k] = _half_bits(bits[i, col0 + k])


def float16_columns(pts: np.ndarray, col0: int) -> np.ndarray:
    """``pts[:, col0:].astype(np.float16)``, bit for bit; a Numba pass for float32 input (numpy's conversion
    costs about 8 ns a value, 40 % of a sweep's encoding), numpy otherwise."""
    if pts.dtype != np.float32:
        return pts[:, col0:].astype(np.float16)
    out = np.empty((pts.shape[0], pts.shape[1] - col0), np.uint16)
    _half_kernel(pts.view(np.uint32), col0, out)
    return out.view(np.float16)


@njit(cache=True, inline="always")
def _region_top(region):
    top = -1
    for i in range(region.shape[0]):
        top = max(top, region[i])
    return top


@njit(cache=True, inline="always")
def _region_add(xyz, i, r, cnt, acc, lo, hi):
    """Add point i of xyz (N, >= 3) to region r's count, sum, min and max (a non-finite point counts as the
    origin)."""
    fin = np.isfinite(xyz[i, 0]) and np.isfinite(xyz[i, 1]) and np.isfinite(xyz[i, 2])
    cnt[r] += 1
    for k in range(3):
        v = np.float64(xyz[i, k]) if fin else 0.0
        acc[r, k] += v
        lo[r, k] = min(lo[r, k], v)
        hi[r, k] = max(hi[r, k], v)


@njit(cache=True)
def _region_finish(cnt, acc, lo, hi):
    """The regions with points: ids, counts, means, mins, maxs (ids ascending)."""
    m = 0
    for r in range(cnt.shape[0]):
        if cnt[r] > 0:
            m += 1
    ids = np.empty(m, np.int64)
    counts = np.empty(m, np.int64)
    mean = np.empty((m, 3))
    mins = np.empty((m, 3))
    maxs = np.empty((m, 3))
    j = 0
    for r in range(cnt.shape[0]):
        if cnt[r] == 0:
            continue
        ids[j] = r
        counts[j] = cnt[r]
        for k in range(3):
            mean[j, k] = acc[r, k] / cnt[r]
            mins[j, k] = lo[r, k]
            maxs[j, k] = hi[r, k]
        j += 1
    return ids, counts, mean, mins, maxs


@njit(cache=True)
def _region_kernel(xyz, region):
    """Per region id present in ``region`` (N,) (ids >= 0, sorted): ids, counts, and the mean, min and max of
    xyz (N, >= 3) over its points (float64; a non-finite point counts as the origin)."""
    top = _region_top(region)
    cnt = np.zeros(top + 1, np.int64)
    acc = np.zeros((top + 1, 3))
    lo = np.full((top + 1, 3), np.inf)
    hi = np.full((top + 1, 3), -np.inf)
    for i in range(region.shape[0]):
        if region[i] >= 0:
            _region_add(xyz, i, region[i], cnt, acc, lo, hi)
    return _region_finish(cnt, acc, lo, hi)


@njit(cache=True)
def _encode_points_kernel(pts, bits, ground, region, inv_scale, q, flags, half):
    """The per-point encoding of a float32 sweep in one pass over its points: :func:`_quantise_kernel`
    (q, flags), :func:`_half_kernel` (half: the binary16 bits of columns 3: of ``bits``, pts viewed as uint32)
    and :func:`_region_kernel` (returned, after the number of clipped points), each point read once."""
    top = _region_top(region)
    cnt = np.zeros(top + 1, np.int64)
    acc = np.zeros((top + 1, 3))
    lo = np.full((top + 1, 3), np.inf)
    hi = np.full((top + 1, 3), -np.inf)
    n_clipped = 0
    for i in range(pts.shape[0]):
        n_clipped += _quantise_point(pts, i, ground[i], inv_scale, q, flags)
        for k in range(half.shape[1]):
            half[i, k] = _half_bits(bits[i, 3 + k])
        if region[i] >= 0:
            _region_add(pts, i, region[i], cnt, acc, lo, hi)
    ids, counts, mean, mins, maxs = _region_finish(cnt, acc, lo, hi)
    return n_clipped, ids, counts, mean, mins, maxs


def _summaries(ids, counts, mean, mins, maxs) -> dict[str, np.ndarray]:
    return {"region_id": ids.astype(np.int16), "region_points": counts.astype(np.int32),
            "region_centroid": mean.astype(np.float32), "region_min": mins.astype(np.float32),
            "region_max": maxs.astype(np.float32)}


def region_summaries(xyz: np.ndarray, region: np.ndarray) -> dict[str, np.ndarray]:
    """Per-region summaries of one sweep: ids int16 (R,), points int32 (R,), centroid/min/max float32 (R, 3).

    xyz (N, >= 3) float (a non-finite point counts as the origin), region (N,) int (-1 = none). Regions are
    sorted by id.
    """
    xyz = _check_xyz(xyz)
    region = np.asarray(region)
    if region.shape != (xyz.shape[0],) or not np.issubdtype(region.dtype, np.integer):
        raise InputError(f"region must be an ({xyz.shape[0]},) integer array, got {region.shape} {region.dtype}")
    return _summaries(*_region_kernel(xyz, region))


@dataclass(frozen=True, eq=False)
class SweepInput:
    """One sweep's inputs as the writer needs them.

    points: (N, C >= 3) float32 as loaded (x, y, z in the LiDAR frame, then C - 3 feature columns).
    cameras: the sweep's cameras (any subset of the shard's channels) or None. path: the point file,
    relative to the dataroot. lidar2ego / ego2global: (4, 4) float64 (identity when unknown).
    """

    token: str
    points: np.ndarray
    timestamp: int = 0
    is_key_frame: bool = True
    path: str = ""
    lidar2ego: np.ndarray | None = None
    ego2global: np.ndarray | None = None
    cameras: Sequence[CameraCalib] | None = None


QUANTILE_NAMES = ("region_size_min", "region_size_p10", "region_size_p50", "region_size_p90", "region_size_max")
_QUANTILES = np.array([0.0, 0.1, 0.5, 0.9, 1.0])


def _quantiles(sizes: np.ndarray) -> dict[str, float]:
    """``np.quantile(sizes, [0, .1, .5, .9, 1])`` (method "linear"), value for value, in about a tenth of its time
    (numpy's generic machinery cost 0.1 ms a sweep): the same virtual indices and the same interpolation
    (numpy's ``_lerp``, which interpolates from the upper neighbour for fractions >= 0.5). Tested against
    ``np.quantile`` for equality."""
    if sizes.size == 0:
        return {k: float("nan") for k in QUANTILE_NAMES}
    a = np.sort(sizes.astype(np.float64))
    n = a.size
    q = _QUANTILES
    virtual = (n - 1) * q  # numpy's "linear" virtual index
    lo = np.floor(virtual)
    t = virtual - lo
    lo_i = np.clip(lo.astype(np.intp), 0, n - 1)
    hi_i = np.clip(lo_i + 1, 0, n - 1)
    below, above = a[lo_i], a[hi_i]
    diff = above - below
    out = np.where(t >= 0.5, above - diff * (1.0 - t), below + diff * t)
    return dict(zip(QUANTILE_NAMES, (float(v) for v in out)))


def _new_array(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.empty(shape, dtype)


def encode_sweep(sweep: SweepInput, result: Any, channels: Sequence[str], alloc=_new_array) -> dict[str, np.ndarray]:
    """Encode one sweep and its ``SweepResult`` (ground, region, projection, aug_params) into the store's
    per-sweep arrays (see the module docstring); also returns ``_clipped`` (int) for the statistics.

    ``alloc(name, shape, dtype)`` provides the arrays of :data:`POINT_ARRAYS` and :data:`PAIR_ARRAYS` that the
    encoding writes into (default: new arrays; :class:`ShardWriter` hands out rows of its scene-long columns,
    so that a shard needs no concatenation). It may be called before an InputError is raised."""
    pts = np.asarray(sweep.points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise InputError(f"sweep {sweep.token}: points must be (N, >= 3), got {pts.shape}", sweep.path or None)
    n = pts.shape[0]
    ground = np.asarray(result.ground, dtype=bool)
    region = np.asarray(result.region, dtype=np.int16)
    if ground.shape != (n,) or region.shape != (n,):
        raise ValueError(f"sweep {sweep.token}: result arrays do not match the {n} points")
    if pts.dtype not in (np.float32, np.float64):
        pts = pts.astype(np.float64)
    xyz_q = alloc("xyz", (n, 3), np.int16)
    flags = alloc("flags", (n,), np.uint8)
    feats = alloc("features", (n, pts.shape[1] - 3), np.float16)
    if pts.dtype == np.float32 and pts.flags.c_contiguous:  # as loaded from a point file: one pass
        n_clipped, *regions = _encode_points_kernel(pts, pts.view(np.uint32), ground, region, 1.0 / XYZ_SCALE,
                                                    xyz_q, flags, feats.view(np.uint16))
        summaries = _summaries(*regions)
    else:
        n_clipped = _quantise_kernel(pts, ground, True, 1.0 / XYZ_SCALE, xyz_q, flags)
        feats[...] = float16_columns(pts, 3)
        summaries = region_summaries(pts, region)
    region_out = alloc("region", (n,), np.int16)
    region_out[...] = region
    ncam = len(channels)
    intr = np.full((ncam, 3, 3), np.nan)
    l2c = np.full((ncam, 4, 4), np.nan)
    size = np.zeros((ncam, 2), np.int32)
    for cam in sweep.cameras or ():
        if cam.channel not in channels:
            raise InputError(f"sweep {sweep.token}: camera {cam.channel!r} is not one of the store's channels "
                             f"{', '.join(channels)}", sweep.path or None)
        c = channels.index(cam.channel)
        intr[c] = cam.intrinsic
        l2c[c] = cam.lidar2cam
        size[c] = (cam.width, cam.height)
    proj = result.projection
    if proj is not None and len(proj):
        cmap = np.array([channels.index(ch) if ch in channels else -1 for ch in proj.channels], np.int64)
        if (cmap < 0).any():
            bad = [ch for ch, i in zip(proj.channels, cmap) if i < 0]
            raise InputError(f"sweep {sweep.token}: projection camera(s) {bad} not in the store's channels",
                             sweep.path or None)
        m = len(proj)
        p_uv = _to_uint16(proj.uv, UV_SCALE, f"sweep {sweep.token}: pixel coordinates",
                          out=alloc("proj_uv", (m, 2), np.uint16))
        p_depth = _to_uint16(proj.depth, DEPTH_SCALE, "depth", clamp=65535 * DEPTH_SCALE,
                             out=alloc("proj_depth", (m,), np.uint16))
        p_point = alloc("proj_point", (m,), np.int32)
        p_point[...] = proj.point
        p_cam = alloc("proj_cam", (m,), np.uint8)
        p_cam[...] = cmap[np.asarray(proj.cam, np.int64)]
    else:
        p_uv = alloc("proj_uv", (0, 2), np.uint16)
        p_depth = alloc("proj_depth", (0,), np.uint16)
        p_point = alloc("proj_point", (0,), np.int32)
        p_cam = alloc("proj_cam", (0,), np.uint8)
    eye = np.eye(4)
    out = {
        "xyz": xyz_q, "flags": flags, "region": region_out, "features": feats,
        "proj_point": p_point, "proj_cam": p_cam, "proj_uv": p_uv, "proj_depth": p_depth,
        "timestamp": np.array([sweep.timestamp], np.int64),
        "aug_params": np.asarray(result.aug_params, np.float32)[None],
        "lidar2ego": np.asarray(sweep.lidar2ego if sweep.lidar2ego is not None else eye, np.float64)[None],
        "ego2global": np.asarray(sweep.ego2global if sweep.ego2global is not None else eye, np.float64)[None],
        "cam_intrinsic": intr[None], "cam_lidar2cam": l2c[None], "cam_size": size[None],
    }
    out.update(summaries)
    out["_clipped"] = int(n_clipped)
    return out


def warm_up() -> None:
    """Pay the writer's one-off costs before timed work: load (or compile) the encoder's Numba kernels on a tiny
    input, float32 and float64, and encode a tiny group and table in memory, so that zarr, its Blosc codec and
    pyarrow's Parquet writer are imported and initialised (about 0.2 s, which the first scene of a worker
    otherwise paid)."""
    encode_group({"raw": np.zeros((4, 3), np.int16), "blosc": np.zeros(COMPRESS_MIN_BYTES // 2, np.int16)},
                 {"warm_up": True})
    _table_bytes([], sweeps_schema())
    for dtype in (np.float32, np.float64):
        pts = np.zeros((4, 5), dtype)
        _quantise_kernel(pts, np.zeros(4, np.bool_), True, 1.0 / XYZ_SCALE, np.empty((4, 3), np.int16),
                         np.empty(4, np.uint8))
        _region_kernel(pts, np.zeros(4, np.int16))
        if dtype == np.float32:
            _encode_points_kernel(pts, pts.view(np.uint32), np.zeros(4, np.bool_), np.zeros(4, np.int16),
                                  1.0 / XYZ_SCALE, np.empty((4, 3), np.int16), np.empty(4, np.uint8),
                                  np.empty((4, 2), np.uint16))
        _to_uint16(pts[:, :2], UV_SCALE, "warm-up")
        float16_columns(pts, 3)


POINT_ARRAYS = ("xyz", "flags", "region", "features")
PAIR_ARRAYS = ("proj_point", "proj_cam", "proj_uv", "proj_depth")
REGION_ARRAYS = ("region_id", "region_points", "region_centroid", "region_min", "region_max")
SWEEP_ARRAYS = ("timestamp", "aug_params", "lidar2ego", "ego2global", "cam_intrinsic", "cam_lidar2cam", "cam_size")


# ----------------------------------------------------------------------------------------------------------
# Writing a shard
# ----------------------------------------------------------------------------------------------------------


#: Arrays compressed with bit shuffle instead of byte shuffle (Blosc lz4, level 5, for both): the float16
#: features, the pixel pairs, the flags, region ids and camera indices are smaller *and* faster to compress
#: bit-shuffled (features on the real nuScenes scans of the fixtures: 0.85-1.03 instead of 1.47-2.10 B/point at
#: 2.5x the speed); xyz (int16 centimetres), the point indices and depths compress better byte-shuffled
#: (docs/store.md, "Chunks, shards, compression").
BITSHUFFLE_ARRAYS = frozenset({"features", "proj_uv", "flags", "region", "proj_cam"})


def _compressors(name: str):
    from zarr.codecs import BloscCodec

    # lz4: on the generated data 8.7 B/point against 6.0 for zstd level 5, at a third of the commit time
    # (docs/store.md); the budget is 20 B/point and commit time counts against the kernels.
    shuffle = "bitshuffle" if name in BITSHUFFLE_ARRAYS else "shuffle"
    return [BloscCodec(cname="lz4", clevel=5, shuffle=shuffle)]


def _array_layout(data: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Chunks of about CHUNK_BYTES along the first axis; one shard holding all of them when there are several."""
    rows = data.shape[0]
    rest = tuple(data.shape[1:])
    row_bytes = max(1, data.dtype.itemsize * int(np.prod(rest, dtype=np.int64)))
    chunk_rows = max(1, min(rows, CHUNK_BYTES // row_bytes))
    shards = None
    if rows > chunk_rows:
        shards = (math.ceil(rows / chunk_rows) * chunk_rows,) + rest
    return (chunk_rows,) + rest, shards


def _write_arrays(group, arrays: Mapping[str, np.ndarray]) -> None:
    """Create and fill the arrays of a shard's Zarr group concurrently (one call into zarr's event loop: the
    small per-sweep arrays no longer wait for each other's metadata and chunk writes)."""
    import asyncio

    from zarr.core.sync import sync

    agroup = group._async_group

    async def one(name: str, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data)
        chunks, shards = _array_layout(data)
        # small arrays (per-sweep matrices, offsets, region summaries) are stored raw: Blosc's per-call cost
        # (~1 ms) is most of their write time and saves a few kilobytes. write_empty_chunks: no
        # comparison of every chunk with the fill value (a quarter of the write time); all chunks are written.
        comp = _compressors(name) if data.nbytes >= COMPRESS_MIN_BYTES else None
        arr = await agroup.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
                                        compressors=comp, fill_value=0, config={"write_empty_chunks": True})
        if data.size:
            await arr.setitem(Ellipsis, data)

    async def all_arrays() -> None:
        await asyncio.gather(*(one(name, data) for name, data in arrays.items()))

    sync(all_arrays())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data) -> dict[str, Any]:
    """Create ``path`` (which must not exist), write ``data`` (bytes-like), fsync it; its bytes and SHA-256,
    hashed from memory."""
    view = memoryview(data).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"bytes": len(view), "sha256": hashlib.sha256(view).hexdigest()}


def write_files(root: Path, blobs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Write ``blobs`` (``{relpath: bytes-like}``) under ``root``, each file fsynced; returns the manifest's file
    table ``{relpath: {"bytes", "sha256"}}`` (sorted), the same as :func:`file_table` would read back, hashed
    while writing. Folders are created once each; the files are written by a few threads (writes, fsyncs and
    SHA-256 release the GIL, and the disk can merge the fsyncs)."""
    from concurrent.futures import ThreadPoolExecutor

    for d in sorted({(root / rel).parent for rel in blobs}):
        d.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=8) as ex:
        table = dict(zip(blobs, ex.map(lambda rel: _write_file(root / rel, blobs[rel]), blobs)))
    return dict(sorted(table.items()))


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """``{relpath: {"bytes", "sha256"}}`` of every file under ``root`` except the manifest (sorted)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            out[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return dict(sorted(out.items()))


def content_hash(files: Mapping[str, Mapping[str, Any]]) -> str:
    """SHA-256 over the (path, sha256) of a shard's files except :data:`VOLATILE_FILES` (timings)."""
    stable = {k: v["sha256"] for k, v in files.items() if k not in VOLATILE_FILES}
    return hashlib.sha256(canonical_json(stable).encode()).hexdigest()


def _table_bytes(rows: list[dict], schema):
    """A Parquet file (zstd) of ``rows`` with ``schema``, in memory (a ``pyarrow.Buffer``)."""
    import pyarrow as pa

    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return parquet_bytes(pa.table(cols, schema=schema))


def parquet_bytes(table):
    """``table`` as a Parquet file (zstd), in memory (a ``pyarrow.Buffer``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def encode_group(arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The files of a shard's Zarr v3 group holding ``arrays`` (see :func:`_write_arrays`) and the group
    attributes ``attrs``, encoded by zarr into memory: ``{relpath: bytes-like}``. The writer puts them on disk
    itself (:func:`write_files`): its temporary folder is already renamed into place atomically, so zarr's
    per-file temporary copies, renames and folder checks, and reading the files back to hash them, are saved
    (about 1 ms a file on the benchmark machine; a shard has about 50)."""
    import zarr
    from zarr.storage import MemoryStore

    files: dict[str, Any] = {}
    group = zarr.open_group(MemoryStore(files), mode="w", zarr_format=3)
    _write_arrays(group, arrays)
    group.attrs.update(dict(attrs))
    return {key: buf.as_buffer_like() for key, buf in files.items()}


@dataclass(frozen=True)
class CommitResult:
    """Outcome of :meth:`ShardWriter.commit`: status ``committed`` (this writer's shard is now visible),
    ``exists`` (another writer committed it first; ours was discarded) or ``replaced`` (``commit(replace=True)``:
    ours took the place of the committed one)."""

    scene: str
    status: str
    path: Path
    manifest: dict


def shard_dir(version_dir: str | Path, scene: str) -> Path:
    _check_scene_name(scene)
    return Path(version_dir) / "shards" / scene


def _check_scene_name(scene: str) -> None:
    if not scene or scene.startswith(".") or "/" in scene or "\\" in scene or scene in (".", ".."):
        raise InputError(f"scene name {scene!r} cannot name a shard directory")


def tmp_shard_path(version_dir: str | Path, scene: str) -> Path:
    """A new name for a shard being written: ``shards/.tmp-<scene>-<host>-<pid>-<uuid>`` (the form
    :func:`clean_stale_tmp` and ``gc`` read the writer's host and pid from)."""
    _check_scene_name(scene)
    return (Path(version_dir) / "shards" /
            f".tmp-{scene}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_committed(version_dir: str | Path, scene: str) -> bool:
    """The scene's shard exists and holds its manifest (a shard is only ever visible complete)."""
    return (shard_dir(version_dir, scene) / MANIFEST).is_file()


class _Column:
    """One of a shard's scene-long flat arrays (:data:`POINT_ARRAYS`, :data:`PAIR_ARRAYS`), filled sweep by
    sweep in place: :meth:`take` hands out the next rows of a buffer that doubles when full. Capacity that is
    never written costs address space only (the pages are not touched), so the first buffer is generous."""

    def __init__(self, dtype, tail: tuple[int, ...], capacity: int):
        self.buf = np.empty((max(1, capacity), *tail), dtype)
        self.n = 0

    def take(self, rows: int) -> np.ndarray:
        need = self.n + rows
        if need > self.buf.shape[0]:
            grown = np.empty((max(need, 2 * self.buf.shape[0]), *self.buf.shape[1:]), self.buf.dtype)
            grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        view = self.buf[self.n:need]
        self.n = need
        return view

    def array(self) -> np.ndarray:
        return self.buf[:self.n]


class ShardWriter:
    """Collects one scene's processed sweeps and errors, then writes and commits its shard atomically.

    ``add`` encodes each sweep at once into the shard's scene-long columns (quantised, about 11 bytes a point
    + 11 a projected pair kept in memory until ``commit``; ``expected_points``, an upper bound on the scene's
    points when known, sizes them so that the point columns never grow). ``commit`` has zarr encode the group
    into memory (:func:`encode_group`, the compressed files of the shard: about 8-9 bytes a point more),
    writes those files and the Parquet tables
    into ``shards/.tmp-<scene>-<host>-<pid>-<uuid>/``, fsyncs and hashes them as it goes, writes
    ``manifest.json`` last and renames the folder to ``shards/<scene>`` (atomic on one filesystem; fails if
    another writer got there first, and then this writer's copy is removed).
    """

    #: First capacity of the columns, in rows, without ``expected_points`` (address space, not memory).
    DEFAULT_ROWS = 1 << 20

    def __init__(self, version_dir: str | Path, scene: str, channels: Sequence[str] = CAMERAS,
                 expected_points: int | None = None, inputs_sha256: str | None = None):
        self.version_dir = Path(version_dir)
        self.scene = scene
        #: Hash of the input files the scene was computed from (recorded in the manifest; see
        #: ``preprocess.run.scene_inputs_sha256``): lets a later version reuse the shard when they are unchanged.
        self.inputs_sha256 = inputs_sha256
        self.final_path = shard_dir(self.version_dir, scene)
        self.channels = tuple(channels)
        self._capacity = int(expected_points) + 1024 if expected_points else self.DEFAULT_ROWS
        self._columns: dict[str, _Column] = {}
        self._sweeps: list[dict[str, np.ndarray]] = []  # the small per-sweep and per-region arrays
        self._sizes: list[tuple[int, int, int]] = []    # points, pairs, regions of each sweep
        self._rows: list[dict[str, Any]] = []
        self._errors: list[dict[str, Any]] = []
        self._tokens: list[str] = []
        self._features: int | None = None

    def _take(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        col = self._columns.get(name)
        if col is None or (col.n == 0 and col.buf.shape[1:] != tuple(shape[1:])):  # e.g. after a failed 1st sweep
            col = self._columns[name] = _Column(dtype, tuple(shape[1:]), self._capacity)
        return col.take(shape[0])

    def __len__(self) -> int:
        return len(self._sweeps)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self._errors)

    def add(self, sweep: SweepInput, result: Any, backend: str = "cpu", load_ms: float = float("nan")) -> None:
        """Add a processed sweep: ``result`` is a ``preprocess.sweep.SweepResult`` (or any object with its
        ``ground``, ``region``, ``projection``, ``aug_params``, ``stats.to_dict()`` and ``timings_ms``)."""
        shape = np.shape(sweep.points)
        f = shape[1] - 3 if len(shape) == 2 and shape[1] >= 3 else None
        if f is not None and self._features is not None and f != self._features:
            raise InputError(f"sweep {sweep.token}: {f} feature columns, the scene's other sweeps have "
                             f"{self._features}", sweep.path or None)
        mark = {name: col.n for name, col in self._columns.items()}
        try:
            enc = encode_sweep(sweep, result, self.channels, alloc=self._take)
            row = self._row(sweep, result, enc, backend, load_ms)
        except BaseException:  # give back the rows this sweep took
            for name, col in self._columns.items():
                col.n = mark.get(name, 0)
            raise
        self._features = f
        self._sizes.append((enc["flags"].shape[0], enc["proj_cam"].shape[0], enc["region_id"].shape[0]))
        for name in POINT_ARRAYS + PAIR_ARRAYS:  # those live in the columns
            del enc[name]
        self._sweeps.append(enc)
        self._rows.append(row)
        self._tokens.append(sweep.token)

    def _row(self, sweep: SweepInput, result: Any, enc: dict, backend: str, load_ms: float) -> dict[str, Any]:
        """The sweep's row of ``sweeps.parquet`` (pops ``_clipped`` from ``enc``)."""
        clipped = enc.pop("_clipped")
        stats = dict(result.stats.to_dict())
        row: dict[str, Any] = {
            "token": sweep.token, "scene": self.scene, "index": len(self._sweeps),
            "timestamp": int(sweep.timestamp), "is_key_frame": bool(sweep.is_key_frame), "file": str(sweep.path),
            "backend": backend, "clipped_points": clipped,
        }
        for k in ("points", "nonfinite_points", "ground_points", "ground_fraction", "clusters", "regions_kept",
                  "region_points", "noise_points", "noise_fraction", "projected_pairs", "visible_points"):
            row[k] = stats.get(k)
        row.update(_quantiles(enc["region_points"]))
        timings = dict(result.timings_ms)
        timings["load"] = load_ms
        for s in TIMING_STAGES:
            row[f"t_{s}_ms"] = float(timings.get(s, float("nan")))
        return row

    def add_error(self, token: str, file: str | None, reason: str, stage: str = "process",
                  level: str = "error") -> None:
        """Record a sweep that could not be processed (``level="error"``: it is left out of the arrays) or one
        that went through without something (``"warning"``, e.g. a missing camera image)."""
        if level not in LEVELS:
            raise ValueError(f"level {level!r}: expected one of {', '.join(LEVELS)}")
        self._errors.append({"token": token, "scene": self.scene, "file": "" if file is None else str(file),
                             "stage": stage, "reason": reason, "level": level})

    def _concat(self) -> dict[str, np.ndarray]:
        nf = self._features or 0
        empty = {
            "xyz": np.zeros((0, 3), np.int16), "flags": np.zeros(0, np.uint8), "region": np.zeros(0, np.int16),
            "features": np.zeros((0, nf), np.float16), "proj_point": np.zeros(0, np.int32),
            "proj_cam": np.zeros(0, np.uint8), "proj_uv": np.zeros((0, 2), np.uint16),
            "proj_depth": np.zeros(0, np.uint16), "timestamp": np.zeros(0, np.int64),
            "aug_params": np.zeros((0, 0, 7), np.float32), "lidar2ego": np.zeros((0, 4, 4)),
            "ego2global": np.zeros((0, 4, 4)), "cam_intrinsic": np.zeros((0, len(self.channels), 3, 3)),
            "cam_lidar2cam": np.zeros((0, len(self.channels), 4, 4)),
            "cam_size": np.zeros((0, len(self.channels), 2), np.int32),
            "region_id": np.zeros(0, np.int16), "region_points": np.zeros(0, np.int32),
            "region_centroid": np.zeros((0, 3), np.float32), "region_min": np.zeros((0, 3), np.float32),
            "region_max": np.zeros((0, 3), np.float32),
        }
        out = {}
        for name, e in empty.items():
            if name in self._columns:
                out[name] = self._columns[name].array()  # no copy
                continue
            parts = [s[name] for s in self._sweeps]
            out[name] = np.concatenate(parts, axis=0) if parts else e
        sizes = np.array(self._sizes, np.int64).reshape(-1, 3)
        for j, off in enumerate(("offsets", "proj_offsets", "region_offsets")):
            out[off] = np.concatenate([[0], np.cumsum(sizes[:, j])]).astype(np.int64)
        return out

    def commit(self, replace: bool = False) -> CommitResult:
        """Write the shard aside and rename it into place; see the class docstring. ``replace``: a committed
        shard of the scene is replaced by this one (``--retry-failed``), swapped in atomically
        (:func:`swap_into_place`); the status is then ``replaced``."""
        if not replace and is_committed(self.version_dir, self.scene):
            return CommitResult(self.scene, "exists", self.final_path, read_manifest(self.final_path))
        shards = self.final_path.parent
        shards.mkdir(parents=True, exist_ok=True)
        tmp = tmp_shard_path(self.version_dir, self.scene)
        try:
            arrays = self._concat()
            blobs = encode_group({name: data for name, data in arrays.items()
                                  if not (name == "features" and data.shape[1] == 0)}, {
                "calico_format_version": FORMAT_VERSION, "scene": self.scene, "tokens": self._tokens,
                "channels": list(self.channels), "xyz_scale": XYZ_SCALE, "uv_scale": UV_SCALE,
                "depth_scale": DEPTH_SCALE, "features": int(self._features or 0),
                "flags": {"ground": int(FLAG_GROUND), "finite": int(FLAG_FINITE), "clipped": int(FLAG_CLIPPED)},
            })
            counts = [int(arrays[k][-1]) for k in ("offsets", "proj_offsets", "region_offsets")]
            del arrays  # (the columns stay with the writer: a failed commit can be retried)
            blobs[SWEEPS_TABLE] = _table_bytes(self._rows, sweeps_schema())
            blobs[ERRORS_TABLE] = _table_bytes(self._errors, errors_schema())
            tmp.mkdir()
            files = write_files(tmp, blobs)
            del blobs
            warnings = sum(e["level"] == "warning" for e in self._errors)
            manifest = {
                "calico_format_version": FORMAT_VERSION,
                "scene": self.scene,
                "counts": {"sweeps": len(self._sweeps), "points": counts[0], "pairs": counts[1],
                           "regions": counts[2], "errors": len(self._errors) - warnings, "warnings": warnings},
                "bytes": int(sum(v["bytes"] for v in files.values())),
                "content_sha256": content_hash(files),
                "files": files,
            }
            if self.inputs_sha256 is not None:
                manifest["inputs_sha256"] = self.inputs_sha256
            _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            if replace and is_committed(self.version_dir, self.scene):
                swap_into_place(tmp, self.final_path)
                return CommitResult(self.scene, "replaced", self.final_path, manifest)
            return rename_into_place(tmp, self.version_dir, self.scene, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def rename_into_place(tmp: Path, version_dir: str | Path, scene: str, manifest: dict) -> CommitResult:
    """Commit the complete shard folder ``tmp`` (manifest written) as ``scene``: one rename. If another writer
    committed the scene first, the rename fails, ``tmp`` is removed and the status is ``exists``."""
    final = shard_dir(version_dir, scene)
    try:
        os.rename(tmp, final)
    except OSError:
        if is_committed(version_dir, scene):  # lost the race: the other copy stands
            shutil.rmtree(tmp, ignore_errors=True)
            return CommitResult(scene, "exists", final, read_manifest(final))
        raise
    _fsync(final.parent)
    return CommitResult(scene, "committed", final, manifest)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``, through libc); False where
    the system or the filesystem cannot (then nothing was changed)."""
    import ctypes
    import errno

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(new: Path, final: Path) -> None:
    """Put the complete shard folder ``new`` (a ``.tmp-*`` folder) at ``final``, where a committed shard is,
    and delete the old shard. The two folders are exchanged atomically where the filesystem can (a reader sees
    the old shard or the new one, never neither); elsewhere the old one is first renamed aside under a
    ``.tmp-*`` name, so that for a moment the scene looks uncommitted (a crash then leaves it uncommitted: the
    next run computes it, and the old copy is removed as a dead writer's leftover)."""
    if not _rename_exchange(new, final):
        aside = tmp_shard_path(final.parent.parent, final.name)
        os.rename(final, aside)
        os.rename(new, final)
        new = aside
    _fsync(final.parent)
    shutil.rmtree(new, ignore_errors=True)  # the old shard


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def link_shard(src: str | Path, version_dir: str | Path, scene: str) -> CommitResult:
    """Commit the committed shard folder ``src`` (of another version) as ``scene`` of ``version_dir``: its
    files hard-linked (copied where that is not possible) into a ``.tmp-*`` folder that is renamed into place
    as :meth:`ShardWriter.commit` does. Status ``committed``, or ``exists`` when the scene already was."""
    final = shard_dir(version_dir, scene)
    if is_committed(version_dir, scene):
        return CommitResult(scene, "exists", final, read_manifest(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_shard_path(version_dir, scene)
    try:
        shutil.copytree(src, tmp, copy_function=_link_or_copy)
        return rename_into_place(tmp, version_dir, scene, read_manifest(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(shard: str | Path) -> dict:
    return json.loads((Path(shard) / MANIFEST).read_text())


def shard_failures(version_dir: str | Path, scene: str) -> tuple[int, int]:
    """(error rows, warning rows) of a committed shard's errors table, from its manifest (a shard of format 1
    counts all its rows as errors, which they were)."""
    counts = read_manifest(shard_dir(version_dir, scene))["counts"]
    return int(counts.get("errors", 0)), int(counts.get("warnings", 0))


# ----------------------------------------------------------------------------------------------------------
# Versions
# ----------------------------------------------------------------------------------------------------------


def versions_root(store: str | Path) -> Path:
    return Path(store) / "versions"


def version_dir(store: str | Path, vid: str) -> Path:
    return versions_root(store) / vid


def replace_file(path: Path, data) -> dict[str, Any]:
    """Replace ``path`` by ``data`` (bytes-like) atomically: written and fsynced under a temporary name, then
    ``os.replace``; returns its ``{"bytes", "sha256"}``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        entry = _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return entry


def create_version(store: str | Path, spec, info: Mapping[str, Any]) -> tuple[Path, bool]:
    """Create ``versions/<spec.id>/version.json`` unless it exists. Returns (folder, created).

    ``spec`` is a :class:`data_catalog.version.VersionSpec`; ``info`` adds the lineage, the expected scene names
    (``scenes``) and anything else worth keeping. An existing version.json whose spec differs from ``spec``
    (a hash collision or a hand edit) is an error.
    """
    vdir = version_dir(store, spec.id)
    (vdir / "shards").mkdir(parents=True, exist_ok=True)
    vj = vdir / "version.json"
    if vj.is_file():
        have = json.loads(vj.read_text())
        if have.get("spec") != spec.to_dict():
            raise InputError("version.json holds a different spec than its id says", vj)
        return vdir, False
    doc = {"id": spec.id, "spec": spec.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "created_unix": time.time(), **dict(info)}
    doc[DOC_SHA256] = doc_checksum(doc)
    # link() fails if another run created it meanwhile: first writer wins, the doc is never half-written.
    tmp = vdir / f".version.json.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    try:
        os.link(tmp, vj)
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink(missing_ok=True)
    return vdir, created


def read_version_json(vdir: str | Path) -> dict:
    """The version's ``version.json``; :class:`InputError` naming it when it is absent or not a JSON object."""
    p = Path(vdir) / "version.json"
    if not p.is_file():
        raise InputError("not a store version (no version.json)", vdir)
    try:
        doc = json.loads(p.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"version.json is not valid JSON ({exc})", p) from None
    if not isinstance(doc, dict) or "id" not in doc:
        raise InputError("version.json is not a version document (no id)", p)
    return doc


def version_dirs(store: str | Path) -> list[Path]:
    """The version folders of a store (those holding a ``version.json``, readable or not), sorted by name."""
    root = versions_root(store)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "version.json").is_file())


RUNS = "runs"


def write_run_record(vdir: str | Path, doc: Mapping[str, Any], when: float | None = None) -> Path:
    """Keep ``doc`` as a new run record of the version, ``runs/<UTC time to the microsecond>Z-<host>-<pid>-
    <uuid>.json``. Never replaces another record: written and fsynced under a temporary name, then hard-linked
    to its name, which fails if the name exists (then a new uuid is drawn). Returns its path."""
    runs = Path(vdir) / RUNS
    runs.mkdir(exist_ok=True)
    when = time.time() if when is None else when
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int((when % 1) * 1e6):06d}Z"
    data = json.dumps(dict(doc), indent=1).encode()
    while True:
        path = runs / f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        tmp = runs / f".{path.name}.tmp"
        _write_file(tmp, data)
        try:
            os.link(tmp, path)
            break
        except FileExistsError:
            continue
        finally:
            tmp.unlink(missing_ok=True)
    _fsync(runs)
    return path


def run_records(vdir: str | Path) -> list[Path]:
    """The version's run records, oldest first (their names start with the time)."""
    runs = Path(vdir) / RUNS
    return sorted(p for p in runs.glob("*.json") if not p.name.startswith(".")) if runs.is_dir() else []


def list_versions(store: str | Path) -> list[dict]:
    """version.json documents of every version in the store, oldest first."""
    docs = [read_version_json(d) for d in version_dirs(store)]
    return sorted(docs, key=lambda d: (d.get("created_unix", 0.0), d["id"]))


def same_run_other_inputs(store: str | Path, doc: Mapping[str, Any]) -> dict | None:
    """The latest other version of ``store`` that the run of ``doc`` (a ``version.json``) made over other
    input files: its spec equal but for ``manifest_sha256`` (same dataset version, configuration, sweeps, seed,
    code and format) and the same metadata tables (``dataset.manifest.tables``): only input files' sizes
    differ, e.g. repaired ones. None if there is none."""
    def spec(d):
        return {k: v for k, v in d["spec"].items() if k != "manifest_sha256"}

    def tables(d):
        return (d.get("dataset") or {}).get("manifest", {}).get("tables")

    hits = [d for d in list_versions(store)
            if d["id"] != doc["id"] and spec(d) == spec(doc) and tables(d) is not None and tables(d) == tables(doc)]
    return hits[-1] if hits else None


def committed_scenes(vdir: str | Path) -> list[str]:
    """Names of the committed shards (those with a manifest), sorted."""
    root = Path(vdir) / "shards"
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).is_file())


def tmp_dirs(vdir: str | Path) -> list[Path]:
    root = Path(vdir) / "shards"
    return sorted(p for p in root.glob(".tmp-*") if p.is_dir()) if root.is_dir() else []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(vdir: str | Path) -> list[Path]:
    """Remove ``.tmp-*`` shard folders left by dead writers on this host (pid not running); keep the rest.

    Returns the folders removed.
    """
    host = socket.gethostname()
    removed = []
    for p in tmp_dirs(vdir):
        parts = p.name.rsplit("-", 2)  # [".tmp-<scene>-<host>", pid, uuid]; scene and host may hold '-'
        if len(parts) != 3 or not parts[1].isdigit() or not parts[0].endswith("-" + host):
            continue
        pid_s = parts[1]
        if not _pid_alive(int(pid_s)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# ----------------------------------------------------------------------------------------------------------
# Derived tables
# ----------------------------------------------------------------------------------------------------------


def read_shard_tables(vdir: str | Path, name: str, scenes: Iterable[str] | None = None):
    """Concatenate ``name`` (sweeps.parquet or errors.parquet) over the committed shards (a pyarrow Table).
    Errors tables of format 1 (no ``level`` column) read with ``level`` = ``error``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = sweeps_schema() if name == SWEEPS_TABLE else errors_schema()
    scenes = committed_scenes(vdir) if scenes is None else list(scenes)
    tables = [pq.read_table(Path(vdir) / "shards" / s / name, schema=schema) for s in scenes]
    out = pa.concat_tables(tables) if tables else schema.empty_table()
    if name == ERRORS_TABLE:
        i = out.schema.get_field_index("level")
        out = out.set_column(i, "level", pc.fill_null(out.column("level"), "error"))
    return out


def scene_table(vdir: str | Path, scenes: Iterable[str] | None = None):
    """Per-scene statistics (a pyarrow Table) derived from the shards' sweeps/errors tables and manifests.

    Columns: scene, sweeps, errors (sweeps that failed), warnings (sweeps kept without something, e.g. a
    camera), points, ground_fraction (ground / finite points of the scene),
    noise_fraction (noise / non-ground finite points), clusters_mean, regions_kept_mean, regions_total,
    region_size_p50_median (median over sweeps), t_total_ms (sum of stage totals), t_load_ms, store_bytes,
    bytes_per_point (store bytes of the shard / points).
    """
    import pyarrow as pa

    rows = []
    for s in committed_scenes(vdir) if scenes is None else scenes:
        sw = read_shard_tables(vdir, SWEEPS_TABLE, [s]).to_pydict()
        man = read_manifest(Path(vdir) / "shards" / s)
        errors, warnings = shard_failures(vdir, s)
        pts = np.asarray(sw["points"], np.float64)
        finite = pts - np.asarray(sw["nonfinite_points"], np.float64)
        ground = np.asarray(sw["ground_points"], np.float64)
        noise = np.asarray(sw["noise_points"], np.float64)
        nonground = finite - ground
        n = len(sw["token"])
        p50 = np.asarray([v for v in sw["region_size_p50"] if v is not None and not np.isnan(v)])
        rows.append({
            "scene": s, "sweeps": n, "errors": errors, "warnings": warnings, "points": int(pts.sum()),
            "ground_fraction": float(ground.sum() / finite.sum()) if finite.sum() else 0.0,
            "noise_fraction": float(noise.sum() / nonground.sum()) if nonground.sum() else 0.0,
            "clusters_mean": float(np.mean(sw["clusters"])) if n else 0.0,
            "regions_kept_mean": float(np.mean(sw["regions_kept"])) if n else 0.0,
            "regions_total": int(np.sum(sw["regions_kept"])) if n else 0,
            "region_size_p50_median": float(np.median(p50)) if p50.size else float("nan"),
            "t_total_ms": float(np.nansum(sw["t_total_ms"])) if n else 0.0,
            "t_load_ms": float(np.nansum(sw["t_load_ms"])) if n else 0.0,
            "store_bytes": int(man["bytes"]),
            "bytes_per_point": float(man["bytes"] / pts.sum()) if pts.sum() else float("nan"),
        })
    schema = pa.schema([("scene", pa.string()), ("sweeps", pa.int64()), ("errors", pa.int64()),
                        ("warnings", pa.int64()),
                        ("points", pa.int64()), ("ground_fraction", pa.float64()), ("noise_fraction", pa.float64()),
                        ("clusters_mean", pa.float64()), ("regions_kept_mean", pa.float64()),
                        ("regions_total", pa.int64()), ("region_size_p50_median", pa.float64()),
                        ("t_total_ms", pa.float64()), ("t_load_ms", pa.float64()), ("store_bytes", pa.int64()),
                        ("bytes_per_point", pa.float64())])
    return pa.table({f.name: [r[f.name] for r in rows] for f in schema}, schema=schema)


#: The version-level tables, derived from the shards by :func:`finalize`, and their manifest.
VERSION_TABLES: tuple[str, ...] = (SWEEPS_TABLE, ERRORS_TABLE, SCENES_TABLE)
TABLES_MANIFEST = "tables.json"
FINALIZE_LOCK = ".finalize.lock"


def finalize(vdir: str | Path) -> dict[str, Path]:
    """Write the version-level ``sweeps.parquet``, ``errors.parquet`` and ``scenes.parquet`` (derived from the
    committed shards; each replaced atomically), then ``tables.json``: each table's bytes, SHA-256 and rows and
    the ``content_sha256`` of every shard they were derived from (what ``verify`` checks them against). Runs
    that finish at once on one version take turns (an exclusive lock on ``.finalize.lock``). Returns the
    tables' paths."""
    import fcntl

    vdir = Path(vdir)
    with open(vdir / FINALIZE_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        scenes = committed_scenes(vdir)
        shards = {s: read_manifest(shard_dir(vdir, s))["content_sha256"] for s in scenes}
        out, entries = {}, {}
        for name, table in ((SWEEPS_TABLE, read_shard_tables(vdir, SWEEPS_TABLE, scenes)),
                            (ERRORS_TABLE, read_shard_tables(vdir, ERRORS_TABLE, scenes)),
                            (SCENES_TABLE, scene_table(vdir, scenes))):
            entries[name] = {**replace_file(vdir / name, parquet_bytes(table)), "rows": table.num_rows}
            out[name] = vdir / name
        doc = {"calico_format_version": FORMAT_VERSION, "tables": entries, "shards": shards}
        replace_file(vdir / TABLES_MANIFEST, json.dumps(doc, indent=1, sort_keys=True).encode())
    return out
