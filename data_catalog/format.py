"""The store's array format: what each array of a shard holds, its dtype and units, and the encoding of a
processed sweep into those arrays (the format version is :data:`data_catalog.version.FORMAT_VERSION`).

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
a reader still slices chunk by chunk (:mod:`data_catalog.writer`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from shared.errors import InputError
from shared.records import CameraCalib


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


def to_uint16(values: np.ndarray, scale: float, what: str, clamp: float = np.inf,
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
        p_uv = to_uint16(proj.uv, UV_SCALE, f"sweep {sweep.token}: pixel coordinates",
                          out=alloc("proj_uv", (m, 2), np.uint16))
        p_depth = to_uint16(proj.depth, DEPTH_SCALE, "depth", clamp=65535 * DEPTH_SCALE,
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


POINT_ARRAYS = ("xyz", "flags", "region", "features")


PAIR_ARRAYS = ("proj_point", "proj_cam", "proj_uv", "proj_depth")


REGION_ARRAYS = ("region_id", "region_points", "region_centroid", "region_min", "region_max")


SWEEP_ARRAYS = ("timestamp", "aug_params", "lidar2ego", "ego2global", "cam_intrinsic", "cam_lidar2cam", "cam_size")


def warm_up_kernels() -> None:
    """Load (or compile) the encoder's Numba kernels on a tiny input, float32 and float64 (part of
    :func:`data_catalog.writer.warm_up`)."""
    for dtype in (np.float32, np.float64):
        pts = np.zeros((4, 5), dtype)
        _quantise_kernel(pts, np.zeros(4, np.bool_), True, 1.0 / XYZ_SCALE, np.empty((4, 3), np.int16),
                         np.empty(4, np.uint8))
        _region_kernel(pts, np.zeros(4, np.int16))
        if dtype == np.float32:
            _encode_points_kernel(pts, pts.view(np.uint32), np.zeros(4, np.bool_), np.zeros(4, np.int16),
                                  1.0 / XYZ_SCALE, np.empty((4, 3), np.int16), np.empty(4, np.uint8),
                                  np.empty((4, 2), np.uint16))
        to_uint16(pts[:, :2], UV_SCALE, "warm-up")
        float16_columns(pts, 3)
