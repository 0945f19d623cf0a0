"""The object-recovery audit of the Dask stage (data_catalog.audit): columns of the per-sweep and per-scene Parquet
tables of a store built from generated data, read with plain pyarrow and checked against shared.region_quality
and devkit's ``points_in_box`` computed on the stored sweep; nulls without annotations; the CLI's stats and diff."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_catalog import audit
from data_catalog.reader import open_version
from shared.errors import ConfigError
from shared.region_quality import (DISTANCE_BANDS, boxes_from_devkit, classify_misses, evaluate_sweep,
                                   summarize)


def _tables(store: Path, vid: str) -> tuple[list[dict], list[dict]]:
    """Rows of the version's sweeps.parquet and scenes.parquet, read with pyarrow.parquet only."""
    vdir = Path(store) / "versions" / vid
    return pq.read_table(vdir / "sweeps.parquet").to_pylist(), pq.read_table(vdir / "scenes.parquet").to_pylist()


def test_audit_columns_are_in_the_parquet_tables(tiny_store):
    store, summary = tiny_store
    sweeps, scenes = _tables(store, summary.version)
    names = set(pq.read_schema(Path(store) / "versions" / summary.version / "sweeps.parquet").names)
    assert set(audit.SWEEP_COLUMNS) <= names
    assert {"audit_recall", "audit_purity", "audit_over_seg", "audit_under_seg", "audit_ground_share",
            "audit_objects_car", "audit_recovered_car", "audit_objects_0_20", "audit_recovered_40_plus"} <= names
    assert set(audit.SCENE_COLUMNS) <= set(scenes[0])
    for shard in (Path(store) / "versions" / summary.version / "shards").iterdir():  # the shards' own tables too
        assert set(audit.SWEEP_COLUMNS) <= set(pq.read_schema(shard / "sweeps.parquet").names)
    assert all(r["is_key_frame"] and r["audit_objects"] > 0 for r in sweeps)  # a keyframes store: all audited


def test_audit_equals_region_quality_and_devkit_on_the_stored_sweeps(tiny_store, synth_root):
    """Each keyframe's columns against an independent path: the sweep read back from the store (its points as
    stored, region ids, ground flags), the boxes from devkit's get_sample_data, membership counted with devkit's
    points_in_box, and shared.region_quality's evaluate_sweep + summarize on those."""
    from nuscenes.utils.geometry_utils import points_in_box

    from shared.nuscenes_io import open_nuscenes

    store, summary = tiny_store
    root, version = synth_root
    nusc = open_nuscenes(root, version)
    v = open_version(store, summary.version)
    sweeps, scenes = _tables(store, summary.version)
    for row in sweeps:
        sw = v.scene(row["scene"]).sweep(row["index"], arrays=("xyz", "flags", "region"))
        xyz, region, ground = sw.xyz, np.asarray(sw.region, np.int64), sw.ground
        _, dk_boxes, _ = nusc.get_sample_data(row["token"])
        counts = [int(points_in_box(b, xyz.T.astype(np.float64)).sum()) for b in dk_boxes]
        in_box = [points_in_box(b, xyz.T.astype(np.float64)) for b in dk_boxes]
        counted = [n >= 20 for n in counts]
        assert row["audit_objects"] == sum(counted)
        assert row["audit_object_points"] == sum(n for n, c in zip(counts, counted) if c)
        assert row["audit_ground_points"] == sum(int(ground[m].sum()) for m, c in zip(in_box, counted) if c)

        boxes = boxes_from_devkit(dk_boxes)
        q = evaluate_sweep(xyz, region, boxes, ground=ground)
        s = summarize(q.objects, q.regions)
        assert row["audit_recovered"] == s.recovered
        assert row["audit_recall"] == pytest.approx(s.recall, abs=1e-12)
        assert row["audit_purity"] == pytest.approx(s.purity, abs=1e-12)
        assert row["audit_over_seg"] == pytest.approx(s.over_segmentation, abs=1e-12)
        assert row["audit_ground_share"] == pytest.approx(s.ground_share, abs=1e-12)
        assert row["audit_regions"] == s.regions and row["audit_under_segmented"] == s.under_segmented
        for cls, (n, r, _) in s.by_class.items():
            assert (row[f"audit_objects_{cls}"], row[f"audit_recovered_{cls}"]) == (n, r)
        for band, _, _ in DISTANCE_BANDS:
            n, r, _ = s.by_distance[band]
            suffix = audit.BAND_SUFFIX[band]
            assert (row[f"audit_objects_{suffix}"], row[f"audit_recovered_{suffix}"]) == (n, r)
        # the stage knew which filter dropped each cluster: its dropped + noise misses are this path's unlabelled
        kinds = list(classify_misses(q.objects))
        assert row["audit_miss_dropped"] + row["audit_miss_noise"] == kinds.count("unlabelled")
        for k in ("no_scored", "merged", "ground", "split"):
            assert row[f"audit_miss_{k}"] == kinds.count(k)
        assert row["t_audit_ms"] > 0
    for sc in scenes:  # per scene: sums over its sweeps, rates from the sums
        mine = [r for r in sweeps if r["scene"] == sc["scene"]]
        assert sc["audited_sweeps"] == len(mine)
        for c in audit.COUNT_COLUMNS:
            assert sc[c] == sum(r[c] for r in mine)
        assert sc["audit_recall"] == sum(r["audit_recovered"] for r in mine) / sum(r["audit_objects"] for r in mine)


