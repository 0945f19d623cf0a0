"""Interrupting and resuming training: SIGINT to a real `calico train pretrain-prc` writes the checkpoint of the
step under way, exits 130 saying how to resume, and the resumed run equals an uninterrupted one (losses, weights,
optimizer state); SIGTERM exits 143; a second signal aborts at once; a resume with another configuration is
refused naming the fields unless allowed (then logged); progress lines; checkpoint pruning."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.conftest import assert_same_run
from tests.train.test_loop import NanModel, _cfg
from train.checkpoint import (checkpoint_scores, checkpoint_steps, checkpoints_to_prune, latest_checkpoint,
                              load_checkpoint)
from train.interrupt import TrainingInterrupted
from train.loop import ResumeRefused, pretrain_prc, read_metrics
from train.progress import progress_line

REPO = Path(__file__).resolve().parents[2]

#: `python -m calico` with PRCModel.forward pausing at its PAUSE_AT-th call (step PAUSE_AT under way): it writes
#: "ready" into FLAG and waits until the test has sent its signal and written "sent".
_PAUSING_CLI = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import train.tasks.prc as prc
pause_at, flag = int(sys.argv[1]), Path(sys.argv[2])
forward, calls = prc.PRCModel.forward, [0]
def pausing(self, batch):
    calls[0] += 1
    if calls[0] == pause_at:
        flag.write_text("ready")
        while flag.read_text() != "sent":
            time.sleep(0.01)
    return forward(self, batch)
prc.PRCModel.forward = pausing
sys.argv = ["calico", *sys.argv[3:]]
from calico.cli import main
main()
"""


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text() == text):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the child never reached the pause point"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigint_to_the_cli_checkpoints_the_step_and_the_resumed_run_equals_an_uninterrupted_one(
        train_store, tmp_path, one_thread):
    from typer.testing import CliRunner

    from calico.commands.train import app, train_config

    store, vid = train_store
    out = tmp_path / "interrupted"
    sets = ["data.n_rich=64", "data.n_less=64", "data.num_workers=2", "optim.warmup_steps=2", "ckpt_every=100",
            "deterministic=True"]
    args = ["pretrain-prc", "--store", str(store), "--version", vid, "--steps", "6", "--out", str(out),
            *[a for s in sets for a in ("--set", s)]]
    straight = tmp_path / "straight"
    pretrain_prc(train_config("small", "prc", store, vid, 6, None, sets), straight)

    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSING_CLI, "4", str(flag), "train", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(flag, "ready", proc)
    assert latest_checkpoint(out) is None and len(read_metrics(out / "metrics.jsonl")) == 3  # step 4 under way
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group, DataLoader workers too
    flag.write_text("sent")
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-3000:]
    ckpt = out / "checkpoints" / "step-00000004.pt"
    assert f"interrupted by SIGINT after step 4: checkpoint {ckpt} written; rerun the same command to resume " \
           f"(it resumes from {out})" in stderr.splitlines(), stderr
    assert stdout == ""  # no summary: the run did not finish
    state = load_checkpoint(ckpt)
    assert list(checkpoint_steps(out)) == [4] and state["step"] == 4
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]

    res = CliRunner().invoke(app, args)  # the same command resumes
    assert res.exit_code == 0, res.output
    assert f"resuming from {ckpt} (step 4 of 6, epoch {state['epoch']})" in res.stderr
    assert_same_run(out, straight, 6)


class SignallingModel(NanModel):
    """NanModel sending this process ``signals`` (a list of signal numbers) during its ``at``-th forward call."""

    def __init__(self, at: int, signals):
        super().__init__()
        self.at, self.signals = at, list(signals)

    def forward(self, batch):
        out = super().forward(batch)
        if self.calls == self.at:
            for s in self.signals:
                os.kill(os.getpid(), s)
        return out


