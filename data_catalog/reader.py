"""Reading a store version: scenes, sweeps as zero-copy numpy views, the statistics tables.

>>> v = open_version("STORE")                 # the latest version; open_version("STORE", "3f2a...") names one
>>> v.scenes()                                 # committed scenes
>>> sh = v.scene("scene-0001")                 # one shard; its flat arrays are read on first use
>>> sw = sh.sweep(0)                           # or: for sw in sh: ...;  v.sweep("scene-0001", 0)
>>> sw.xyz, sw.ground, sw.region, sw.proj_point, sw.aug_params

A :class:`Shard` reads each flat array of its scene once (only the arrays asked for, only that scene), and a
:class:`Sweep` holds slices of those arrays: ``Sweep.raw`` are views (no copy) of the stored dtypes; the
properties ``xyz``, ``ground``, ``finite``, ``uv``, ``depth`` decode them (new arrays). The store also reads
with plain ``zarr`` and ``pyarrow`` (docs/store.md).

Every shard opened is checked against its ``manifest.json`` (:func:`check_shard`): each listed file's size always,
and by default (``verify_checksums=True``) its SHA-256 (:func:`data_catalog.version.sha256_file`, the function
``calico preprocess verify`` uses) once per shard per process: a shard whose files still have the sizes and
modification times they had when verified is not hashed again. A mismatch is an :class:`InputError` naming the
shard file.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data_catalog.format import FLAG_FINITE, FLAG_GROUND, PAIR_ARRAYS, POINT_ARRAYS, REGION_ARRAYS, SWEEP_ARRAYS
from data_catalog.layout import (ERRORS_TABLE, MANIFEST, SWEEPS_TABLE, committed_scenes, content_hash,
                                 read_manifest, shard_dir, version_dir)
from data_catalog.tables import read_shard_tables, scene_table
from data_catalog.version import sha256_file
from data_catalog.versions import list_versions, read_version_json
from shared.errors import InputError

#: Shards whose checksums this process verified: resolved shard path -> ((file, size, mtime_ns), ...) of the
#: listed files when they were hashed. DataLoader workers forked after the check inherit it.
_VERIFIED: dict[str, tuple[tuple[str, int, int], ...]] = {}


def check_shard(path: str | Path, manifest: dict, verify_checksums: bool = True, cached: bool = True) -> None:
    """Check the committed shard at ``path`` against its ``manifest`` (the parsed ``manifest.json``): every listed
    file exists with the listed size and, with ``verify_checksums``, the listed SHA-256 (skipped when this
    process already hashed the shard and no listed file's size or mtime changed since, unless ``cached`` is
    False: a benchmark's). Raises :class:`InputError` naming the first bad file."""
    path = Path(path)
    files = manifest.get("files", {})
    full = path.resolve()  # STORE/versions/ID/shards/SCENE
    where = (f"the shard of scene {full.name} is corrupt; `calico preprocess verify --store {full.parents[3]} "
             f"--version {full.parents[1].name}` lists every problem") if len(full.parents) > 3 else \
        f"the shard of scene {full.name} is corrupt"
    stats = []
    for rel, want in sorted(files.items()):
        try:
            info = (path / rel).stat()
        except OSError:
            raise InputError(f"missing, but listed in the shard's manifest.json ({where})", path / rel) from None
        if info.st_size != want["bytes"]:
            raise InputError(f"{info.st_size} bytes, the shard's manifest.json says {want['bytes']} ({where})",
                             path / rel)
        stats.append((rel, info.st_size, info.st_mtime_ns))
    key = str(full)
    if not verify_checksums or (cached and _VERIFIED.get(key) == tuple(stats)):
        return
    if content_hash(files) != manifest.get("content_sha256"):
        raise InputError(f"content_sha256 does not match the listed files ({where})", path / MANIFEST)
    for rel, _, _ in stats:
        if sha256_file(path / rel) != files[rel]["sha256"]:
            raise InputError(f"SHA-256 differs from the shard's manifest.json: the file changed after the "
                             f"commit ({where})", path / rel)
    _VERIFIED[key] = tuple(stats)


@dataclass(frozen=True, eq=False)
class Sweep:
    """One stored sweep: ``raw`` maps array names to views into its shard's flat arrays.

    Point arrays (N = points of this sweep): ``xyz`` int16 (N, 3), ``flags`` uint8 (N,), ``region`` int16 (N,),
    ``features`` float16 (N, F). Pair arrays (P pairs): ``proj_point`` int32 (P,) (index into this sweep's
    points), ``proj_cam`` uint8 (P,), ``proj_uv`` uint16 (P, 2), ``proj_depth`` uint16 (P,). Region arrays
    (R regions): ``region_id`` int16, ``region_points`` int32, ``region_centroid``/``region_min``/
    ``region_max`` float32 (R, 3). Per sweep: ``aug_params`` float32 (V, 7), ``lidar2ego``/``ego2global``
    (4, 4), ``cam_intrinsic`` (C, 3, 3), ``cam_lidar2cam`` (C, 4, 4), ``cam_size`` int32 (C, 2).
    """

    scene: str
    index: int
    token: str
    raw: dict[str, np.ndarray]
    channels: tuple[str, ...]
    xyz_scale: float
    uv_scale: float
    depth_scale: float

    def __len__(self) -> int:
        return int(self.raw["flags"].shape[0])

    def __getattr__(self, name: str) -> np.ndarray:
        raw = self.__dict__.get("raw")
        if raw is not None and name in raw:
            return raw[name]
        raise AttributeError(name)

    @property
    def xyz(self) -> np.ndarray:
        """(N, 3) float32 metres (dequantised; 0 for non-finite points)."""
        return self.raw["xyz"].astype(np.float32) * np.float32(self.xyz_scale)

    @property
    def ground(self) -> np.ndarray:
        """(N,) bool."""
        return (self.raw["flags"] & FLAG_GROUND).astype(bool)

    @property
    def finite(self) -> np.ndarray:
        """(N,) bool: the input point had finite x, y, z."""
        return (self.raw["flags"] & FLAG_FINITE).astype(bool)

    @property
    def region(self) -> np.ndarray:
        """(N,) int16 region ids, -1 = semantic-less (a view)."""
        return self.raw["region"]

    @property
    def uv(self) -> np.ndarray:
        """(P, 2) float32 pixel coordinates of the projected pairs."""
        return self.raw["proj_uv"].astype(np.float32) * np.float32(self.uv_scale)

    @property
    def depth(self) -> np.ndarray:
        """(P,) float32 camera depth in metres of the projected pairs."""
        return self.raw["proj_depth"].astype(np.float32) * np.float32(self.depth_scale)

    @property
    def aug_params(self) -> np.ndarray:
        """(V, 7) float32 augmentation record (a view)."""
        return self.raw["aug_params"]


class Shard:
    """One committed scene shard, opened read-only with zarr, after :func:`check_shard` (sizes always,
    checksums with ``verify_checksums``). Flat arrays are loaded on first use, whole (one read per array per
    shard), and cached; sweeps are slices of them."""

    def __init__(self, path: str | Path, verify_checksums: bool = True):
        import zarr

        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise InputError("not a committed shard (no manifest.json)", self.path)
        check_shard(self.path, self.manifest, verify_checksums)
        self.verify_checksums = bool(verify_checksums)
        self.group = zarr.open_group(str(self.path), mode="r", zarr_format=3)
        attrs = dict(self.group.attrs)
        self.scene: str = attrs["scene"]
        self.tokens: list[str] = list(attrs["tokens"])
        self.channels: tuple[str, ...] = tuple(attrs["channels"])
        self.attrs = attrs
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Shard({self.scene!r}, sweeps={len(self)})"

    @cached_property
    def manifest(self) -> dict:
        try:
            return read_manifest(self.path)
        except ValueError as exc:
            raise InputError(f"unreadable ({exc})", self.path / MANIFEST) from None

    def array(self, name: str) -> np.ndarray:
        """The whole flat array ``name`` of this shard (read once, cached)."""
        if name not in self._cache:
            if name == "features" and name not in self.group:
                n = int(self.array("offsets")[-1])
                self._cache[name] = np.zeros((n, 0), np.float16)
            else:
                self._cache[name] = np.asarray(self.group[name][...])
        return self._cache[name]

    def sweep(self, i: int, arrays: tuple[str, ...] | None = None) -> Sweep:
        """Sweep ``i`` (0 <= i < len; negative counts from the end) as views into the flat arrays.

        ``arrays``: the array names to include (default: all); only those are read.
        """
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sweep index {i} out of range for scene {self.scene} with {n} sweeps")
        i %= n
        names = arrays or (POINT_ARRAYS + PAIR_ARRAYS + REGION_ARRAYS + SWEEP_ARRAYS)
        raw: dict[str, np.ndarray] = {}
        spans = {}
        for name in names:
            if name in POINT_ARRAYS:
                off = "offsets"
            elif name in PAIR_ARRAYS:
                off = "proj_offsets"
            elif name in REGION_ARRAYS:
                off = "region_offsets"
            elif name in SWEEP_ARRAYS:
                raw[name] = self.array(name)[i]
                continue
            else:
                raise KeyError(f"unknown array {name!r}")
            if off not in spans:
                o = self.array(off)
                spans[off] = (int(o[i]), int(o[i + 1]))
            a, b = spans[off]
            raw[name] = self.array(name)[a:b]
        if "flags" not in raw:  # __len__ needs it; a view, no copy
            a, b = int(self.array("offsets")[i]), int(self.array("offsets")[i + 1])
            raw["flags"] = self.array("flags")[a:b]
        return Sweep(scene=self.scene, index=i, token=self.tokens[i], raw=raw, channels=self.channels,
                     xyz_scale=float(self.attrs["xyz_scale"]), uv_scale=float(self.attrs["uv_scale"]),
                     depth_scale=float(self.attrs["depth_scale"]))

    def __iter__(self) -> Iterator[Sweep]:
        for i in range(len(self)):
            yield self.sweep(i)

    def sweeps_table(self):
        import pyarrow.parquet as pq

        return pq.read_table(self.path / SWEEPS_TABLE)

    def errors_table(self):
        import pyarrow.parquet as pq

        return pq.read_table(self.path / ERRORS_TABLE)


class StoreVersion:
    """One version of a store: its ``version.json`` (:attr:`info`), config and committed shards (each checked
    when opened, see :class:`Shard`; ``verify_checksums=False`` checks the sizes only)."""

    def __init__(self, path: str | Path, verify_checksums: bool = True):
        self.path = Path(path)
        self.verify_checksums = bool(verify_checksums)
        self.info: dict[str, Any] = read_version_json(self.path)
        self.id: str = self.info["id"]
        self._shards: dict[str, Shard] = {}

    def __repr__(self) -> str:
        return f"StoreVersion({self.id!r}, scenes={len(self.scenes())})"

    @property
    def spec(self) -> dict:
        return self.info["spec"]

    @property
    def config(self) -> dict:
        """The resolved preprocessing configuration (``SweepConfig.to_dict()``)."""
        return self.spec["config"]

    def scenes(self) -> list[str]:
        """Committed scenes, sorted by name."""
        return committed_scenes(self.path)

    def expected_scenes(self) -> list[str]:
        return list(self.info.get("scenes", []))

    def scene(self, name: str) -> Shard:
        if name not in self._shards:
            p = shard_dir(self.path, name)
            if not (p / MANIFEST).is_file():
                raise InputError(f"scene {name!r} has no committed shard in version {self.id}", p)
            self._shards[name] = Shard(p, self.verify_checksums)
        return self._shards[name]

    def sweep(self, scene: str, i: int) -> Sweep:
        return self.scene(scene).sweep(i)

    def iter_sweeps(self, scenes: list[str] | None = None) -> Iterator[Sweep]:
        """Every sweep, scene by scene (each shard's arrays are read when its turn comes and dropped after)."""
        for name in scenes if scenes is not None else self.scenes():
            shard = self._shards.get(name) or Shard(shard_dir(self.path, name), self.verify_checksums)
            yield from shard

    def __iter__(self) -> Iterator[Sweep]:
        return self.iter_sweeps()

    def sweeps_table(self):
        """Per-sweep statistics of all committed shards (pyarrow Table)."""
        return read_shard_tables(self.path, SWEEPS_TABLE)

    def errors_table(self):
        return read_shard_tables(self.path, ERRORS_TABLE)

    def scenes_table(self):
        """Per-scene statistics, derived from the shards now (see :func:`data_catalog.tables.scene_table`)."""
        return scene_table(self.path)


def open_version(store: str | Path, version: str | None = None, verify_checksums: bool = True) -> StoreVersion:
    """Open version ``version`` of ``store`` (a full id or a unique prefix), or the latest one created; its shards
    are checked as they are opened (:class:`Shard`; ``verify_checksums=False``: sizes only).

    Raises :class:`InputError` when the store has no versions or the id matches none or several.
    """
    docs = list_versions(store)
    if not docs:
        raise InputError("no store versions here (expected versions/<id>/version.json)", store)
    if version is None:
        return StoreVersion(version_dir(store, docs[-1]["id"]), verify_checksums)
    hits = [d["id"] for d in docs if d["id"].startswith(version)]
    if len(hits) != 1:
        known = ", ".join(d["id"] for d in docs)
        what = "no" if not hits else "several"
        raise InputError(f"{what} version(s) matching {version!r}; versions: {known}", store)
    return StoreVersion(version_dir(store, hits[0]), verify_checksums)

