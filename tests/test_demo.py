"""The README's main job: `calico demo` end to end on a generated dataset, then again reusing everything."""
import json
import subprocess
import sys

import pytest

from shared.paths import REPO_ROOT


def _demo(workdir, *extra):
    return subprocess.run([sys.executable, "-m", "calico", "demo", "--workdir", str(workdir), "--preset", "tiny",
                           "--workers", "1", "--train-steps", "4", "--rad-steps", "2", "--finetune-steps", "2",
                           "--experiment-steps", "2", *extra],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_outputs(tmp_path):
    work = tmp_path / "demo"
    first = _demo(work)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    for step in ("[1/9] generating", "[2/9] nuscenes-devkit loaded", "[3/9]", "[4/9] store verified",
                 "[5/9] PRC pre-training", "[6/9] RAD distillation", "[7/9] detection fine-tuning", "[8/9]",
                 "[9/9] miniature label-efficiency experiment"):
        assert step in out
    versions = list((work / "store" / "versions").iterdir())
    assert len(versions) == 1
    doc = json.loads((versions[0] / "version.json").read_text())
    shards = sorted(p.name for p in (versions[0] / "shards").iterdir() if not p.name.startswith("."))
    assert shards == sorted(doc["scenes"])
    page = work / "reports" / f"{versions[0].name}.html"
    assert page.stat().st_size > 10_000 and "<img" in page.read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in versions[0].rglob("manifest.json")}

    second = _demo(work, "--no-evaluate")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[1/9] reusing" in second.stdout and "already committed" in second.stdout + second.stderr
    assert {p: p.stat().st_mtime_ns for p in versions[0].rglob("manifest.json")} == mtimes  # nothing rewritten
    assert list((work / "store" / "versions").iterdir()) == versions
    runs = sorted((work / "runs").iterdir())
    assert [r.name.split("-")[0] for r in runs] == ["det", "prc", "rad"]
    assert all((r / "metrics.jsonl").is_file() and (r / "loss.png").is_file() for r in runs)
    scores = [json.loads(ln) for ln in (work / "runs" / f"det-{versions[0].name}" / "eval.jsonl").read_text().splitlines()]
    assert scores and 0.0 <= scores[-1]["mAP"] <= 1.0 and 0.0 <= scores[-1]["NDS"] <= 1.0  # the devkit scored it
    assert "devkit on the validation split: mAP" in out

    # 9. the miniature label-efficiency table: one row per init at each fraction, for det and for seg
    exp = work / "experiments" / f"mini-{versions[0].name}-s0-2steps"
    table = exp / "report" / "table.md"
    assert table.is_file() and str(table) in out
    text = table.read_text()
    assert text.strip() in out  # printed as written
    rows = json.loads((exp / "report" / "table.json").read_text())["rows"]
    for task in ("det", "seg"):
        got = sorted((r["init"], r["fraction"], r["seeds"]) for r in rows if r["task"] == task)
        assert got == [("prc", 0.5, 1), ("prc", 1.0, 1), ("scratch", 0.5, 1), ("scratch", 1.0, 1)]
    for label in ("scratch", "prc (a=0.5)"):  # the headline rows (modality, init, fraction, seeds), det and seg
        for fraction in ("0.5", "1"):
            assert sum(ln.startswith(f"| lidar | {label} | {fraction} | 1 |") for ln in text.splitlines()) == 2
    assert all(0.0 <= r["mIoU_mean"] <= 1.0 for r in rows if r["task"] == "seg")
    assert "a miniature: " in out and "not the paper's result" in out and "docs/experiments.md" in out
    assert "9 unit(s) run, 0 done earlier" in out
    assert "0 unit(s) run, 9 done earlier" in second.stdout  # the rerun skips every finished unit


def test_demo_refuses_a_workdir_holding_another_dataset(tmp_path):
    (tmp_path / "nuscenes").mkdir()
    (tmp_path / "nuscenes" / "something").write_text("x")
    r = _demo(tmp_path)
    assert r.returncode == 2 and "nuscenes" in r.stderr