def test_sigterm_finishes_the_step_checkpoints_it_and_restores_the_handlers(train_store, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    cfg = _cfg(train_store, "optim.max_steps=5", "ckpt_every=100")
    with pytest.raises(TrainingInterrupted) as exc:
        pretrain_prc(cfg, tmp_path, model_fn=lambda c: SignallingModel(2, [signal.SIGTERM]))
    assert exc.value.exit_status == 143 and exc.value.step == 2
    assert "SIGTERM after step 2" in str(exc.value) and str(tmp_path) in str(exc.value)
    assert list(checkpoint_steps(tmp_path)) == [2] and not (tmp_path / "loss.png").exists()
    assert signal.getsignal(signal.SIGTERM) is before
    summary = pretrain_prc(cfg, tmp_path, model_fn=lambda c: NanModel())
    assert summary["step"] == 5 and [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_a_second_signal_of_the_same_kind_aborts_at_once(train_store, tmp_path):
    cfg = _cfg(train_store, "optim.max_steps=5", "ckpt_every=100")
    with pytest.raises(KeyboardInterrupt):
        pretrain_prc(cfg, tmp_path, model_fn=lambda c: SignallingModel(2, [signal.SIGINT, signal.SIGINT]))
    assert checkpoint_steps(tmp_path) == {}  # abandoned: no checkpoint of the step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_with_another_configuration_is_refused_unless_allowed_then_logged(train_store, tmp_path, capsys):
    model = lambda c: NanModel()  # noqa: E731
    pretrain_prc(_cfg(train_store, "optim.max_steps=2"), tmp_path, model_fn=model)
    with pytest.raises(ResumeRefused) as exc:
        pretrain_prc(_cfg(train_store, "optim.max_steps=4", "optim.lr=0.01", "log_every=2"), tmp_path,
                     model_fn=model)
    assert exc.value.fields == {"optim.lr": (0.001, 0.01), "optim.max_steps": (2, 4)}  # log_every does not count
    msg = str(exc.value)
    assert msg.startswith(str(tmp_path / "checkpoints" / "step-00000002.pt"))
    assert "optim.lr (checkpoint 0.001, now 0.01), optim.max_steps (checkpoint 2, now 4)" in msg
    assert "--allow-config-change" in msg and not (tmp_path / "config_changes.jsonl").exists()
    assert max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")) == 2  # nothing touched

    capsys.readouterr()
    summary = pretrain_prc(_cfg(train_store, "optim.max_steps=4", "log_every=2"), tmp_path, model_fn=model,
                           allow_config_change=True)
    assert summary["step"] == 4
    [change] = [json.loads(ln) for ln in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
    assert change["step"] == 2 and change["checkpoint"].endswith("step-00000002.pt")
    assert change["changes"] == {"optim.max_steps": [2, 4], "log_every": [1, 2]}
    assert change["allowed_with_flag"] == ["optim.max_steps"]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"configuration changed on resume at step 2: optim.max_steps 2 -> 4, log_every 1 -> 2 " \
                     f"(--allow-config-change); logged in {tmp_path / 'config_changes.jsonl'}"
    assert err[1].startswith(f"resuming from {tmp_path / 'checkpoints' / 'step-00000002.pt'} (step 2 of 4")
    assert err[2].startswith("step 4/4 (100%)  loss ") and "steps/s  ETA 0:00:00" in err[2]
    assert load_checkpoint(latest_checkpoint(tmp_path))["config"]["optim"]["max_steps"] == 4


def test_progress_lines_every_log_every_steps(train_store, tmp_path, capsys):
    pretrain_prc(_cfg(train_store, "optim.max_steps=5", "log_every=2"), tmp_path, model_fn=lambda c: NanModel())
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split()[1] for ln in lines] == ["2/5", "4/5", "5/5"]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    for ln, row in zip(lines, rows, strict=True):  # a line per metrics line
        assert ln.startswith(f"step {row['step']}/5 ({row['step'] * 20}%)  loss {row['loss']:.4f}  ")
        assert float(ln.split("  ")[2].split()[0]) > 0 and " steps/s  ETA 0:00:" in ln
    assert progress_line(1, 5, 2.0, None) == "step 1/5 (20%)  loss 2.0000  - steps/s  ETA -"  # no rate yet
    assert progress_line(50, 200, 2.0, 0.5) == "step 50/200 (25%)  loss 2.0000  0.50 steps/s  ETA 0:05:00"


def test_pruning_keeps_the_last_k_and_the_best_by_logged_loss():
    rows = [{"step": s, "loss": v} for s, v in zip(range(1, 9), [5, 4, 1, 3, 3, 2, 4, 4])]
    scores = checkpoint_scores([2, 4, 6, 8], rows, window=2)
    assert scores == {2: 4.5, 4: 2.0, 6: 2.5, 8: 4.0}
    assert checkpoints_to_prune([2, 4, 6, 8], 1, scores) == [2, 6]  # kept: 8 (last), 4 (best)
    assert checkpoints_to_prune([2, 4, 6, 8], 2, scores) == [2]
    assert checkpoints_to_prune([2, 4, 6, 8], 1, None) == [2, 4, 6]  # keep_best=False
    assert checkpoints_to_prune([2, 4, 6, 8], 1, None, protect=(2,)) == [4, 6]
    evals = [{"step": 3, "acc": 0.9}, {"step": 6, "acc": 0.5}]
    assert checkpoint_scores([2, 4, 6], rows, 2, evals, ("acc", "max")) == {4: -0.9, 6: -0.5}


def test_a_run_prunes_its_checkpoints_but_never_the_one_it_resumed_from(train_store, tmp_path):
    model = lambda c: NanModel()  # noqa: E731
    run = tmp_path / "a"
    pretrain_prc(_cfg(train_store, "optim.max_steps=5", "ckpt_every=1", "keep_last=2"), run, model_fn=model)
    losses = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl")}
    best = min(losses, key=lambda s: (losses[s], -s))
    assert sorted(checkpoint_steps(run)) == sorted({4, 5, best})

    out = tmp_path / "b"
    sets = ["ckpt_every=1", "keep_last=1", "keep_best=False"]
    pretrain_prc(_cfg(train_store, "optim.max_steps=2", *sets), out, model_fn=model)
    assert list(checkpoint_steps(out)) == [2]
    pretrain_prc(_cfg(train_store, "optim.max_steps=5", *sets), out, model_fn=model, allow_config_change=True)
    assert sorted(checkpoint_steps(out)) == [2, 5]  # 2: resumed from; 5: written
