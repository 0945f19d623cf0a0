"""Checking a store version against its manifests: what is missing, what is corrupt.

For each committed shard: every file listed in ``manifest.json`` exists with the listed size and SHA-256, no
unlisted file sits in the shard, the content hash matches, and the counts in the manifest match the arrays'
shapes (read from the Zarr metadata only) and the rows of its errors table. Scenes named in ``version.json``
without a committed shard are *missing*; ``.tmp-*`` folders are listed as leftovers of interrupted writers
(never read).

The version's own files (:func:`verify_version_files`): ``version.json`` is valid JSON, its id is its folder's
name and the hash of its spec, and its checksum (``doc_sha256``) matches; the version-level tables
(``sweeps``, ``errors``, ``scenes.parquet``) match ``tables.json`` (bytes, SHA-256, rows) and were derived from
the shards committed now (not stale). A store written before format 2 records neither checksum: those are
reported as *not recorded* (a note, not a problem), and its tables are checked for being readable Parquet
whose row counts match the shards.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from data_catalog.layout import (ERRORS_TABLE, MANIFEST, SCENES_TABLE, SWEEPS_TABLE, TABLES_MANIFEST,
                                 VERSION_TABLES, committed_scenes, content_hash, read_manifest, shard_dir,
                                 tmp_dirs)
from data_catalog.version import DOC_SHA256, VersionSpec, doc_checksum, sha256_file
from data_catalog.versions import read_version_json
from shared.errors import CalicoError, InputError


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
    #: Problems of version.json and the version-level tables (:func:`verify_version_files`).
    version_problems: list[str] = field(default_factory=list)
    #: What could not be checked (checksums an older store does not record).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt and not self.version_problems

    def lines(self) -> list[str]:
        files = (f"{len(self.version_problems)} problem(s) in version.json and the version tables"
                 if self.version_problems else "version.json and version tables ok")
        out = [f"version {self.version}: {len(self.checked)} shard(s) checked, {len(self.missing)} missing, "
               f"{len(self.corrupt)} corrupt; {files}"]
        out += [f"missing: {s}" for s in self.missing]
        for c in self.corrupt:
            out += [f"corrupt: {c.scene}: {p}" for p in c.problems]
        out += [f"corrupt: {p}" for p in self.version_problems]
        out += [f"not checked: {n}" for n in self.notes]
        out += [f"leftover (interrupted write, ignored): {p}" for p in self.leftovers]
        return out


def _array_shape(shard: Path, name: str) -> tuple[int, ...] | None:
    meta = shard / name / "zarr.json"
    if not meta.is_file():
        return None
    return tuple(json.loads(meta.read_text())["shape"])


def verify_shard(shard: str | Path, checksums: bool = True) -> list[str]:
    """Problems found in one committed shard (empty list: it matches its manifest). ``checksums=False``: file
    sizes only, no file read (what the driver checks before reusing a shard of another version)."""
    shard = Path(shard)
    problems: list[str] = []
    try:
        man = read_manifest(shard)
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
        if checksums and sha256_file(p) != want["sha256"]:
            problems.append(f"{rel}: checksum mismatch (content changed)")
    for p in sorted(shard.rglob("*")):
        rel = p.relative_to(shard).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in files:
            problems.append(f"{rel}: not in the manifest")
    if content_hash(files) != man.get("content_sha256"):
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
    if checksums and not any(p.startswith(ERRORS_TABLE) for p in problems) and \
            (shard / ERRORS_TABLE).is_file():
        rows = _parquet_rows(shard / ERRORS_TABLE)
        want = counts.get("errors", 0) + counts.get("warnings", 0)
        if isinstance(rows, str):
            problems.append(f"{ERRORS_TABLE}: {rows}")
        elif rows != want:
            problems.append(f"{ERRORS_TABLE}: {rows} row(s), manifest counts {want} error(s) and warning(s)")
    return problems


def _parquet_rows(path: Path) -> int | str:
    """Rows of a Parquet file, or why it cannot be read."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        return f"not a readable Parquet file ({exc})"


def _check_version_json(vdir: Path) -> tuple[dict | None, list[str], list[str]]:
    """(the document or None, problems, notes) of ``version.json``."""
    try:
        doc = read_version_json(vdir)
    except InputError as exc:
        return None, [str(exc)], []  # names the file
    problems, notes = [], []
    if doc["id"] != vdir.name:
        problems.append(f"version.json: id {doc['id']} but the folder is {vdir.name}")
    try:
        spec_id = VersionSpec.from_dict(doc["spec"]).id
    except (KeyError, TypeError, ValueError, CalicoError) as exc:
        problems.append(f"version.json: spec unreadable ({type(exc).__name__}: {exc})")
    else:
        if spec_id != doc["id"]:
            problems.append(f"version.json: its spec hashes to {spec_id}, not to its id {doc['id']}")
    if DOC_SHA256 not in doc:
        notes.append("version.json: checksum not recorded (written before format 2)")
    elif doc_checksum(doc) != doc[DOC_SHA256]:
        problems.append("version.json: checksum mismatch (content changed)")
    return doc, problems, notes


