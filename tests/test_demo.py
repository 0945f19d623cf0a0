"""The README's main job: `calico demo` end to end on a generated dataset, then again reusing everything."""
import json
import subprocess
import sys

import pytest

from shared.paths import REPO_ROOT


def _demo(workdir, *extra):
    return subprocess.run([sys.executable, "-m", "calico", "demo", "--workdir", str(workdir), "--preset", "tiny",
                           "--workers", "1", "--train-steps", "4", "--rad-steps", "2", *extra], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_outputs(tmp_path):
    work = tmp_path / "demo"
    first = _demo(work)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    for step in ("[1/7] generating", "[2/7] nuscenes-devkit loaded", "[3/7]", "[4/7] store verified",
                 "[5/7] PRC pre-training", "[6/7] RAD distillation", "[7/7]"):
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
    assert "[1/7] reusing" in second.stdout and "already committed" in second.stdout + second.stderr
    assert {p: p.stat().st_mtime_ns for p in versions[0].rglob("manifest.json")} == mtimes  # nothing rewritten
    assert list((work / "store" / "versions").iterdir()) == versions
    runs = sorted((work / "runs").iterdir())
    assert [r.name.split("-")[0] for r in runs] == ["prc", "rad"]
    assert all((r / "metrics.jsonl").is_file() and (r / "loss.png").is_file() for r in runs)


def test_demo_refuses_a_workdir_holding_another_dataset(tmp_path):
    (tmp_path / "nuscenes").mkdir()
    (tmp_path / "nuscenes" / "something").write_text("x")
    r = _demo(tmp_path)
    assert r.returncode == 2 and "nuscenes" in r.stderr
