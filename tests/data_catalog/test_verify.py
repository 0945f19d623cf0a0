"""verify: missing shards, corrupted chunks, changed or extra files, count mismatches."""
from __future__ import annotations

import json
import shutil

import pytest

from data_catalog import store as st
from data_catalog.reader import open_version
from data_catalog.verify import verify_shard, verify_version
from data_catalog.version import VersionSpec
from preprocess.sweep import SweepConfig


@pytest.fixture
def version(tmp_path, make_shard):
    spec = VersionSpec(dataset_version="v", manifest_sha256="m", config=SweepConfig().to_dict(), sweeps="all",
                       seed=0, code_sha256="c")
    vdir, _ = st.create_version(tmp_path / "store", spec, {"scenes": ["scene-a", "scene-b", "scene-c"]})
    make_shard("scene-a", sizes=(3000, 2000), seed=0, vdir=vdir)
    make_shard("scene-b", sizes=(1000,), seed=1, vdir=vdir)
    return vdir


def _chunk_files(shard):
    return [p for p in shard.rglob("c/*") if p.is_file()] + [p for p in shard.rglob("c/*/*") if p.is_file()]


def test_clean_version_reports_only_the_missing_scene(version):
    rep = verify_version(version)
    assert rep.checked == ["scene-a", "scene-b"]
    assert rep.missing == ["scene-c"] and rep.corrupt == [] and not rep.ok
    assert any("missing: scene-c" == line for line in rep.lines())


def test_flipped_bytes_in_a_chunk_are_found(version):
    shard = version / "shards" / "scene-a"
    target = shard / "xyz" / "c" / "0" / "0"
    if not target.is_file():  # single-chunk array without a shard index
        target = shard / "xyz" / "c" / "0"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    rep = verify_version(version)
    [problem] = rep.corrupt
    assert problem.scene == "scene-a"
    rel = target.relative_to(shard).as_posix()
    assert any(p.startswith(rel) and "checksum" in p for p in problem.problems)
    assert verify_shard(version / "shards" / "scene-b") == []


def test_deleted_extra_and_resized_files_and_a_removed_shard(version):
    a = version / "shards" / "scene-a"
    (a / "region_id" / "c" / "0").unlink()
    (a / "stray.bin").write_bytes(b"x")
    with open(a / "sweeps.parquet", "ab") as fh:
        fh.write(b"\0")
    problems = verify_shard(a)
    assert any(p.startswith("region_id/c/0: missing") for p in problems)
    assert any(p.startswith("stray.bin: not in the manifest") for p in problems)
    assert any(p.startswith("sweeps.parquet: size") for p in problems)
    shutil.rmtree(version / "shards" / "scene-b")
    rep = verify_version(version)
    assert rep.missing == ["scene-b", "scene-c"]


def test_manifest_counts_are_checked_against_the_arrays(version):
    a = version / "shards" / "scene-a"
    man = json.loads((a / "manifest.json").read_text())
    man["counts"]["points"] += 1
    (a / "manifest.json").write_text(json.dumps(man))
    assert any("points in the array" in p for p in verify_shard(a))


def test_a_shard_folder_without_manifest_is_reported(version):
    (version / "shards" / "scene-c").mkdir()
    rep = verify_version(version)
    assert [c.scene for c in rep.corrupt] == ["scene-c"]
    assert open_version(version.parent.parent).scenes() == ["scene-a", "scene-b"]
