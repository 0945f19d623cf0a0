"""Store version ids: one changed input -> a new id; the same inputs -> the same id."""
from __future__ import annotations

import os
import shutil

import pytest

from data_catalog.version import (CODE_FILES, FORMAT_VERSION, VersionSpec, canonical_json, code_version,
                                  diff_specs, input_manifest)
from data_catalog.versions import create_version, list_versions, read_version_json
from preprocess.sweep import SweepConfig
from shared.errors import ConfigError, InputError


def spec(**kw):
    base = dict(dataset_version="v1.0-mini", manifest_sha256="a" * 64, config=SweepConfig().to_dict(),
                sweeps="keyframes", seed=0, code_sha256="b" * 64)
    base.update(kw)
    return VersionSpec(**base)


def test_same_inputs_same_id_and_key_order_does_not_matter():
    a = spec()
    cfg = SweepConfig().to_dict()
    shuffled = {k: dict(reversed(list(cfg[k].items()))) for k in reversed(list(cfg))}
    b = spec(config=shuffled)
    assert a.id == b.id and len(a.id) == 16 and int(a.id, 16) >= 0
    assert VersionSpec.from_dict(a.to_dict()).id == a.id


@pytest.mark.parametrize("change", [
    {"config": SweepConfig.from_overrides({"cluster.eps": 0.6}).to_dict()},
    {"config": SweepConfig.from_overrides({"ground.seed": 1}).to_dict()},
    {"config": SweepConfig.from_overrides({"augment.num_views": 3}).to_dict()},
    {"sweeps": "all"},
    {"seed": 1},
    {"dataset_version": "v1.0-trainval"},
    {"manifest_sha256": "c" * 64},
    {"code_sha256": "d" * 64},
    {"format_version": FORMAT_VERSION + 1},
])
def test_one_change_gives_a_new_id(change):
    assert spec(**change).id != spec().id


def test_every_config_field_is_hashed():
    """Each field of each stage config, changed alone, changes the id (none is silently left out)."""
    base = spec()
    cfg = SweepConfig().to_dict()
    for section, fields in cfg.items():
        for name, value in fields.items():
            changed = {s: dict(f) for s, f in cfg.items()}
            changed[section][name] = [value, "changed"] if not isinstance(value, list) else value + [0]
            assert spec(config=changed).id != base.id, f"{section}.{name}"


def test_spec_validation():
    with pytest.raises(ConfigError, match="sweeps"):
        spec(sweeps="some")
    with pytest.raises(ConfigError, match="seed"):
        spec(seed=1.5)
    with pytest.raises(ConfigError, match="config"):
        spec(config={"cluster": {"eps": float("nan")}})


def test_canonical_json_is_sorted_and_compact():
    assert canonical_json({"b": 1, "a": [1.5, {"d": 2, "c": 3}]}) == '{"a":[1.5,{"c":3,"d":2}],"b":1}'


def _dataset(tmp_path):
    root = tmp_path / "data"
    (root / "v1.0-x").mkdir(parents=True)
    (root / "v1.0-x" / "sample_data.json").write_text('[{"token": "a"}]')
    (root / "v1.0-x" / "scene.json").write_text("[]")
    (root / "samples").mkdir()
    for i in range(3):
        (root / "samples" / f"{i}.pcd.bin").write_bytes(b"\0" * 20 * (i + 1))
    files = [f"samples/{i}.pcd.bin" for i in range(3)]
    return root, files


def test_input_manifest_sees_sizes_tables_and_missing_files_not_mtimes(tmp_path):
    root, files = _dataset(tmp_path)
    m0 = input_manifest(root, "v1.0-x", files)
    assert m0["files"] == 3 and m0["bytes"] == 120 and m0["missing"] == 0
    assert input_manifest(root, "v1.0-x", reversed(files))["sha256"] == m0["sha256"]  # order-free
    os.utime(root / files[0], (1, 1))  # a copy changes mtimes: same manifest
    assert input_manifest(root, "v1.0-x", files)["sha256"] == m0["sha256"]
    (root / files[1]).write_bytes(b"\0" * 30)  # truncated
    m1 = input_manifest(root, "v1.0-x", files)
    assert m1["sha256"] != m0["sha256"]
    (root / files[1]).write_bytes(b"\0" * 40)  # restored
    assert input_manifest(root, "v1.0-x", files)["sha256"] == m0["sha256"]
    (root / "v1.0-x" / "scene.json").write_text('[{"token": "s"}]')  # a table edit
    m2 = input_manifest(root, "v1.0-x", files)
    assert m2["sha256"] != m0["sha256"]
    (root / files[2]).unlink()
    m3 = input_manifest(root, "v1.0-x", files)
    assert m3["missing"] == 1 and m3["sha256"] != m2["sha256"]


def test_code_version_follows_the_source_files(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for rel in CODE_FILES:
        if os.path.exists(os.path.join(repo, rel)):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.join(repo, rel), tmp_path / rel)
    a = code_version(tmp_path)
    assert a == code_version(tmp_path) and a["format_version"] == FORMAT_VERSION
    assert a["sha256"] == code_version()["sha256"]  # the copy is the code
    with open(tmp_path / "preprocess" / "cluster.py", "a") as fh:
        fh.write("\n# a change\n")
    assert code_version(tmp_path)["sha256"] != a["sha256"]


def test_diff_specs():
    a = {"x": {"y": 1, "z": [1, 2]}, "w": 0}
    b = {"x": {"y": 2, "z": [1, 2]}, "v": 3, "w": 0}
    assert diff_specs(a, b) == {"x.y": (1, 2), "v": (None, 3)}


def test_create_version_once_and_rejects_a_changed_spec(tmp_path):
    s = spec()
    vdir, created = create_version(tmp_path, s, {"scenes": ["a"]})
    assert created and vdir == tmp_path / "versions" / s.id
    doc = read_version_json(vdir)
    assert doc["id"] == s.id and doc["spec"] == s.to_dict() and doc["scenes"] == ["a"]
    again, created2 = create_version(tmp_path, s, {"scenes": ["a"]})
    assert again == vdir and not created2 and read_version_json(vdir)["created"] == doc["created"]
    other = spec(seed=5)
    import json

    (tmp_path / "versions" / other.id).mkdir()
    (tmp_path / "versions" / other.id / "version.json").write_text(json.dumps({"id": other.id, "spec": s.to_dict()}))
    with pytest.raises(InputError, match="different spec"):
        create_version(tmp_path, other, {})
    # oldest first; a version.json without a creation time sorts first
    assert [d["id"] for d in list_versions(tmp_path)] == [other.id, s.id]
