"""Writing a shard: the :class:`ShardWriter` that encodes a scene's sweeps (:mod:`data_catalog.format`) into
scene-long columns and commits the shard atomically (written aside, manifest last, one rename; or swapped in for a
committed one with ``commit(replace=True)``), the Zarr group encoding (chunks, shards, compressors) and the
committing of another version's shard by hard links (:func:`link_shard`).

The arrays of a shard are written concurrently in one call into zarr's event loop.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_catalog.format import (CHUNK_BYTES, COMPRESS_MIN_BYTES, DEPTH_SCALE, FLAG_CLIPPED, FLAG_FINITE,
                                 FLAG_GROUND, PAIR_ARRAYS, POINT_ARRAYS, UV_SCALE, XYZ_SCALE, SweepInput,
                                 encode_sweep, warm_up_kernels)
from data_catalog.layout import (ERRORS_TABLE, MANIFEST, SWEEPS_TABLE, content_hash, fsync_path, is_committed,
                                 read_manifest, shard_dir, tmp_shard_path, write_file)
from data_catalog.tables import LEVELS, TIMING_STAGES, errors_schema, size_quantiles, sweeps_schema, table_bytes
from data_catalog.version import FORMAT_VERSION
from shared.errors import InputError
from shared.records import CAMERAS


#: Arrays compressed with bit shuffle instead of byte shuffle (Blosc lz4, level 5, for both): the float16
#: features, the pixel pairs, the flags, region ids and camera indices are smaller *and* faster to compress
#: bit-shuffled (features on the real nuScenes scans of the fixtures: 0.85-1.03 instead of 1.47-2.10 B/point at
#: 2.5x the speed); xyz (int16 centimetres), the point indices and depths compress better byte-shuffled
#: (docs/store.md, "Chunks, shards, compression").
BITSHUFFLE_ARRAYS = frozenset({"features", "proj_uv", "flags", "region", "proj_cam"})


def compressors(name: str):
    from zarr.codecs import BloscCodec

    # lz4: on the generated data 8.7 B/point against 6.0 for zstd level 5, at a third of the commit time
    # (docs/store.md); the budget is 20 B/point and commit time counts against the kernels.
    shuffle = "bitshuffle" if name in BITSHUFFLE_ARRAYS else "shuffle"
    return [BloscCodec(cname="lz4", clevel=5, shuffle=shuffle)]


def array_layout(data: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
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
        chunks, shards = array_layout(data)
        # small arrays (per-sweep matrices, offsets, region summaries) are stored raw: Blosc's per-call cost
        # (~1 ms) is most of their write time and saves a few kilobytes. write_empty_chunks: no
        # comparison of every chunk with the fill value (a quarter of the write time); all chunks are written.
        comp = compressors(name) if data.nbytes >= COMPRESS_MIN_BYTES else None
        arr = await agroup.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
                                        compressors=comp, fill_value=0, config={"write_empty_chunks": True})
        if data.size:
            await arr.setitem(Ellipsis, data)

    async def all_arrays() -> None:
        await asyncio.gather(*(one(name, data) for name, data in arrays.items()))

    sync(all_arrays())


def write_files(root: Path, blobs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Write ``blobs`` (``{relpath: bytes-like}``) under ``root``, each file fsynced; returns the manifest's file
    table ``{relpath: {"bytes", "sha256"}}`` (sorted), the same as :func:`file_table` would read back, hashed
    while writing. Folders are created once each; the files are written by a few threads (writes, fsyncs and
    SHA-256 release the GIL, and the disk can merge the fsyncs)."""
    from concurrent.futures import ThreadPoolExecutor

    for d in sorted({(root / rel).parent for rel in blobs}):
        d.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=8) as ex:
        table = dict(zip(blobs, ex.map(lambda rel: write_file(root / rel, blobs[rel]), blobs)))
    return dict(sorted(table.items()))


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

    def add(self, sweep: SweepInput, result: Any, backend: str = "cpu", load_ms: float = float("nan"),
            audit: Mapping[str, Any] | None = None) -> None:
        """Add a processed sweep: ``result`` is a ``preprocess.sweep.SweepResult`` (or any object with its
        ``ground``, ``region``, ``projection``, ``aug_params``, ``stats.to_dict()`` and ``timings_ms``);
        ``audit``: the sweep's audit columns (:func:`data_catalog.audit.audit_sweep`), None for none (nulls)."""
        shape = np.shape(sweep.points)
        f = shape[1] - 3 if len(shape) == 2 and shape[1] >= 3 else None
        if f is not None and self._features is not None and f != self._features:
            raise InputError(f"sweep {sweep.token}: {f} feature columns, the scene's other sweeps have "
                             f"{self._features}", sweep.path or None)
        mark = {name: col.n for name, col in self._columns.items()}
        try:
            enc = encode_sweep(sweep, result, self.channels, alloc=self._take)
            row = self._row(sweep, result, enc, backend, load_ms)
            row.update(audit or {})
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
        row.update(size_quantiles(enc["region_points"]))
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
            blobs[SWEEPS_TABLE] = table_bytes(self._rows, sweeps_schema())
            blobs[ERRORS_TABLE] = table_bytes(self._errors, errors_schema())
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
            write_file(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
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
    fsync_path(final.parent)
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
    fsync_path(final.parent)
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


def warm_up() -> None:
    """Pay the writer's one-off costs before timed work: load (or compile) the encoder's Numba kernels on a tiny
    input, float32 and float64, and encode a tiny group and table in memory, so that zarr, its Blosc codec and
    pyarrow's Parquet writer are imported and initialised (about 0.2 s, which the first scene of a worker
    otherwise paid)."""
    encode_group({"raw": np.zeros((4, 3), np.int16), "blosc": np.zeros(COMPRESS_MIN_BYTES // 2, np.int16)},
                 {"warm_up": True})
    table_bytes([], sweeps_schema())
    warm_up_kernels()