def _check_tables_against_shards(vdir: Path, committed: list[str]) -> list[str]:
    """Without ``tables.json`` (a store of format 1): each table readable, its rows those of the shards."""
    problems = []
    counts = [read_manifest(shard_dir(vdir, s))["counts"] for s in committed]
    want = {SWEEPS_TABLE: sum(c.get("sweeps", 0) for c in counts),
            ERRORS_TABLE: sum(c.get("errors", 0) + c.get("warnings", 0) for c in counts),
            SCENES_TABLE: len(committed)}
    for name in VERSION_TABLES:
        rows = _parquet_rows(vdir / name)
        if isinstance(rows, str):
            problems.append(f"{name}: {rows}")
        elif rows != want[name]:
            problems.append(f"{name}: {rows} row(s), the committed shards have {want[name]} (stale: rerun "
                            "`calico preprocess run` to derive it again)")
    return problems


def verify_version_files(vdir: str | Path, committed: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes) of a version's ``version.json`` and version-level tables (see the module docstring).
    ``committed``: the committed scenes (default: read)."""
    vdir = Path(vdir)
    committed = committed_scenes(vdir) if committed is None else committed
    _doc, problems, notes = _check_version_json(vdir)
    absent = [n for n in VERSION_TABLES if not (vdir / n).is_file()]
    if absent:
        return problems + [f"{n}: missing (a run derives it when it ends: rerun `calico preprocess run`)"
                           for n in absent], notes
    try:
        man = json.loads((vdir / TABLES_MANIFEST).read_text())
    except FileNotFoundError:
        notes.append(f"{', '.join(VERSION_TABLES)}: checksums not recorded (written before format 2; "
                     "checked against the shards' counts instead)")
        return problems + _check_tables_against_shards(vdir, committed), notes
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return problems + [f"{TABLES_MANIFEST}: unreadable ({exc})"], notes
    for name in VERSION_TABLES:
        want = man.get("tables", {}).get(name)
        p = vdir / name
        if want is None:
            problems.append(f"{name}: not in {TABLES_MANIFEST}")
        elif p.stat().st_size != want["bytes"]:
            problems.append(f"{name}: size {p.stat().st_size} bytes, {TABLES_MANIFEST} says {want['bytes']}")
        elif sha256_file(p) != want["sha256"]:
            problems.append(f"{name}: checksum mismatch (content changed)")
    now = {s: read_manifest(shard_dir(vdir, s)).get("content_sha256") for s in committed}
    then = man.get("shards", {})
    if now != then:
        changed = sorted(s for s in set(now) | set(then) if now.get(s) != then.get(s))
        problems.append(f"version tables are stale: derived before {', '.join(changed)} was committed or "
                        "replaced (rerun `calico preprocess run` to derive them again)")
    return problems, notes


def verify_version(vdir: str | Path) -> VerifyReport:
    """Check every committed shard of a version folder, list the expected scenes without a shard, and check
    the version's own files (:func:`verify_version_files`)."""
    vdir = Path(vdir)
    try:
        info = read_version_json(vdir)
    except InputError:  # reported by verify_version_files; the scenes expected are then unknown
        info = {"id": vdir.name}
    rep = VerifyReport(version=info["id"], path=vdir)
    committed = committed_scenes(vdir)
    expected = info.get("scenes", [])
    rep.missing = [s for s in expected if s not in committed]
    # a shard folder without a manifest can only be a hand-made or damaged one (commits are renames)
    shards_root = vdir / "shards"
    if shards_root.is_dir():
        for d in sorted(shards_root.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and not (d / MANIFEST).is_file():
                rep.corrupt.append(ShardProblem(d.name, ["manifest.json missing (shard not committed)"]))
    for s in committed:
        rep.checked.append(s)
        problems = verify_shard(shard_dir(vdir, s))
        if problems:
            rep.corrupt.append(ShardProblem(s, problems))
    rep.leftovers = [p.name for p in tmp_dirs(vdir)]
    rep.version_problems, rep.notes = verify_version_files(vdir, committed)
    return rep
