"""Training on a store with a corrupted shard: `calico train pretrain-prc` fails naming the shard file (exit status
2, one line); with --no-verify-shards it trains (sizes are still checked)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.data_catalog.test_reader_checks import AUG, flip_low_bytes, shard_file

REPO = Path(__file__).resolve().parents[2]


def test_pretrain_prc_refuses_a_corrupted_shard_and_trains_with_no_verify_shards(train_store, tmp_path):
    from typer.testing import CliRunner

    from calico.commands.train import app

    store, vid = train_store
    shutil.copytree(store, tmp_path / "store")
    target = shard_file(tmp_path / "store", vid, AUG, scene="scene-0103")
    flip_low_bytes(target)
    args = ["train", "pretrain-prc", "--store", str(tmp_path / "store"), "--version", vid, "--steps", "1",
            "--batch-size", "1", "--set", "data.n_rich=32", "--set", "data.n_less=32"]
    res = subprocess.run([sys.executable, "-m", "calico", *args, "--out", str(tmp_path / "bad")], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {target}: SHA-256 differs"), res.stderr
    assert "scene-0103" in lines[0] and not (tmp_path / "bad" / "checkpoints").exists()

    res = CliRunner().invoke(app, args[1:] + ["--out", str(tmp_path / "ok"), "--no-verify-shards"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["step"] == 1
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["data"]["verify_shards"] is False
