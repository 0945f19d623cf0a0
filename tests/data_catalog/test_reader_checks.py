"""The reader checks every shard it opens against its manifest: sizes always, SHA-256 by default and once per shard
per process (again when a file's size or mtime changed); errors name the shard file."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_catalog import reader
from data_catalog.reader import Shard, open_version
from shared.errors import InputError


@pytest.fixture
def store_copy(tiny_store, tmp_path) -> tuple[Path, str]:
    """(store, version id): a copy of the session's tiny store, free to damage."""
    store, summary = tiny_store
    shutil.copytree(store, tmp_path / "store")
    return tmp_path / "store", summary.version


def shard_file(store: Path, vid: str, rel: str, scene: str = "scene-0061") -> Path:
    return store / "versions" / vid / "shards" / scene / rel


def flip_low_bytes(path: Path, n: int = 3) -> None:
    """Flip the lowest mantissa byte of the first ``n`` float32 values (the file keeps its size; the values move
    by a relative ~1e-5, so the data still decodes and trains)."""
    data = bytearray(path.read_bytes())
    for i in range(n):
        data[4 * i] ^= 0xFF
    path.write_bytes(bytes(data))


AUG = "aug_params/c/0/0/0"  # stored raw (the bytes codec only): 3 sweeps x 2 views x 7 float32


def test_a_clean_version_opens_and_reads(store_copy):
    store, vid = store_copy
    v = open_version(store, vid)
    assert [len(v.scene(s)) for s in v.scenes()] == [3, 3]


def test_flipped_bytes_fail_naming_the_file_unless_checksums_are_off(store_copy):
    store, vid = store_copy
    target = shard_file(store, vid, AUG)
    before = Shard(target.parents[4]).array("aug_params").copy()
    flip_low_bytes(target)
    with pytest.raises(InputError) as exc:
        open_version(store, vid).scene("scene-0061")
    assert exc.value.path == str(target) and "SHA-256" in str(exc.value) and "scene-0061" in str(exc.value)
    open_version(store, vid).scene("scene-0103")  # the other shard is fine
    # sizes only: the shard opens and its (changed) values are read
    got = open_version(store, vid, verify_checksums=False).scene("scene-0061").array("aug_params")
    assert not np.array_equal(got, before) and np.allclose(got, before, rtol=1e-4)


def test_a_size_mismatch_or_a_missing_file_fails_even_without_checksums(store_copy):
    store, vid = store_copy
    target = shard_file(store, vid, AUG)
    target.write_bytes(target.read_bytes()[:-4])
    with pytest.raises(InputError, match="164 bytes, the shard's manifest.json says 168") as exc:
        open_version(store, vid, verify_checksums=False).scene("scene-0061")
    assert exc.value.path == str(target)
    target.unlink()
    with pytest.raises(InputError, match="missing, but listed") as exc:
        Shard(target.parents[4], verify_checksums=False)
    assert exc.value.path == str(target)


def test_checksums_are_computed_once_per_shard_and_again_after_a_change(store_copy, monkeypatch):
    store, vid = store_copy
    hashed = []
    real = reader.sha256_file
    monkeypatch.setattr(reader, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    monkeypatch.setattr(reader, "_VERIFIED", {})
    shard = shard_file(store, vid, "")
    n_files = len(Shard(shard).manifest["files"])
    assert len(hashed) == n_files
    Shard(shard)
    open_version(store, vid).scene("scene-0061")
    assert len(hashed) == n_files  # cached: same sizes and mtimes
    target = shard_file(store, vid, AUG)
    flip_low_bytes(target)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))  # a visible mtime change
    with pytest.raises(InputError, match="SHA-256"):
        Shard(shard)
    assert len(hashed) > n_files
