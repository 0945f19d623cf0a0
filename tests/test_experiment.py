"""The CALICO experiment (calico/experiment/, `calico experiment`): the grid's units, ids and resolved configs; a
changed configuration refused; the report against numpy on hand-made run folders; and a real `python -m calico
experiment label-efficiency`, killed with SIGKILL and rerun, which resumes without rerunning what finished."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from calico.experiment.plan import (ExperimentChanged, ExperimentSpec, Unit, config_sha256, make_plan,
                                    recorded_changes, split_overrides)
from shared.errors import ConfigError
from shared.paths import REPO_ROOT

from tests.test_cli_errors import cli, one_line_error

V = "0" * 16  # a placeholder store version (the plan does not open the store)
QUICK = ("optim.warmup_steps=1", "prc:data.n_rich=64", "prc:data.n_less=64", "ft:model.head.max_objects=64")


def _spec(**kw) -> ExperimentSpec:
    base = dict(fractions=(0.05, 1.0), seeds=(0, 1), inits=("scratch", "prc"), tasks=("det",), modality=("lidar",),
                pretrain_steps=4, rad_steps=3, steps=5, fraction_by="samples")
    return ExperimentSpec(**(base | kw))


# ---------------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------------


def test_plan_lists_every_unit_once_with_stable_ids_and_its_resolved_config(tmp_path):
    plan = make_plan(_spec(alphas=(0.9, 0.5), alpha_fractions=(0.05,), overrides=QUICK), tmp_path / "exp",
                     tmp_path / "store", V)
    ids = [u.id for u in plan.units]
    expected = {f"prc-a{a}-s{s}" for a in ("0.5", "0.9") for s in (0, 1)} \
        | {f"det-lidar-scratch-f{f}-s{s}" for f in ("0.05", "1") for s in (0, 1)} \
        | {f"det-lidar-prc-a0.5-f{f}-s{s}" for f in ("0.05", "1") for s in (0, 1)} \
        | {f"det-lidar-prc-a0.9-f0.05-s{s}" for s in (0, 1)}  # alpha 0.5 is the base PRC: not twice
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    for i, u in enumerate(plan.units):  # dependencies first
        assert set(u.deps) <= set(ids[:i]), u.id
    root = Path(plan.root)
    for u in plan.units:
        cfg = u.config
        assert cfg.data.seed == u.seed and cfg.data.version == V and cfg.data.store == str((tmp_path / "store"))
        assert cfg.optim.warmup_steps == 1  # an unprefixed --set goes to every stage
        if u.kind == "prc":
            assert cfg.prc.alpha == u.alpha and cfg.optim.max_steps == 4 and cfg.data.n_rich == 64
            continue
        ft = cfg.finetune
        assert cfg.optim.max_steps == 5 and ft.fraction == u.fraction and ft.fraction_by == "samples"
        assert ft.lidar_sweeps == 1 and ft.modality == "lidar" and cfg.center_head.max_objects == 64
        if u.init == "scratch":
            assert ft.init == "none" and u.deps == () and u.alpha is None
        else:  # the last checkpoint of its PRC stage, which is where that stage's run ends
            (dep,) = u.deps
            assert dep == f"prc-a{u.alpha:g}-s{u.seed}"
            assert ft.init == str(root / "pretrain" / dep / "run" / "checkpoints" / "step-00000004.pt")
    # the same grid given in another order: the same ids and configs
    other = make_plan(_spec(fractions=(1.0, 0.05), seeds=(1, 0), inits=("prc", "scratch"), alphas=(0.5, 0.9),
                            alpha_fractions=(0.05,), overrides=QUICK), tmp_path / "exp", tmp_path / "store", V)
    assert {u.id: config_sha256(u.config.to_dict(), root) for u in other.units} == \
        {u.id: config_sha256(u.config.to_dict(), root) for u in plan.units}
    assert len({config_sha256(u.config.to_dict(), root) for u in plan.units}) == len(ids)  # no two alike


def test_rad_inits_get_their_stage_and_the_modalities_rule(tmp_path):
    spec = _spec(inits=("scratch", "prc", "prc+uniform", "calico"), fractions=(0.05,), seeds=(0,), modality=("auto",))
    assert spec.modalities() == ("lidar", "fusion") and _spec().modalities() == ("lidar",)
    try:
        plan = make_plan(spec, tmp_path / "exp", tmp_path / "store", V)
    except ConfigError as exc:
        if "not built" in str(exc):
            pytest.skip(f"fusion fine-tuning is not accepted by this tree yet: {exc}")
        raise
    ids = {u.id for u in plan.units}
    # LiDAR-only cells from a RAD stage would start from the PRC weights (its teacher is frozen): fusion only
    assert ids == {"prc-a0.5-s0", "rad-uniform-a0.5-s0", "rad-region-a0.5-s0", "det-lidar-scratch-f0.05-s0",
                   "det-lidar-prc-a0.5-f0.05-s0"} | {f"det-fusion-{i}-f0.05-s0" for i in
                                                     ("scratch", "prc-a0.5", "prc+uniform-a0.5", "calico-a0.5")}
    root = Path(plan.root)
    rad = plan.unit("rad-region-a0.5-s0")
    assert rad.config.rad.weighting == "region" and plan.unit("rad-uniform-a0.5-s0").config.rad.weighting == "uniform"
    assert rad.config.teacher == str(root / "pretrain" / "prc-a0.5-s0" / "run" / "checkpoints" / "step-00000004.pt")
    assert rad.config.optim.max_steps == 3 and rad.deps == ("prc-a0.5-s0",)
    calico = plan.unit("det-fusion-calico-a0.5-f0.05-s0")
    assert calico.deps == ("rad-region-a0.5-s0",) and calico.config.finetune.modality == "fusion"
    assert calico.config.finetune.init.endswith("rad-region-a0.5-s0/run/checkpoints/step-00000003.pt")
    assert calico.config.model["camera"] == rad.config.model["camera"]  # the student's weights fit
    assert calico.config.model["lss"] == rad.config.model["lss"] and calico.config.images == rad.config.images
    lidar_only = make_plan(_spec(inits=("prc", "calico"), fractions=(0.05,), seeds=(0,)), tmp_path / "e2",
                           tmp_path / "store", V)
    assert "det-lidar-calico-a0.5-f0.05-s0" in {u.id for u in lidar_only.units}
    assert any("same LiDAR weights as prc" in n for n in lidar_only.notes)


@pytest.mark.parametrize("kw, needle", [
    ({"fractions": (0.0, 0.5)}, "--fractions"), ({"fractions": (0.5, 0.5)}, "repeats"),
    ({"inits": ("scratch", "moco")}, "--inits"), ({"tasks": ("det", "cls")}, "--task"),
    ({"preset": "huge"}, "--preset"), ({"modality": ("lidar", "radar")}, "--modality"),
    ({"steps": 0}, "--steps"), ({"alphas": (1.5,)}, "--alphas"), ({"seeds": (-1,)}, "--seeds"),
    ({"overrides": ("optim.lr",)}, "--set"), ({"overrides": ("bogus:optim.lr=1",)}, "unknown stage")])
def test_spec_validation_names_the_option(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        _spec(**kw)


def test_overrides_go_to_their_stage():
    got = split_overrides(["optim.lr=1e-3", "prc:data.n_rich=8", "ft:model.head.max_objects=4",
                           "seg:data.store='/a:b'"])
    assert got == {"prc": ["optim.lr=1e-3", "data.n_rich=8"], "rad": ["optim.lr=1e-3"],
                   "det": ["optim.lr=1e-3", "model.head.max_objects=4"],
                   "seg": ["optim.lr=1e-3", "model.head.max_objects=4", "data.store='/a:b'"]}


def test_a_changed_config_is_refused_naming_the_cell_and_the_field(tmp_path):
    from calico.experiment.run import record_units

    root = tmp_path / "exp"
    plan = make_plan(_spec(), root, tmp_path / "store", V)
    assert record_units(plan, allow_config_change=False) == []
    cell = root / "cells" / "det-lidar-prc-a0.5-f0.05-s0" / "cell.json"
    doc = json.loads(cell.read_text())
    assert doc["unit"]["id"] == "det-lidar-prc-a0.5-f0.05-s0" and doc["config"]["optim"]["max_steps"] == 5
    assert doc["config_sha256"] == config_sha256(plan.unit(doc["unit"]["id"]).config.to_dict(), root)
    # fields that do not change the result may change (checkpoint cadence, logging)
    free = make_plan(_spec(overrides=("ckpt_every=7", "log_every=3")), root, tmp_path / "store", V)
    assert recorded_changes(free) == {}
    # ... a result field may not: every affected cell is named with the field
    changed = make_plan(_spec(overrides=("ft:optim.lr=0.5",)), root, tmp_path / "store", V)
    got = recorded_changes(changed)
    assert sorted(got) == sorted(u.id for u in changed.cells)
    assert all(set(f) == {"optim.lr"} for f in got.values())
    with pytest.raises(ExperimentChanged, match=r"det-lidar-scratch-f0.05-s0: optim.lr \(recorded 0.001, now 0.5\)"):
        record_units(changed, allow_config_change=False)
    assert json.loads(cell.read_text()) == doc  # nothing rewritten
    assert sorted(record_units(changed, allow_config_change=True)) == sorted(got)
    after = json.loads(cell.read_text())
    assert after["config"]["optim"]["lr"] == 0.5 and after["config_changes"][0]["changes"]["optim.lr"] == [0.001, 0.5]
    assert recorded_changes(changed) == {}
    # the experiment folder moved: the init paths change, nothing that changes the result does
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    moved_plan = make_plan(_spec(overrides=("ft:optim.lr=0.5",)), moved, tmp_path / "store", V)
    assert recorded_changes(moved_plan) == {}
    assert record_units(moved_plan, allow_config_change=False) == []
    moved_doc = json.loads((moved / "cells" / "det-lidar-prc-a0.5-f0.05-s0" / "cell.json").read_text())
    assert moved_doc["config"]["model"]["finetune"]["init"].startswith(str(moved.resolve()))  # where it is now
    assert moved_doc["config_sha256"] == after["config_sha256"] and moved_doc["config_changes"] == \
        after["config_changes"]


# ---------------------------------------------------------------------------------------------------------------
# The report, on hand-made run folders
# ---------------------------------------------------------------------------------------------------------------


def _unit_folder(root: Path, unit: Unit, done: dict | None) -> None:
    d = root / unit.folder
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({"unit": unit.identity(), "config": {}, "config_sha256": "x" * 64,
                                             "store_version": V}))
    if done is not None:
        (d / "done.json").write_text(json.dumps({"id": unit.id, "config_sha256": "x" * 64, "inputs": {}, **done}))


def _fake_experiment(root: Path) -> dict:
    """scratch (seeds 0, 1, 2) and prc (seeds 0, 1, 3: seed 3 has no scratch partner) det cells at fraction 0.05,
    one unfinished prc cell, one PRC stage per seed; returns the scores written."""
    rng = np.random.default_rng(7)
    scores = {}
    for s in (0, 1, 2, 3):
        _unit_folder(root, Unit("prc", s, alpha=0.5), {"steps": 100, "wall_s": 50.0 + s, "train_s": 40.0,
                                                         "last_checkpoint": {"path": "p", "sha256": "a", "step": 100}})
    for init, seeds in (("scratch", (0, 1, 2)), ("prc", (0, 1, 3))):
        for s in seeds:
            nds, m_ap, car = rng.uniform(0, 1, 3)
            scores[(init, s)] = {"NDS": nds, "mAP": m_ap, "car_AP_2.0": car}
            last = {"step": 10, "NDS": nds, "mAP": m_ap, "car_AP_2.0": car}
            u = Unit("det", s, alpha=None if init == "scratch" else 0.5, init=init, modality="lidar", fraction=0.05,
                     deps=() if init == "scratch" else (f"prc-a0.5-s{s}",))
            _unit_folder(root, u, {"steps": 10, "metric": "NDS", "scores_last": last,
                                   "scores_best": dict(last, NDS=nds + 1.0, step=5),
                                   "last_checkpoint": {"path": "c", "sha256": "b", "step": 10}})
    _unit_folder(root, Unit("det", 4, alpha=0.5, init="prc", modality="lidar", fraction=0.05,
                            deps=("prc-a0.5-s3",)), None)
    (root / "store.json").write_text(json.dumps({"store": "/s", "version": V}))
    return scores


def test_report_means_stds_and_paired_differences_match_numpy(tmp_path):
    from calico.experiment.report import write_report

    root = tmp_path / "exp"
    scores = _fake_experiment(root)
    rep = write_report(root)
    rows = {r["init"]: r for r in rep["rows"]}
    assert set(rows) == {"scratch", "prc"} and rows["prc"]["seeds"] == 3 and rows["prc"]["seed_list"] == "0 1 3"
    for init, seeds in (("scratch", (0, 1, 2)), ("prc", (0, 1, 3))):
        for k in ("NDS", "mAP", "car_AP_2.0"):
            v = np.array([scores[(init, s)][k] for s in seeds])
            assert rows[init][f"{k}_mean"] == pytest.approx(v.sum() / 3)
            assert rows[init][f"{k}_std"] == pytest.approx(math.sqrt(((v - v.mean()) ** 2).sum() / 2))
    diffs = np.array([scores[("prc", s)]["NDS"] - scores[("scratch", s)]["NDS"] for s in (0, 1)])  # paired seeds
    assert rows["prc"]["d_NDS_n"] == 2
    assert rows["prc"]["d_NDS_mean"] == pytest.approx(diffs.mean())
    assert rows["prc"]["d_NDS_std"] == pytest.approx(abs(diffs[0] - diffs[1]) / math.sqrt(2))
    assert "d_NDS_mean" not in rows["scratch"]
    assert rows["prc"]["prc_steps"] == 100 and rows["prc"]["prc_wall_s"] == pytest.approx((50 + 51 + 53) / 3)
    assert rep["missing"] == ["det-lidar-prc-a0.5-f0.05-s4"]
    out = rep["out"]
    table = (out / "table.md").read_text()
    assert "**Incomplete**: 1 unit(s)" in table and "| lidar | prc (a=0.5) | 0.05 | 3 |" in table
    csv_rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert float(csv_rows[1]["NDS_mean"]) == pytest.approx(rows["prc"]["NDS_mean"])
    assert csv_rows[0]["d_NDS_mean"] == ""  # scratch has none
    js = json.loads((out / "table.json").read_text())
    assert js["rows"][1]["d_NDS_std"] == pytest.approx(rows["prc"]["d_NDS_std"]) and js["select"] == "last"
    assert (out / "plot-det.png").read_bytes()[:4] == b"\x89PNG" and not (out / "plot-seg.png").exists()
    assert "prc-a0.5-s0" in (out / "listing.md").read_text()
    best = {r["init"]: r for r in write_report(root, tmp_path / "best", select="best")["rows"]}
    v = np.array([scores[("prc", s)]["NDS"] + 1.0 for s in (0, 1, 3)])
    assert best["prc"]["NDS_mean"] == pytest.approx(v.mean())


def test_report_command(tmp_path, capsys):
    root = tmp_path / "exp"
    _fake_experiment(root)
    code, out, err = cli(capsys, "experiment", "report", root)
    assert code == 0, err
    assert "## 3-D detection (det)" in out and "table.csv" in out
    one_line_error(capsys, "experiment", "report", tmp_path, needles=["no experiment here"])
    one_line_error(capsys, "experiment", "report", root, "--select", "median", needles=["--select"])


def test_label_efficiency_option_errors_create_nothing(tmp_path, capsys):
    out = tmp_path / "exp"
    for args, needle in ((["--fractions", "0,1"], "--fractions"), (["--inits", "scratch,moco"], "--inits"),
                         (["--set", "optim.lr"], "--set"), ([], "--dataroot"), (["--select", "x"], "--select")):
        one_line_error(capsys, "experiment", "label-efficiency", "--out", out, *args, needles=[needle])
    assert not out.exists()
    one_line_error(capsys, "experiment", "robustness", tmp_path, needles=["no experiment here"])


# ---------------------------------------------------------------------------------------------------------------
# A real experiment, killed and rerun
# ---------------------------------------------------------------------------------------------------------------


def _command(store: Path, version: str, out: Path) -> list[str]:
    args = [sys.executable, "-m", "calico", "experiment", "label-efficiency", "--out", str(out), "--store", str(store),
            "--store-version", version, "--inits", "scratch,prc", "--task", "det", "--fractions", "1",
            "--fraction-by", "samples", "--seeds", "0", "--pretrain-steps", "2", "--steps", "2"]
    return args + [a for s in QUICK for a in ("--set", s)]


def _state(path: Path) -> tuple[int, int]:
    return path.stat().st_size, path.stat().st_mtime_ns


@pytest.mark.slow
def test_a_killed_experiment_resumes_without_rerunning_finished_units(tiny_store, tmp_path):
    store, summary = tiny_store  # read-only: the experiment only reads it (the fixture checks at the end)
    out = tmp_path / "exp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    stage = out / "pretrain" / "prc-a0.5-s0"
    proc = subprocess.Popen(_command(store, summary.version, out), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (stage / "done.json").is_file():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the first unit never finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # as a crash or an out-of-memory kill would: nothing runs after it
    proc.wait(timeout=60)
    cells = [out / "cells" / "det-lidar-scratch-f1-s0", out / "cells" / "det-lidar-prc-a0.5-f1-s0"]
    assert not all((c / "done.json").is_file() for c in cells)  # it was stopped in the middle
    kept = {p: _state(p) for p in [stage / "done.json", stage / "cell.json", stage / "run" / "metrics.jsonl",
                                   *sorted((stage / "run" / "checkpoints").glob("step-*.pt"))]}

    rerun = subprocess.run(_command(store, summary.version, out), cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "skipped prc-a0.5-s0 (done earlier)" in rerun.stdout and "started prc-a0.5-s0" not in rerun.stdout
    assert {p: _state(p) for p in kept} == kept  # the finished stage was not run again
    assert len(json.loads((stage / "cell.json").read_text())["attempts"]) == 1
    for c in cells:  # every cell finished, once per attempt; the one the kill cut short shows two attempts
        attempts = json.loads((c / "cell.json").read_text())["attempts"]
        assert attempts[-1]["ended"] == "finished" and all("end" not in a for a in attempts[:-1])
        done = json.loads((c / "done.json").read_text())
        assert done["steps"] == 2 and done["scores_last"]["step"] == 2 and 0 <= done["scores_last"]["NDS"] <= 1
    done = json.loads((cells[1] / "done.json").read_text())
    assert done["inputs"]["prc-a0.5-s0"]["sha256"] == json.loads((stage / "done.json").read_text())[
        "last_checkpoint"]["sha256"]
    table = json.loads((out / "report" / "table.json").read_text())
    assert [(r["init"], r["seeds"]) for r in table["rows"]] == [("scratch", 1), ("prc", 1)] and table["missing"] == []
    assert table["store"]["version"] == summary.version
