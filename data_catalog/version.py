"""Store version ids: a content hash of everything that determines what a store version holds.

A version id is the first 16 hex digits of the SHA-256 of a canonical JSON (sorted keys, no whitespace) of
:class:`VersionSpec`:

* ``dataset``: the nuScenes version name (``v1.0-trainval``, ...) and the *input manifest* hash (below);
* ``config``: every preprocessing parameter, ``SweepConfig.to_dict()``;
* ``sweeps``: ``keyframes`` or ``all``; ``seed``: the global seed of the augmentation parameters;
* ``code``: the code version, a hash of the source files that compute the stored numbers
  (:data:`CODE_FILES`: the per-sweep stages in ``preprocess/`` and the readers in ``shared/``) and the store
  format version :data:`FORMAT_VERSION` (which stands for ``data_catalog``'s encoding).

The input manifest (:func:`input_manifest`) hashes the dataset's metadata tables (the content of every
``<dataroot>/<version>/*.json``) and the *size* of every input file the stage reads (the LiDAR point files of
the chosen sweeps and the keyframe camera images), by path relative to the dataroot, ``-1`` for a missing
file. Content hashes of the point files themselves (300 GB on trainval) would take longer than the
preprocessing; sizes catch truncated, missing and replaced-by-another-format files, and the tables name every
file, so an edit that keeps a file's size is the one change not seen (documented in docs/store.md).
Modification times are left out on purpose: copying a dataset changes them and nothing else.

Not in the id (recorded in ``version.json`` lineage instead): the dataroot's absolute path, the backend
(CPU and GPU must agree, see the developer guide), library versions, host and time.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from shared.errors import ConfigError

#: Version of the on-disk encoding (:mod:`data_catalog.format`, written by :mod:`data_catalog.writer`). Bump on
#: any change of layout, quantisation or array set: it is part of every version id. 2: the errors tables have a
#: ``level`` column (a missing camera image is a ``warning`` row of a sweep kept without that camera, no longer a
#: failed sweep), shard manifests count ``warnings`` and record ``inputs_sha256``, ``version.json`` its own
#: checksum, and the version-level tables have a manifest (``tables.json``). Stores of format 1 read as before.
FORMAT_VERSION = 2

#: Key of ``version.json`` holding the SHA-256 of the rest of the document (:func:`doc_checksum`).
DOC_SHA256 = "doc_sha256"

#: Sweep selections.
SWEEP_MODES: tuple[str, ...] = ("keyframes", "all")

#: Source files (relative to the repository root) whose content is the "code version". Orchestration
#: (preprocess/run.py, the CLI) is left out: it does not change the stored numbers. shared/region_quality.py
#: computes the audit columns of the sweeps tables (its rule's defaults are code, not configuration).
CODE_FILES: tuple[str, ...] = (
    "preprocess/ground.py",
    "preprocess/cluster.py",
    "preprocess/pooling.py",
    "preprocess/project.py",
    "preprocess/augment.py",
    "shared/augment_params.py",
    "preprocess/sweep.py",
    "shared/pointcloud.py",
    "shared/nuscenes_io.py",
    "shared/records.py",
    "shared/region_quality.py",
)

_MISSING = object()
_REPO_ROOT = Path(__file__).resolve().parent.parent


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, compact separators, ASCII, floats as Python's repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def doc_checksum(doc: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``doc`` without its :data:`DOC_SHA256` key (what ``version.json``
    records about itself, and ``verify`` recomputes)."""
    return sha256_bytes(canonical_json({k: v for k, v in doc.items() if k != DOC_SHA256}).encode())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's content, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def code_version(root: str | Path | None = None, files: Iterable[str] = CODE_FILES) -> dict[str, Any]:
    """``{"sha256": ..., "format_version": ..., "files": {relpath: sha256 or None}}`` of :data:`CODE_FILES`.

    A missing file hashes as None (so adding it later changes the version).
    """
    root = Path(root) if root is not None else _REPO_ROOT
    per_file = {}
    for rel in files:
        p = root / rel
        per_file[rel] = sha256_file(p) if p.is_file() else None
    digest = sha256_bytes(canonical_json({"files": per_file, "format_version": FORMAT_VERSION}).encode())
    return {"sha256": digest, "format_version": FORMAT_VERSION, "files": per_file}


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def input_manifest(dataroot: str | Path, version: str, input_files: Iterable[str]) -> dict[str, Any]:
    """Hash of a dataset's tables and input file sizes (see the module docstring).

    dataroot/version: the nuScenes dataroot and version folder; input_files: paths relative to the dataroot
    of every file the stage reads. Returns ``{"sha256", "tables": {name: sha256}, "files": n, "bytes": total,
    "missing": n}``; only ``sha256`` enters the version id.
    """
    root = Path(dataroot)
    tables = {p.name: sha256_file(p) for p in sorted((root / version).glob("*.json"))}
    h = hashlib.sha256()
    h.update(canonical_json(tables).encode())
    n = total = missing = 0
    for rel in sorted(set(input_files)):
        size = _file_size(root / rel)
        h.update(f"{rel}\t{size}\n".encode())
        n += 1
        if size < 0:
            missing += 1
        else:
            total += size
    return {"sha256": h.hexdigest(), "tables": tables, "files": n, "bytes": total, "missing": missing}


