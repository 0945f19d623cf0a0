"""Removing store versions that are no longer wanted, safely.

>>> plan = plan_gc("STORE", keep=("3f2a",), keep_latest=1)     # what would go (nothing is touched)
>>> result = collect("STORE", plan)                              # remove them

Rules:

* **Kept:** the versions named by ``keep`` (ids or unique prefixes) and the ``keep_latest`` most recently
  created ones (default 1: the latest version is never removed unless ``keep_latest=0`` is asked for).
* **Never a version being written.** A version is *busy* when a writer may be at work in it: a
  ``shards/.tmp-*`` folder of a live process on this host (the pid in its name is running), a ``.tmp-*`` folder
  of another host modified less than ``grace_s`` ago, or any file of the version (shard manifests,
  ``version.json``, run records, temporary files) modified less than ``grace_s`` ago. A run between two
  shards leaves no temporary folder, hence the grace period (default 10 minutes, longer than one scene takes).
  Busy versions are kept and reported.
* **Rename, then delete.** A removed version is first renamed (one atomic ``rename`` on the store's
  filesystem) from ``versions/<id>`` to ``trash/<id>-<uuid>``, where readers and ``list`` never look, then
  deleted. A gc that crashes midway leaves at most a folder in ``trash/``, never a half-deleted version that looks
  valid; the next gc empties ``trash/`` first.
* Two gcs at once: an exclusive ``flock`` on ``STORE/.gc.lock``; the second one fails with a clear error.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data_catalog.layout import pid_alive, tmp_dirs, version_dir, versions_root
from data_catalog.versions import list_versions
from shared.errors import ConfigError, InputError

TRASH = "trash"
LOCK = ".gc.lock"
DEFAULT_GRACE_S = 600.0


@dataclass(frozen=True)
class VersionPlan:
    """One version and what gc does with it: ``action`` is ``remove`` or ``keep``; ``reason`` says why."""

    id: str
    created: str
    bytes: int
    action: str
    reason: str


@dataclass(frozen=True)
class GcPlan:
    store: Path
    versions: tuple[VersionPlan, ...]
    trash: tuple[Path, ...]  # leftovers of earlier gcs, emptied first
    trash_bytes: int
    bytes_freed: int  # what removing the versions to remove and emptying trash/ gives back (freed_bytes)

    @property
    def to_remove(self) -> tuple[VersionPlan, ...]:
        return tuple(v for v in self.versions if v.action == "remove")

    @property
    def busy(self) -> tuple[VersionPlan, ...]:
        return tuple(v for v in self.versions if v.reason.startswith("busy"))


@dataclass
class GcResult:
    removed: list[str] = field(default_factory=list)
    trash_emptied: list[Path] = field(default_factory=list)
    bytes_freed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why (became busy, vanished)


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def freed_bytes(paths: Sequence[Path]) -> int:
    """Bytes that deleting every file under ``paths`` gives back: each file (inode) counted once, and only when
    all its hard links are among them (a shard that ``--retry-failed`` hard-linked into a version that stays
    keeps its data)."""
    seen: dict[tuple[int, int], tuple[int, int, int]] = {}  # (dev, inode) -> (size, links, links seen)
    for path in paths:
        for root, _dirs, files in os.walk(path):
            for f in files:
                try:
                    s = os.lstat(os.path.join(root, f))
                except FileNotFoundError:
                    continue
                size, links, n = seen.get((s.st_dev, s.st_ino), (s.st_size, s.st_nlink, 0))
                seen[(s.st_dev, s.st_ino)] = (size, links, n + 1)
    return sum(size for size, links, n in seen.values() if n >= links)


def _newest_mtime(path: Path) -> float:
    newest = 0.0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                pass
    return newest


def writer_activity(vdir: str | Path, grace_s: float = DEFAULT_GRACE_S, now: float | None = None) -> str | None:
    """Why version folder ``vdir`` may have a live writer (a sentence), or None when it looks idle."""
    vdir = Path(vdir)
    now = time.time() if now is None else now
    host = socket.gethostname()
    for p in tmp_dirs(vdir):
        parts = p.name.rsplit("-", 2)  # [".tmp-<scene>-<host>", pid, uuid], as store.ShardWriter names them
        if len(parts) == 3 and parts[1].isdigit() and parts[0].endswith("-" + host):
            if pid_alive(int(parts[1])):
                return f"shard being written by live pid {parts[1]} ({p.name})"
        else:
            age = now - _newest_mtime(p) if p.exists() else float("inf")
            if age < grace_s:
                return f"shard being written on another host ({p.name}, touched {age:.0f} s ago)"
    newest = max(_newest_mtime(vdir), vdir.stat().st_mtime if vdir.exists() else 0.0)
    if now - newest < grace_s:
        return f"modified {now - newest:.0f} s ago (< grace {grace_s:.0f} s)"
    return None


def _trash_dirs(store: Path) -> list[Path]:
    t = store / TRASH
    return sorted(p for p in t.iterdir()) if t.is_dir() else []


def _resolve(docs: Sequence[dict], prefix: str, store: Path) -> str:
    hits = [d["id"] for d in docs if d["id"].startswith(prefix)]
    if len(hits) != 1:
        what = "no" if not hits else "several"
        raise InputError(f"--keep {prefix!r}: {what} version(s) match; versions: "
                         f"{', '.join(d['id'] for d in docs) or '(none)'}", store)
    return hits[0]


def plan_gc(store: str | Path, keep: Sequence[str] = (), keep_latest: int = 1,
            grace_s: float = DEFAULT_GRACE_S) -> GcPlan:
    """What a gc would do (reads only). ``keep``: ids or unique prefixes; ``keep_latest``: keep the N most
    recently created versions (>= 0); ``grace_s``: a version modified more recently is busy (>= 0)."""
    store = Path(store)
    if keep_latest < 0:
        raise ConfigError("keep_latest", keep_latest, "must be >= 0")
    if grace_s < 0:
        raise ConfigError("grace_s", grace_s, "must be >= 0")
    if not versions_root(store).is_dir():
        raise InputError("not a store (no versions/ folder)", store)
    docs = list_versions(store)  # oldest first
    named = {_resolve(docs, k, store) for k in keep}
    latest = {d["id"] for d in docs[len(docs) - keep_latest:]} if keep_latest else set()
    now = time.time()
    out = []
    for d in docs:
        vdir = version_dir(store, d["id"])
        size = tree_bytes(vdir)
        if d["id"] in named:
            action, reason = "keep", "named by --keep"
        elif d["id"] in latest:
            action, reason = "keep", f"among the {keep_latest} latest"
        else:
            busy = writer_activity(vdir, grace_s, now)
            action, reason = ("keep", f"busy: {busy}") if busy else ("remove", "not kept")
        out.append(VersionPlan(d["id"], d.get("created", ""), size, action, reason))
    trash = _trash_dirs(store)
    gone = [version_dir(store, v.id) for v in out if v.action == "remove"] + trash
    return GcPlan(store, tuple(out), tuple(trash), sum(tree_bytes(p) for p in trash), freed_bytes(gone))


def _lock(store: Path):
    import fcntl

    fh = open(store / LOCK, "a+")  # noqa: SIM115 (held until collect() ends)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise InputError("another calico catalog gc is running on this store (lock held)", store / LOCK)
    return fh


def collect(store: str | Path, plan: GcPlan, grace_s: float = DEFAULT_GRACE_S) -> GcResult:
    """Carry out ``plan``: empty ``trash/``, then move each version to remove into ``trash/`` and delete it.

    Each version is checked for a live writer again right before its rename (the plan may be old); one that
    became busy is skipped and reported in ``GcResult.skipped``.
    """
    store = Path(store)
    res = GcResult()
    fh = _lock(store)
    try:
        for p in _trash_dirs(store):  # leftovers of a crashed gc, and this plan's
            res.bytes_freed += freed_bytes([p])
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            res.trash_emptied.append(p)
        trash = store / TRASH
        for v in plan.to_remove:
            vdir = version_dir(store, v.id)
            if not vdir.is_dir():
                res.skipped[v.id] = "gone already"
                continue
            busy = writer_activity(vdir, grace_s)
            if busy:
                res.skipped[v.id] = f"busy: {busy}"
                continue
            trash.mkdir(exist_ok=True)
            dst = trash / f"{v.id}-{uuid.uuid4().hex[:8]}"
            size = freed_bytes([vdir])
            os.rename(vdir, dst)  # atomic: the version disappears from versions/ whole
            shutil.rmtree(dst)
            res.removed.append(v.id)
            res.bytes_freed += size
        if trash.is_dir() and not any(trash.iterdir()):
            trash.rmdir()
    finally:
        fh.close()
    return res


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n} B"
