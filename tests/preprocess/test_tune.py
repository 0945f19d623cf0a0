"""``calico preprocess tune`` (preprocess/tune.py): grid expansion and validation, the Pareto front, the scores
against an independent scoring of ``process_sweep`` on the generated ``tiny`` dataset, the CLI end to end."""
from __future__ import annotations

import csv
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest

from preprocess.sweep import SweepConfig, parse_assignments, process_sweep
from preprocess.tune import (OUTPUT_FILES, GridAxis, TuneRow, best_rows, chunks_of, expand_grid, mark_pareto,
                             pareto_front, parse_grid, run_command, sample_keyframes, set_flags, split_values,
                             tune)
from shared.errors import ConfigError

GRID = ["cluster.eps=0.5,1.0", "ground.distance_threshold=0.15"]


# ----------------------------------------------------------------------------------------------------------
# Grid


def test_split_values_keeps_brackets_and_quotes_whole():
    assert split_values("0.5, 0.75,1") == ["0.5", "0.75", "1"]
    assert split_values("[0.5,1],[1, 2]") == ["[0.5,1]", "[1, 2]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]


@pytest.mark.parametrize("items, needle", [
    ([], "no grid given"),
    (["cluster.eps"], "cluster.eps"),
    (["=0.5"], "=0.5"),
    (["cluster.eps="], "cluster.eps"),
    (["cluster.eps=0.5,,1.0"], "cluster.eps=0.5,,1.0"),
    (["cluster.eps=0.5", "cluster.eps=1.0"], "given twice"),
])
def test_parse_grid_rejects_malformed_items(items, needle):
    with pytest.raises(ConfigError) as exc:
        parse_grid(items)
    assert exc.value.field == "--grid" and needle in str(exc.value)


@pytest.mark.parametrize("item, field, value", [
    ("cluster.epsilon=0.5", "cluster.epsilon", "0.5"),   # unknown field
    ("clusters.eps=0.5", "clusters.eps", "0.5"),         # unknown section
    ("cluster.eps=0.5,fast", "cluster.eps", "fast"),     # not a number
    ("cluster.eps=0.5,-1", "cluster.eps", -1.0),          # rejected by ClusterConfig
    ("cluster.min_samples=5,2.5", "cluster.min_samples", "2.5"),
])
def test_expand_grid_names_the_bad_field_or_value(item, field, value):
    with pytest.raises(ConfigError) as exc:
        expand_grid(parse_grid([item]))
    assert exc.value.field == field and exc.value.value == value
    assert field in str(exc.value)


def test_expand_grid_is_the_product_over_the_base():
    base = SweepConfig.from_overrides(["pooling.max_area=30"])
    settings = expand_grid(parse_grid(["cluster.eps=0.5,1.0", "cluster.min_samples=3,4,5"]), base)
    assert [s.index for s in settings] == list(range(6))
    assert [(s.cfg.cluster.eps, s.cfg.cluster.min_samples) for s in settings] == \
        [(e, m) for e in (0.5, 1.0) for m in (3, 4, 5)]
    assert all(s.cfg.pooling.max_area == 30 for s in settings)
    assert settings[4].grid == (("cluster.eps", "1.0"), ("cluster.min_samples", "4"))
    assert expand_grid([GridAxis("cluster.eps", ("0.6",))])[0].cfg == SweepConfig.from_overrides(["cluster.eps=0.6"])


def test_set_flags_parse_back_to_the_setting():
    base = ["pooling.max_area=30", "cluster.eps=2.0", "cluster.eps_range_scale=[1, 1, 1, 1]"]
    for s in expand_grid(parse_grid(["cluster.eps=0.5,1.0", "ground.distance_threshold=0.15"]),
                         SweepConfig.from_overrides(base)):
        flags = set_flags(base, s.grid)
        assert sum(f.startswith("cluster.eps=") for f in flags) == 1  # the grid's value wins
        assert SweepConfig.from_overrides(list(flags)) == s.cfg
        # through the shell: the printed command's --set flags
        words = shlex.split(run_command(flags, "/data/x y", "v1.0-mini"))
        again = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        assert SweepConfig.from_overrides(again) == s.cfg
        assert words[words.index("--dataroot") + 1] == "/data/x y"


# ----------------------------------------------------------------------------------------------------------
# Pareto front and choice


def _row(i, recall, purity, ms):
    return TuneRow(setting=i, grid=(("cluster.eps", str(i)),), flags=(f"cluster.eps={i}",), sweeps=1, objects=10,
                   recovered=0, recall=recall, purity=purity, over_segmentation=0.0, under_segmentation=0.0,
                   regions_per_sweep=1.0, ground_share=0.0, ms_per_sweep=ms)


def test_pareto_front_on_hand_made_points():
    pts = [(0.9, 0.9, 10.0),   # best recall
           (0.8, 0.95, 10.0),  # best purity
           (0.7, 0.8, 2.0),    # fastest
           (0.8, 0.9, 10.0),   # dominated by 0
           (0.7, 0.8, 3.0),    # dominated by 2 (slower, same quality)
           (0.9, 0.9, 10.0),   # equal to 0: both on the front
           (math.nan, 1.0, 1.0),  # no recall: worst on recall, still fastest and purest
           (math.nan, math.nan, 50.0)]  # dominated by everything
    assert pareto_front(pts) == [True, True, True, False, False, True, True, False]
    assert pareto_front([]) == []


def test_best_rows_by_recall_and_pareto():
    rows = mark_pareto([_row(0, 0.8, 0.9, 5.0), _row(1, 0.9, 0.8, 9.0), _row(2, 0.9, 0.85, 9.0),
                        _row(3, 0.7, 0.7, 9.0)])
    assert [r.pareto for r in rows] == [True, False, True, False]
    assert [r.setting for r in best_rows(rows, "recall")] == [2]
    assert [r.setting for r in best_rows(rows, "pareto")] == [2, 0]
    with pytest.raises(ConfigError, match="--best"):
        best_rows(rows, "fastest")


def test_sample_keyframes_is_seeded_and_in_order():
    items = [f"t{i}" for i in range(50)]
    a = sample_keyframes(items, 10, seed=3)
    assert a == sample_keyframes(items, 10, seed=3) and len(set(a)) == 10
    assert a == sorted(a, key=items.index)
    assert a != sample_keyframes(items, 10, seed=4)
    assert sample_keyframes(items, None) == items and sample_keyframes(items, 80) == items
    for bad in (0, -2):
        with pytest.raises(ConfigError, match="--sample"):
            sample_keyframes(items, bad)


def test_chunks_cover_the_items_once():
    for n, k in ((7, 3), (2, 5), (6, 1)):
        chunks = chunks_of(list(range(n)), k)
        assert [x for c in chunks for x in c] == list(range(n)) and all(chunks) and len(chunks) == min(n, k)


# ----------------------------------------------------------------------------------------------------------
# Against an independent scoring of process_sweep


def _direct(root, version, cfg):
    """The scores of ``cfg`` computed here: every keyframe through process_sweep and region_quality."""
    from nuscenes.nuscenes import NuScenes

    from shared.region_quality import boxes_from_devkit, evaluate_sweep, summarize

    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    objects, regions = [], []
    for scene in sorted(nusc.scene, key=lambda s: s["name"]):
        tok = scene["first_sample_token"]
        while tok:
            sample = nusc.get("sample", tok)
            sd = sample["data"]["LIDAR_TOP"]
            pts = np.fromfile(Path(root) / nusc.get("sample_data", sd)["filename"], dtype="<f4").reshape(-1, 5)
            res = process_sweep(pts, None, cfg)
            q = evaluate_sweep(pts, res.region.astype(np.int64), boxes_from_devkit(nusc.get_sample_data(sd)[1]),
                               ground=res.ground)
            objects.append(q.objects)
            regions.append(q.regions)
            tok = sample["next"]
    return summarize(objects, regions), len(objects)


def test_tune_rows_equal_direct_scoring(synth_root):
    root, version = synth_root
    result = tune(root, version, GRID, workers=0, progress=False)
    assert [r.setting for r in result.rows] == [0, 1] and result.workers == 0
    assert len(result.keyframes) == result.keyframes_total == 6
    for row, eps in zip(result.rows, (0.5, 1.0)):
        s, n = _direct(root, version, SweepConfig.from_overrides({"cluster.eps": eps,
                                                                  "ground.distance_threshold": 0.15}))
        assert row.sweeps == n and row.objects == s.objects > 0 and row.recovered == s.recovered
        for name in ("recall", "purity", "over_segmentation", "under_segmentation", "ground_share"):
            assert getattr(row, name) == pytest.approx(getattr(s, name), nan_ok=True), name
        assert row.regions_per_sweep == pytest.approx(s.regions / n)
        assert row.recall_by_class == {k: (m, r) for k, (m, _, r) in s.by_class.items()}
        assert math.isfinite(row.ms_per_sweep) and row.ms_per_sweep > 0
    assert result.rows[0].recall != result.rows[1].recall  # the grid changes something


def test_tune_sample_is_shared_and_stated(synth_root):
    root, version = synth_root
    result = tune(root, version, ["cluster.eps=0.75"], workers=0, progress=False, sample=4, seed=1)
    again = tune(root, version, ["cluster.eps=0.75"], workers=0, progress=False, sample=4, seed=1)
    assert len(result.keyframes) == 4 and result.keyframes == again.keyframes
    assert "4 of 6 keyframes drawn with seed 1" in result.sample_line()
    assert result.rows[0].sweeps == 4


@pytest.mark.slow
def test_tune_on_dask_equals_in_process(synth_root):
    from distributed import LocalCluster

    root, version = synth_root
    inline = tune(root, version, GRID, workers=0, progress=False)
    local = tune(root, version, GRID, workers=1, progress=False)  # a LocalCluster of one process
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        remote = tune(root, version, GRID, scheduler=cluster.scheduler_address, progress=False)
    assert (local.workers, remote.workers) == (1, 2)
    for a, b, c in zip(inline.rows, local.rows, remote.rows):
        for x in (b, c):
            assert (a.setting, a.objects, a.recovered, a.recall_by_class) == (x.setting, x.objects, x.recovered,
                                                                              x.recall_by_class)
            assert a.purity == pytest.approx(x.purity) and a.regions_per_sweep == x.regions_per_sweep


def _edited_copy(synth_root, tmp_path):
    import shutil

    root, version = synth_root
    shutil.copytree(root, tmp_path / "data")
    return tmp_path / "data", version


def test_tune_without_annotations_is_an_error(synth_root, tmp_path):
    from shared.errors import InputError

    root, version = _edited_copy(synth_root, tmp_path)
    for table in ("sample_annotation", "instance"):
        (root / version / f"{table}.json").write_text("[]")
    with pytest.raises(InputError, match="no annotated box in the 6 sampled keyframes"):
        tune(root, version, ["cluster.eps=0.75"], workers=0, progress=False)


def test_tune_leaves_an_unreadable_keyframe_out(synth_root, tmp_path):
    from nuscenes.nuscenes import NuScenes

    root, version = _edited_copy(synth_root, tmp_path)
    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    sd = nusc.get("sample", nusc.scene[0]["first_sample_token"])["data"]["LIDAR_TOP"]
    path = root / nusc.get("sample_data", sd)["filename"]
    path.write_bytes(path.read_bytes()[:-3])  # truncated
    lines = []
    result = tune(root, version, ["cluster.eps=0.75"], workers=0, progress=False, log=lines.append)
    assert sd not in result.keyframes and len(result.keyframes) == 5 and result.rows[0].sweeps == 5
    assert len(result.left_out) == 1 and sd in result.left_out[0] and str(path) in result.left_out[0]
    assert result.left_out[0] in lines and "1 unreadable left out" in result.sample_line()


# ----------------------------------------------------------------------------------------------------------
# CLI


def _cli(capsys, *args):
    from calico.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_writes_the_files_and_the_best_command(synth_root, tmp_path, capsys):
    root, version = synth_root
    out = tmp_path / "tune"
    code, stdout, err = _cli(capsys, "preprocess", "tune", "--dataroot", root, "--version", version,
                             *(w for g in GRID for w in ("--grid", g)), "--set", "pooling.max_area=40",
                             "--workers", 0, "--no-progress", "--out", out, "--best", "recall")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    rows = list(csv.DictReader((out / "tune.csv").open()))
    data = json.loads((out / "tune.json").read_text())
    assert [r["cluster.eps"] for r in rows] == ["0.5", "1.0"] and len(data["rows"]) == 2
    assert data["base_config"]["pooling"]["max_area"] == 40 and data["sample"]["drawn"] == 6
    assert float(rows[1]["recall"]) == pytest.approx(data["rows"][1]["recall"])
    for row, jrow in zip(rows, data["rows"]):  # the CSV's flags are the --set options of the JSON's
        words = shlex.split(row["flags"])
        assert words[0::2] == ["--set"] * len(jrow["flags"]) and words[1::2] == jrow["flags"]
    md = (out / "tune.md").read_text()
    assert "| # | cluster.eps | ground.distance_threshold | recall |" in md and "```json" in md
    assert "| # | cluster.eps |" in stdout
    # the printed command reproduces the best row's configuration
    best = max(data["rows"], key=lambda r: (r["recall"], r["purity"], -r["ms_per_sweep"]))
    line = next(ln for ln in stdout.splitlines() if ln.startswith("calico preprocess run"))
    words = shlex.split(line)
    flags = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert SweepConfig.from_overrides(flags) == SweepConfig.from_overrides(best["flags"])
    assert SweepConfig.from_overrides(flags).pooling.max_area == 40
    assert parse_assignments(flags)["cluster.eps"] == best["grid"]["cluster.eps"]


@pytest.mark.parametrize("args, needle", [
    (["--grid", "cluster.epsilon=0.5"], "cluster.epsilon"),
    (["--grid", "cluster.eps=0.5,abc"], "'abc'"),
    (["--grid", "cluster.eps"], "--grid"),
    (["--grid", "cluster.eps=0.5", "--best", "fast"], "--best"),
    (["--grid", "cluster.eps=0.5", "--sample", "0"], "--sample"),
    (["--grid", "cluster.eps=0.5", "--min-points", "0"], "--min-points"),
    (["--grid", "cluster.eps=0.5", "--set", "cluster.eps=-1"], "cluster.eps"),
    (["--grid", "cluster.eps=0.5", "--scenes", "nope"], "nope"),
    (["--grid", "cluster.eps=0.5", "--scheduler", "tcp://nohost"], "--scheduler"),
    ([], "--grid"),
])
def test_cli_bad_input_is_one_line_exit_2(synth_root, tmp_path, capsys, args, needle):
    root, version = synth_root
    out = tmp_path / "never"
    code, stdout, err = _cli(capsys, "preprocess", "tune", "--dataroot", root, "--version", version,
                             "--workers", 0, "--no-progress", "--out", out, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not out.exists()
