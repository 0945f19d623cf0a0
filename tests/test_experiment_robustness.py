"""`calico experiment robustness` (calico/experiment/robustness.py): the table against numpy on hand-made result
records (means, ddof-1 standard deviations, drops from clean paired by seed, the not-applicable pairs, stale records
left out), the cell selection, the option errors, and one real run on a tiny experiment: the result files, a
rerun that skips them, a changed checkpoint recomputed or refused, and the clean entry equal to `calico eval det`."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from calico.experiment.plan import Unit
from calico.experiment.robustness import (CLEAN, RobustnessSpec, not_applicable, record_path, select_cells,
                                          write_table)
from calico.experiment.report import collect
from shared.errors import ConfigError, InputError

from tests._experiment_util import build_tiny_experiment
from tests.test_cli_errors import cli, one_line_error

SHA = "a" * 64


# ---------------------------------------------------------------------------------------------------------------
# Hand-made experiment folders
# ---------------------------------------------------------------------------------------------------------------


def _cell(root: Path, unit: Unit, finished: bool = True, sha: str = SHA) -> None:
    d = root / unit.folder
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({"unit": unit.identity(), "config": {}, "config_sha256": "x" * 64}))
    if finished:
        ck = {"path": f"{unit.folder}/run/checkpoints/step-00000010.pt", "sha256": sha, "step": 10}
        (d / "done.json").write_text(json.dumps({"id": unit.id, "config_sha256": "x" * 64, "inputs": {},
                                                 "steps": 10, "last_checkpoint": ck,
                                                 "best_checkpoint": dict(ck, sha256="b" * 64, step=5)}))


def _record(root: Path, unit: Unit, corruption, scores: dict, sha: str = SHA) -> None:
    import dataclasses

    path = record_path(root, unit.id, corruption)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cell": unit.id, "tag": path.stem, "checkpoint": {"path": "p", "sha256": sha,
                                                                                  "step": 10},
                                "corruption": dataclasses.asdict(corruption) if corruption is not None else None,
                                "scores": scores}))


def _det_unit(init: str, modality: str, seed: int, fraction: float = 0.5) -> Unit:
    return Unit("det", seed, alpha=None if init == "scratch" else 0.5, init=init, modality=modality,
                fraction=fraction, deps=() if init == "scratch" else (f"rad-region-a0.5-s{seed}",))


SPEC = RobustnessSpec(tasks=("det",), corruptions=("fog", "brightness"), severities=(3,), spoof_ranges=(10.0,))


def _fake(root: Path) -> dict:
    """det fusion cells of scratch (seeds 0, 1, 2) and calico (seeds 0, 1, 2; seed 2 has no fog record and a
    clean NDS of 0 in no cell), a lidar scratch cell (seed 0: brightness does not apply), a calico cell at another
    fraction, an unfinished one, and a stale fog record of another checkpoint; returns the scores written by
    (init, modality, seed, tag)."""
    rng = np.random.default_rng(3)
    settings = SPEC.settings()
    out = {}
    cells = [("scratch", "fusion", s) for s in (0, 1, 2)] + [("calico", "fusion", s) for s in (0, 1, 2)] \
        + [("scratch", "lidar", 0)]
    for init, modality, seed in cells:
        u = _det_unit(init, modality, seed)
        _cell(root, u)
        for s in settings:
            if not_applicable("det", modality, s) is not None:
                continue
            t = CLEAN if s is None else s.tag
            if (init, seed, t) == ("calico", 2, "fog-s3"):
                continue  # missing: the paired drop has two seeds
            nds, m_ap = rng.uniform(0.1, 0.9, 2)
            sc = {"NDS": nds, "mAP": m_ap, "car_AP_2.0": rng.uniform()}
            if s is not None and s.spoof_range is not None:
                sc |= {"spoof_fp_rate": rng.uniform(), "spoof_keyframes": 3.0, "spoof_skipped": 0.0}
            out[(init, modality, seed, t)] = sc
            _record(root, u, s, sc)
    # a stale record: its cell was retrained since (done.json names another checkpoint)
    _record(root, _det_unit("calico", "fusion", 2), settings[1], {"NDS": 5.0, "mAP": 5.0}, sha="c" * 64)
    _cell(root, _det_unit("calico", "fusion", 0, fraction=0.1))
    _cell(root, _det_unit("calico", "fusion", 3), finished=False)
    (root / "experiment.json").write_text(json.dumps({"spec": {"fractions": [0.1, 0.5]}}))
    return out


def _ms(v) -> tuple[float, float]:
    v = np.asarray(v, float)
    return v.sum() / len(v), (math.sqrt(((v - v.mean()) ** 2).sum() / (len(v) - 1)) if len(v) > 1 else math.nan)


def test_the_table_means_stds_and_drops_match_numpy(tmp_path):
    root = tmp_path / "exp"
    sc = _fake(root)
    rep = write_table(root, SPEC)
    rows = {(r["modality"], r["init"], r["setting"]): r for r in rep["rows"]}
    assert sorted(rows) == sorted((m, i, t) for m, i in (("fusion", "scratch"), ("fusion", "calico"),
                                                         ("lidar", "scratch"))
                                  for t in ("clean", "fog-s3", "brightness-s3", "spoof-10m"))
    for init in ("scratch", "calico"):
        for t in ("clean", "fog-s3", "brightness-s3", "spoof-10m"):
            r = rows[("fusion", init, t)]
            seeds = [s for s in (0, 1, 2) if (init, "fusion", s, t) in sc]
            assert r["seeds"] == len(seeds) and r["seed_list"] == " ".join(map(str, seeds))
            for m in ("NDS", "mAP", "car_AP_2.0"):
                mean, std = _ms([sc[(init, "fusion", s, t)][m] for s in seeds])
                assert r[f"{m}_mean"] == pytest.approx(mean)
                assert (math.isnan(std) and math.isnan(r[f"{m}_std"])) or r[f"{m}_std"] == pytest.approx(std)
            if t == "clean":
                assert "drop_NDS_mean" not in r
                continue
            for m in ("NDS", "mAP"):
                drops = [sc[(init, "fusion", s, "clean")][m] - sc[(init, "fusion", s, t)][m] for s in seeds]
                rel = [d / sc[(init, "fusion", s, "clean")][m] for d, s in zip(drops, seeds)]
                assert r[f"drop_{m}_n"] == len(seeds) and r[f"rdrop_{m}_n"] == len(seeds)
                assert (r[f"drop_{m}_mean"], r[f"drop_{m}_std"]) == pytest.approx(_ms(drops))
                assert (r[f"rdrop_{m}_mean"], r[f"rdrop_{m}_std"]) == pytest.approx(_ms(rel))
    assert rows[("fusion", "calico", "fog-s3")]["seeds"] == 2  # the missing and the stale record are left out
    assert rows[("fusion", "calico", "fog-s3")]["NDS_mean"] < 1.0
    spoof = rows[("fusion", "scratch", "spoof-10m")]
    assert spoof["spoof_fp_rate_mean"] == pytest.approx(_ms([sc[("scratch", "fusion", s, "spoof-10m")]
                                                             ["spoof_fp_rate"] for s in (0, 1, 2)])[0])
    # a camera corruption on a LiDAR-only cell: not evaluated, said so
    na = rows[("lidar", "scratch", "brightness-s3")]
    assert na["seeds"] == 0 and "does not see the cameras" in na["na"] and "NDS_mean" not in na
    lone = rows[("lidar", "scratch", "fog-s3")]  # one seed: no spread
    assert lone["seeds"] == 1 and math.isnan(lone["NDS_std"]) and math.isnan(lone["drop_NDS_std"])
    assert lone["drop_NDS_mean"] == pytest.approx(sc[("scratch", "lidar", 0, "clean")]["NDS"]
                                                  - sc[("scratch", "lidar", 0, "fog-s3")]["NDS"])
    assert rep["missing"] == ["det-fusion-calico-a0.5-f0.5-s2 fog-s3"]
    out = root / "robustness"
    md = (out / "table.md").read_text()
    assert "| setting | scratch NDS | scratch NDS drop | scratch mAP | scratch mAP drop | calico (a=0.5) NDS |" in md
    assert "**Incomplete**: 1 evaluation(s)" in md and "n/a: a LiDAR-only model does not see the cameras" in md
    assert "| spoofed car at | scratch FP rate | scratch NDS | scratch NDS drop | calico (a=0.5) FP rate |" in md
    csv_rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert len(csv_rows) == len(rep["rows"])
    fog = next(c for c in csv_rows if c["init"] == "calico" and c["setting"] == "fog-s3")
    assert float(fog["drop_NDS_mean"]) == pytest.approx(rows[("fusion", "calico", "fog-s3")]["drop_NDS_mean"])
    js = json.loads((out / "table.json").read_text())
    assert js["fraction"] == 0.5 and js["select"] == "last" and len(js["rows"]) == len(rep["rows"])
    assert js["rows"][0]["NDS_std"] == pytest.approx(rep["rows"][0]["NDS_std"])


def test_cell_selection(tmp_path):
    root = tmp_path / "exp"
    _fake(root)
    data = collect(root)
    cells, fraction, notes = select_cells(data, SPEC)
    assert fraction == 0.5  # the largest of experiment.json's fractions
    assert [c["cell"]["unit"]["id"] for c in cells] == [
        "det-fusion-scratch-f0.5-s0", "det-fusion-scratch-f0.5-s1", "det-fusion-scratch-f0.5-s2",
        "det-fusion-calico-a0.5-f0.5-s0", "det-fusion-calico-a0.5-f0.5-s1", "det-fusion-calico-a0.5-f0.5-s2",
        "det-lidar-scratch-f0.5-s0"]
    assert any("1 matching cell(s) have not finished" in n for n in notes)
    got, fraction, _ = select_cells(data, RobustnessSpec(inits=("calico",), fraction=0.1, tasks=("det",)))
    assert fraction == 0.1 and [c["cell"]["unit"]["id"] for c in got] == ["det-fusion-calico-a0.5-f0.1-s0"]
    got, _, _ = select_cells(data, RobustnessSpec(seeds=(1,), tasks=("det",)))
    assert {c["cell"]["unit"]["seed"] for c in got} == {1}
    with pytest.raises(InputError, match="no finished cell matches --inits prc"):
        select_cells(data, RobustnessSpec(inits=("prc",)))


@pytest.mark.parametrize("kw, needle", [
    ({"inits": ("scratch", "moco")}, "--inits"), ({"tasks": ("cls",)}, "--task"), ({"fraction": 0.0}, "--fraction"),
    ({"corruptions": ("rain",)}, "--corruptions"), ({"severities": (6,)}, "--severities"),
    ({"severities": ()}, "--severities"),
    ({"spoof_ranges": (1.0,)}, "--spoof-ranges=1.0: must be a distance in metres"),
    ({"seeds": (-1,)}, "--seeds"), ({"select": "median"}, "--select"), ({"corrupt_seed": -1}, "--corrupt-seed"),
    ({"corruptions": ("fog", "fog")}, "repeats")])
def test_spec_validation_names_the_option(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        RobustnessSpec(**kw)


def test_option_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    root = tmp_path / "exp"
    _fake(root)
    shutil.rmtree(root / "robustness")
    for args, needle in ((["--corruptions", "rain"], "--corruptions"), (["--severities", "0"], "--severities"),
                         (["--spoof-ranges", "500"], "--spoof-ranges"), (["--fraction", "0.2"], "no finished cell"),
                         (["--severities", "x"], "--severities")):
        one_line_error(capsys, "experiment", "robustness", root, *args, needles=[needle])
    one_line_error(capsys, "experiment", "robustness", tmp_path, needles=["no experiment here"])
    assert not (root / "robustness").exists()


# ---------------------------------------------------------------------------------------------------------------
# A real run on a tiny experiment
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_experiment(tiny_store, tmp_path_factory) -> Path:
    """A finished det-lidar-scratch-f1-s0 cell (2 steps) on the session's tiny store."""
    store, summary = tiny_store
    return build_tiny_experiment(store, summary.version, tmp_path_factory.mktemp("rob") / "exp")


