"""Checking a store version against its manifests: what is missing, what is corrupt.

For each committed shard: every file listed in ``manifest.json`` exists with the listed size and SHA-256, no
unlisted file sits in the shard, the content hash matches, and the counts in the manifest match the arrays'
shapes (read from the Zarr metadata only). Scenes named in ``version.json`` without a committed shard are
*missing*; ``.tmp-*`` folders are listed as leftovers of interrupted writers (never read).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from data_catalog import store as st
from data_catalog.version import sha256_file


@dataclass
class ShardProblem:
    scene: str
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    """Result of :func:`verify_version`. ``ok`` when nothing is missing or corrupt."""

    version: str
    path: Path
    checked: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[ShardProblem] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def lines(self) -> list[str]:
        out = [f"version {self.version}: {len(self.checked)} shard(s) checked, {len(self.missing)} missing, "
               f"{len(self.corrupt)} corrupt"]
        out += [f"missing: {s}" for s in self.missing]
        for c in self.corrupt:
            out += [f"corrupt: {c.scene}: {p}" for p in c.problems]
        out += [f"leftover (interrupted write, ignored): {p}" for p in self.leftovers]
        return out


def _array_shape(shard: Path, name: str) -> tuple[int, ...] | None:
    meta = shard / name / "zarr.json"
    if not meta.is_file():
        return None
    return tuple(json.loads(meta.read_text())["shape"])


def verify_shard(shard: str | Path) -> list[str]:
    """Problems found in one committed shard (empty list: it matches its manifest)."""
    shard = Path(shard)
    problems: list[str] = []
    try:
        man = st.read_manifest(shard)
    except (OSError, ValueError) as exc:
        return [f"manifest.json unreadable ({exc})"]
    files = man.get("files", {})
    for rel, want in files.items():
        p = shard / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = p.stat().st_size
        if size != want["bytes"]:
            problems.append(f"{rel}: size {size} bytes, manifest says {want['bytes']}")
            continue
        if sha256_file(p) != want["sha256"]:
            problems.append(f"{rel}: checksum mismatch (content changed)")
    for p in sorted(shard.rglob("*")):
        rel = p.relative_to(shard).as_posix()
        if p.is_file() and rel != st.MANIFEST and rel not in files:
            problems.append(f"{rel}: not in the manifest")
    if st.content_hash(files) != man.get("content_sha256"):
        problems.append("content_sha256 does not match the listed files")
    counts = man.get("counts", {})
    checks = (("offsets", "sweeps", 1), ("flags", "points", 0), ("proj_cam", "pairs", 0),
              ("region_id", "regions", 0))
    for arr, key, extra in checks:
        shape = _array_shape(shard, arr)
        if shape is None:
            problems.append(f"{arr}/zarr.json: missing")
        elif key in counts and shape[0] != counts[key] + extra:
            problems.append(f"{arr}: {shape[0] - extra} {key} in the array, manifest says {counts[key]}")
    return problems


def verify_version(vdir: str | Path) -> VerifyReport:
    """Check every committed shard of a version folder and list the expected scenes without a shard."""
    vdir = Path(vdir)
    info = st.read_version_json(vdir)
    rep = VerifyReport(version=info["id"], path=vdir)
    committed = st.committed_scenes(vdir)
    expected = info.get("scenes", [])
    rep.missing = [s for s in expected if s not in committed]
    # a shard folder without a manifest can only be a hand-made or damaged one (commits are renames)
    shards_root = vdir / "shards"
    if shards_root.is_dir():
        for d in sorted(shards_root.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and not (d / st.MANIFEST).is_file():
                rep.corrupt.append(ShardProblem(d.name, ["manifest.json missing (shard not committed)"]))
    for s in committed:
        rep.checked.append(s)
        problems = verify_shard(st.shard_dir(vdir, s))
        if problems:
            rep.corrupt.append(ShardProblem(s, problems))
    rep.leftovers = [p.name for p in st.tmp_dirs(vdir)]
    return rep
