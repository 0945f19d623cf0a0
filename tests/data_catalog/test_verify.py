"""verify: missing shards, corrupted chunks, changed or extra files, count mismatches."""
from __future__ import annotations

import json
import shutil

import pytest

from data_catalog.layout import SWEEPS_TABLE, TABLES_MANIFEST, VERSION_TABLES
from data_catalog.reader import open_version
from data_catalog.tables import finalize
from data_catalog.verify import verify_shard, verify_version
from data_catalog.version import DOC_SHA256, VersionSpec, doc_checksum
from data_catalog.versions import create_version
from preprocess.sweep import SweepConfig


@pytest.fixture
def version(tmp_path, make_shard):
    spec = VersionSpec(dataset_version="v", manifest_sha256="m", config=SweepConfig().to_dict(), sweeps="all",
                       seed=0, code_sha256="c")
    vdir, _ = create_version(tmp_path / "store", spec, {"scenes": ["scene-a", "scene-b", "scene-c"]})
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


@pytest.mark.parametrize("count, problem", [("points", "points in the array"),
                                            ("errors", "errors.parquet: 1 row(s), manifest counts 2")])
def test_manifest_counts_are_checked_against_the_arrays_and_tables(version, count, problem):
    a = version / "shards" / "scene-a"
    man = json.loads((a / "manifest.json").read_text())
    man["counts"][count] += 1
    (a / "manifest.json").write_text(json.dumps(man))
    assert any(problem in p for p in verify_shard(a))


def test_a_shard_folder_without_manifest_is_reported(version):
    (version / "shards" / "scene-c").mkdir()
    rep = verify_version(version)
    assert [c.scene for c in rep.corrupt] == ["scene-c"]
    assert open_version(version.parent.parent).scenes() == ["scene-a", "scene-b"]


@pytest.fixture
def finalized(version):
    finalize(version)
    return version


def test_version_json_and_version_tables_of_a_clean_version(finalized):
    rep = verify_version(finalized)
    assert rep.version_problems == [] and rep.notes == []
    assert "version.json and version tables ok" in rep.lines()[0]


def test_a_version_never_finalized_has_no_tables(version):
    rep = verify_version(version)
    assert sorted(p.split(":")[0] for p in rep.version_problems) == sorted(VERSION_TABLES)
    assert all("missing" in p for p in rep.version_problems)


def test_changed_version_json_and_tables_are_found(finalized):
    vj = finalized / "version.json"
    doc = json.loads(vj.read_text())
    doc["scenes"] = ["scene-a"]  # a hand edit: the version would no longer miss scene-b, scene-c
    vj.write_text(json.dumps(doc))
    t = finalized / SWEEPS_TABLE
    data = bytearray(t.read_bytes())
    data[len(data) // 2] ^= 0xFF
    t.write_bytes(bytes(data))
    rep = verify_version(finalized)
    assert "version.json: checksum mismatch (content changed)" in rep.version_problems
    assert f"{SWEEPS_TABLE}: checksum mismatch (content changed)" in rep.version_problems
    assert not rep.ok and any(line.startswith("corrupt: version.json") for line in rep.lines())
    doc["spec"]["seed"] = 1  # the spec no longer hashes to the id
    doc[DOC_SHA256] = doc_checksum(doc)
    vj.write_text(json.dumps(doc))
    assert any("its spec hashes to" in p for p in verify_version(finalized).version_problems)
    vj.write_text("{not json")
    rep = verify_version(finalized)  # reported, not raised
    assert rep.version == finalized.name and any("not valid JSON" in p for p in rep.version_problems)


def test_tables_derived_before_a_commit_are_stale(finalized, make_shard):
    make_shard("scene-c", sizes=(100,), seed=2, vdir=finalized)
    [problem] = verify_version(finalized).version_problems
    assert "stale" in problem and "scene-c" in problem
    finalize(finalized)
    assert verify_version(finalized).version_problems == []


def test_an_older_store_without_checksums_says_not_recorded(finalized):
    """A store of format 1 records no checksum of version.json or of its tables: verify says so (not a
    problem) and checks the tables' rows against the shards instead."""
    vj = finalized / "version.json"
    doc = json.loads(vj.read_text())
    del doc[DOC_SHA256]
    vj.write_text(json.dumps(doc))
    (finalized / TABLES_MANIFEST).unlink()
    rep = verify_version(finalized)
    assert rep.version_problems == [] and len(rep.notes) == 2
    assert all("not recorded" in n for n in rep.notes) and any(line.startswith("not checked: ") for line in rep.lines())
    shutil.rmtree(finalized / "shards" / "scene-b")  # the tables now hold a scene that is gone
    problems = verify_version(finalized).version_problems
    assert {p.split(":")[0] for p in problems} == set(VERSION_TABLES) and all("stale" in p for p in problems)