ARGS = ("--inits", "scratch", "--task", "det", "--corruptions", "fog", "--severities", "3", "--spoof-ranges", "10")


@pytest.mark.slow
def test_a_real_robustness_run_resumes_and_its_clean_entry_is_calico_eval(tiny_experiment, tmp_path, capsys):
    from data_catalog.version import sha256_file

    root = tmp_path / "exp"
    shutil.copytree(tiny_experiment, root)
    cid = "det-lidar-scratch-f1-s0"
    code, out, err = cli(capsys, "experiment", "robustness", root, *ARGS)
    assert code == 0, out + err
    for line in (f"[1/3] evaluated {cid} clean", f"[2/3] evaluated {cid} fog-s3", f"[3/3] evaluated {cid} spoof-10m"):
        assert line in out, out
    folder = root / "robustness" / cid
    done = json.loads((root / "cells" / cid / "done.json").read_text())
    ckpt = root / done["last_checkpoint"]["path"]
    records = {t: json.loads((folder / f"{t}.json").read_text()) for t in ("clean", "fog-s3", "spoof-10m")}
    for t, rec in records.items():
        assert rec["checkpoint"]["sha256"] == done["last_checkpoint"]["sha256"] == sha256_file(ckpt)
        assert rec["tag"] == t and rec["checkpoint"]["step"] == 2 and 0 <= rec["scores"]["NDS"] <= 1
        assert (folder / t / "scores.json").is_file()
    assert records["fog-s3"]["corruption"]["name"] == "fog" and records["fog-s3"]["corruption"]["severity"] == 3
    assert records["spoof-10m"]["corruption"]["spoof_range"] == 10.0
    assert 0 <= records["spoof-10m"]["scores"]["spoof_fp_rate"] <= 1
    table = json.loads((root / "robustness" / "table.json").read_text())
    assert [r["setting"] for r in table["rows"]] == ["clean", "fog-s3", "spoof-10m"] and table["missing"] == []
    assert table["rows"][1]["drop_NDS_mean"] == pytest.approx(records["clean"]["scores"]["NDS"]
                                                              - records["fog-s3"]["scores"]["NDS"])
    assert (root / "robustness" / "table.md").is_file() and (root / "robustness" / "table.csv").is_file()

    # the clean entry is what `calico eval det` gives on the same checkpoint
    code, out, err = cli(capsys, "eval", "det", "--checkpoint", ckpt, "--out", tmp_path / "eval", "--no-plots")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["scores"] == records["clean"]["scores"]

    # a rerun skips every evaluation: nothing is rewritten
    state = {p: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    code, out, err = cli(capsys, "experiment", "robustness", root, *ARGS)
    assert code == 0, out + err
    progress = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert progress == [f"[{k}/3] skipped {cid} {t} (done earlier)" for k, t in
                        ((1, "clean"), (2, "fog-s3"), (3, "spoof-10m"))], out
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.json")} == state

    # a record of another checkpoint (the cell was trained further since) is recomputed
    stale = dict(records["fog-s3"], checkpoint=dict(records["fog-s3"]["checkpoint"], sha256="0" * 64))
    (folder / "fog-s3.json").write_text(json.dumps(stale))
    code, out, err = cli(capsys, "experiment", "robustness", root, *ARGS)
    assert code == 0, out + err
    assert "recomputing" in out and f"evaluated {cid} fog-s3" in out and "1 recomputed, 2 skipped" in out
    assert json.loads((folder / "fog-s3.json").read_text())["scores"] == records["fog-s3"]["scores"]  # seeded

    # a checkpoint changed behind the experiment's back is refused
    with open(ckpt, "ab") as f:
        f.write(b"\0")
    code, out, err = cli(capsys, "experiment", "robustness", root, *ARGS)
    assert code == 1 and out.count("FAILED") == 3 and "changed since the cell finished" in out
    assert f"failed: {cid} clean:" in err
