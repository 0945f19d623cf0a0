"""Where things are in a store and how its files are written: version and shard folders, manifests, the
names of the tables, atomic file writes and content hashes.

Layout (see docs/store.md)::

    STORE/versions/<id>/version.json          spec (hashed into <id>), resolved config, lineage, scenes
    STORE/versions/<id>/shards/<scene>/       one shard per scene, complete or absent:
        zarr.json, <array>/...                  a Zarr v3 group of flat arrays + int64 offsets
                                                (:mod:`data_catalog.format`)
        sweeps.parquet                          per-sweep statistics, stage timings and the audit
                                                (:mod:`data_catalog.tables`, :mod:`data_catalog.audit`)
        errors.parquet                          failed sweeps and warnings (token, file, stage, reason, level)
        manifest.json                           counts + size and sha256 of every file above, inputs_sha256
                                                (written last)
    STORE/versions/<id>/shards/.tmp-<scene>-<host>-<pid>-<uuid>/   a shard being written (never read)
    STORE/versions/<id>/{sweeps,errors,scenes}.parquet            derived from the shards by finalize()
    STORE/versions/<id>/tables.json                               their bytes, sha256 and rows (finalize())
    STORE/versions/<id>/runs/<UTC time>Z-<host>-<pid>-<uuid>.json  one record per run (write_run_record())

Shards are written by :mod:`data_catalog.writer`, version documents and run records by
:mod:`data_catalog.versions`, the derived tables by :mod:`data_catalog.tables`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_catalog.version import canonical_json, sha256_file
from shared.errors import InputError


MANIFEST = "manifest.json"
SWEEPS_TABLE = "sweeps.parquet"
ERRORS_TABLE = "errors.parquet"
SCENES_TABLE = "scenes.parquet"


#: Files of a shard left out of its content hash: they hold timings, which differ from run to run.
VOLATILE_FILES: tuple[str, ...] = (SWEEPS_TABLE,)


#: The version-level tables, derived from the shards by :func:`data_catalog.tables.finalize`, and their manifest.
VERSION_TABLES: tuple[str, ...] = (SWEEPS_TABLE, ERRORS_TABLE, SCENES_TABLE)
TABLES_MANIFEST = "tables.json"


def versions_root(store: str | Path) -> Path:
    return Path(store) / "versions"


def version_dir(store: str | Path, vid: str) -> Path:
    return versions_root(store) / vid


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


def read_manifest(shard: str | Path) -> dict:
    return json.loads((Path(shard) / MANIFEST).read_text())


def shard_failures(version_dir: str | Path, scene: str) -> tuple[int, int]:
    """(error rows, warning rows) of a committed shard's errors table, from its manifest (a shard of format 1
    counts all its rows as errors, which they were)."""
    counts = read_manifest(shard_dir(version_dir, scene))["counts"]
    return int(counts.get("errors", 0)), int(counts.get("warnings", 0))


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


def pid_alive(pid: int) -> bool:
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
        if not pid_alive(int(pid_s)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data) -> dict[str, Any]:
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


def replace_file(path: Path, data) -> dict[str, Any]:
    """Replace ``path`` by ``data`` (bytes-like) atomically: written and fsynced under a temporary name, then
    ``os.replace``; returns its ``{"bytes", "sha256"}``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        entry = write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return entry


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