@pytest.fixture(scope="module")
def unannotated(synth_root, tmp_path_factory):
    """(store, RunSummary) of one scene of a copy of the tiny dataroot whose sample_annotation.json is empty."""
    from preprocess.run import run

    root, version = synth_root
    dst = tmp_path_factory.mktemp("noann") / "data"
    dst.mkdir()
    for p in root.iterdir():  # the point files linked, the tables copied
        (dst / p.name).symlink_to(p) if p.name != version else shutil.copytree(p, dst / p.name)
    (dst / version / "sample_annotation.json").write_text("[]")
    store = dst.parent / "store"
    s = run(dst, version, store, sweeps="keyframes", workers=0, progress=False, log=None, scenes=["scene-0061"])
    assert s.failed_sweeps == 0 and not s.failed_scenes
    return store, s


def test_no_annotations_no_audit(unannotated):
    store, s = unannotated
    sweeps, scenes = _tables(store, s.version)
    assert sweeps and scenes
    assert all(r[c] is None for r in sweeps for c in audit.SWEEP_COLUMNS)
    assert all(r[c] is None for r in scenes for c in audit.SCENE_COLUMNS)
    assert not audit.summary(sweeps).audited


def test_aggregate_sums_only_the_audited_rows():
    """A non-keyframe's row (nulls) adds nothing; the rates come from the sums."""
    rows = [{"audit_objects": None}, {**{c: 1 for c in audit.COUNT_COLUMNS}, "audit_objects": 4}]
    agg = audit.aggregate(rows)
    assert agg["audited_sweeps"] == 1 and agg["audit_objects"] == 4 and agg["audit_recall"] == 0.25
    assert audit.aggregate(rows[:1]) == {c: None for c in audit.SCENE_COLUMNS}


def test_cli_stats_prints_the_audit(tiny_store, unannotated):
    from typer.testing import CliRunner

    from calico.cli import app

    store, summary = tiny_store
    sweeps, _ = _tables(store, summary.version)
    recall = sum(r["audit_recovered"] for r in sweeps) / sum(r["audit_objects"] for r in sweeps)
    r = CliRunner().invoke(app, ["catalog", "stats", "--store", str(store), summary.version])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("audit over"))
    assert f"audit over {len(sweeps)} keyframe(s): recall {recall:.3f}" in line
    cars = [sum(r["audit_recovered_car"] for r in sweeps), sum(r["audit_objects_car"] for r in sweeps)]
    assert f"car {cars[0] / cars[1]:.2f} ({cars[0]}/{cars[1]})" in r.output
    assert "recall by distance (m): 0-20" in r.output
    rows = json.loads(CliRunner().invoke(app, ["catalog", "stats", "--store", str(store), "--json"]).output)
    assert all(math.isclose(x["audit_recall"], x["audit_recovered"] / x["audit_objects"]) for x in rows)
    r = CliRunner().invoke(app, ["catalog", "stats", "--store", str(unannotated[0])])
    assert r.exit_code == 0 and "audit: none (no annotated keyframes" in r.output


