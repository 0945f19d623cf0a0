"""The versions of a store: creating ``version.json`` (first writer wins), reading and listing version documents,
finding the same run over other inputs, and the run records kept under ``runs/`` (layout: :mod:`data_catalog.layout`;
version ids: :mod:`data_catalog.version`).
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_catalog.layout import fsync_path, version_dir, versions_root, write_file
from data_catalog.version import DOC_SHA256, doc_checksum
from shared.errors import InputError


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
        write_file(tmp, data)
        try:
            os.link(tmp, path)
            break
        except FileExistsError:
            continue
        finally:
            tmp.unlink(missing_ok=True)
    fsync_path(runs)
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