def nuscenes_input_files(nusc, sweeps: str) -> list[str]:
    """Relative paths of the files a run reads from an opened devkit ``NuScenes``: the LIDAR_TOP point files
    (keyframes only for ``sweeps='keyframes'``) and the camera images of every keyframe."""
    check_sweeps(sweeps)
    out = []
    for sd in nusc.sample_data:
        channel = sd.get("channel", "")
        if channel == "LIDAR_TOP":
            if sweeps == "all" or sd["is_key_frame"]:
                out.append(sd["filename"])
        elif channel.startswith("CAM_") and sd["is_key_frame"]:
            out.append(sd["filename"])
    return out


def check_sweeps(sweeps: str) -> str:
    if sweeps not in SWEEP_MODES:
        raise ConfigError("sweeps", sweeps, f"expected one of {', '.join(SWEEP_MODES)}")
    return sweeps


@dataclass(frozen=True)
class VersionSpec:
    """Everything a store version's content depends on; :attr:`id` is its hash.

    dataset_version: nuScenes version name; manifest_sha256: :func:`input_manifest` hash; config:
    ``SweepConfig.to_dict()``; sweeps: ``keyframes|all``; seed: global augmentation seed; code_sha256:
    :func:`code_version` hash (includes :data:`FORMAT_VERSION`).
    """

    dataset_version: str
    manifest_sha256: str
    config: Mapping[str, Mapping[str, Any]]
    sweeps: str
    seed: int
    code_sha256: str
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        check_sweeps(self.sweeps)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("seed", self.seed, "must be an integer")
        # freeze the config as plain JSON (a deep copy; also rejects NaN and non-JSON values early)
        try:
            object.__setattr__(self, "config", json.loads(canonical_json(dict(self.config))))
        except (TypeError, ValueError) as exc:
            raise ConfigError("config", self.config, f"not JSON-able ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def canonical(self) -> str:
        """The canonical JSON that is hashed."""
        return canonical_json(self.to_dict())

    @property
    def id(self) -> str:
        """First 16 hex digits of SHA-256 of :attr:`canonical`."""
        return sha256_bytes(self.canonical.encode())[:16]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VersionSpec":
        return cls(**{k: d[k] for k in ("dataset_version", "manifest_sha256", "config", "sweeps", "seed",
                                        "code_sha256", "format_version")})


def diff_specs(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Flat ``{dotted.key: (a value, b value)}`` of the leaves that differ between two nested dicts."""
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, _MISSING), b.get(k, _MISSING)
        key = f"{prefix}{k}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out.update(diff_specs(va, vb, key + "."))
        elif va != vb:
            out[key] = (None if va is _MISSING else va, None if vb is _MISSING else vb)
    return out


def non_default(defaults: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``{dotted.key: value}`` of the parameters of ``config`` that differ from ``defaults``."""
    return {k: v[1] for k, v in diff_specs(defaults, config).items()}