@pytest.mark.slow
def test_cli_diff_compares_the_audit_of_two_versions(tiny_store, synth_root, tmp_path):
    from typer.testing import CliRunner

    from calico.cli import app
    from preprocess.run import run
    from preprocess.sweep import SweepConfig

    store, summary = tiny_store
    root, version = synth_root
    mine = tmp_path / "store"
    shutil.copytree(store, mine)
    other = run(root, version, mine, SweepConfig.from_overrides(["cluster.eps=0.4"]), sweeps="keyframes",
                workers=0, progress=False, log=None)
    r = CliRunner().invoke(app, ["catalog", "diff", summary.version, other.version, "--store", str(mine), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)["audit"]
    for vid, col in ((summary.version, 0), (other.version, 1)):
        sw, _ = _tables(mine, vid)
        assert doc["recall"][col] == sum(x["audit_recovered"] for x in sw) / sum(x["audit_objects"] for x in sw)
        cars = sum(x["audit_recovered_car"] for x in sw) / sum(x["audit_objects_car"] for x in sw)
        assert doc["recall class car"][col] == pytest.approx(cars)
    for k, (a, b, d) in doc.items():
        assert d == pytest.approx(b - a), k
    text = CliRunner().invoke(app, ["catalog", "diff", summary.version, other.version, "--store", str(mine)]).output
    assert "audit (a -> b, change)" in text and "recall band 0-20" in text and "purity" in text


def test_report_without_the_dataroot_draws_the_worst_sweeps_without_boxes(synth_root, tmp_path):
    """The boxes of the report's pictures come from the dataroot: gone, the page says so and still draws them."""
    from typer.testing import CliRunner

    from calico.cli import app
    from preprocess.run import run

    root, version = synth_root
    data = tmp_path / "data"
    data.mkdir()
    for p in root.iterdir():
        (data / p.name).symlink_to(p) if p.name != version else shutil.copytree(p, data / p.name)
    s = run(data, version, tmp_path / "store", sweeps="keyframes", workers=0, progress=False, log=None,
            scenes=["scene-0103"])
    shutil.rmtree(data)
    r = CliRunner().invoke(app, ["catalog", "report", "--store", str(tmp_path / "store"), "--out", str(tmp_path),
                                 "--n-sweeps", "0", "--n-worst", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / f"{s.version}.html").read_text()
    assert 'id="audit-no-boxes">Drawn without boxes: the dataroot cannot be opened' in text
    assert text.count('class="bev-audit"') == 2 and 'data-boxes="0"' in text
    r = CliRunner().invoke(app, ["catalog", "report", "--store", str(tmp_path / "store"), "--n-worst", "-1"])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError)  # calico.cli.main: one line, exit 2
    assert str(r.exception) == "config value n_worst=-1: must be >= 0"


def test_the_plans_carry_the_keyframes_boxes_to_the_workers(synth_root):
    """plan_scenes reads each keyframe's boxes (devkit); the packed plan a worker unpickles has the same boxes,
    none for the other sweeps."""
    import pickle

    from preprocess.run import plan_scenes
    from shared.nuscenes_io import open_nuscenes
    from shared.region_quality import boxes_from_nuscenes

    root, version = synth_root
    nusc = open_nuscenes(root, version)
    plan = plan_scenes(nusc, "all", ["scene-0061"])[0]
    back = pickle.loads(pickle.dumps(plan))
    keys = [sp for sp in back.sweeps if sp.info.is_key_frame]
    assert len(keys) == 3 and all(sp.boxes is None for sp in back.sweeps if not sp.info.is_key_frame)
    for sp in keys:
        want = boxes_from_nuscenes(nusc, sp.token)
        assert len(sp.boxes) == len(want) > 0 and list(sp.boxes.cls) == list(want.cls)
        for k in ("center", "size", "yaw", "rotation"):
            assert np.array_equal(getattr(sp.boxes, k), getattr(want, k))
