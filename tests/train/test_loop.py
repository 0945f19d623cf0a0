"""The PRC loop on the tiny store: metrics and checkpoints, SIGKILL + resume gives the uninterrupted losses,
store-version check on resume, NaN guard, configuration errors, the CLI."""
from __future__ import annotations

import copy
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from shared.errors import ConfigError, InputError
from tests.train.conftest import assert_same_run, assert_same_state, prc_without_batchnorm
from train.checkpoint import checkpoint_steps, latest_checkpoint, load_checkpoint, save_checkpoint
from train.config import DataConfig, OptimConfig, TrainConfig, small, with_overrides
from train.loop import TrainingDiverged, pretrain_prc, read_metrics

REPO = Path(__file__).resolve().parents[2]


def _cfg(train_store, *sets):
    store, vid = train_store
    base = ["data.n_rich=64", "data.n_less=64", "optim.warmup_steps=2", "optim.max_steps=4", "ckpt_every=2"]
    return with_overrides(small(str(store), vid), base + list(sets))


class NanModel(nn.Module):
    """A stand-in following the batch contract: a linear map of the sampled points' features; its loss is
    NaN on the calls listed in ``nan_calls``."""

    def __init__(self, nan_calls=()):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, batch):
        self.calls += 1
        pts = batch["points"][:, batch["sample_idx"].reshape(-1)]  # (2, B*K, 4)
        loss = self.lin(pts).pow(2).mean()
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        return {"loss": loss, "plrc": loss.detach(), "rapc": loss.detach()}


def test_loop_writes_metrics_checkpoints_and_plot(train_store, tmp_path):
    cfg = _cfg(train_store)
    summary = pretrain_prc(cfg, tmp_path)
    assert summary["step"] == 4 and summary["store_version"] == train_store[1]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert set(r) >= {"step", "loss", "plrc", "rapc", "lr", "grad_norm", "seconds", "epoch"}
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss", "plrc", "rapc", "grad_norm"))
        assert abs(r["loss"] - 0.5 * (r["plrc"] + r["rapc"])) < 1e-4  # alpha = 0.5
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(cfg.optim.lr / 2) and lrs[1] == pytest.approx(cfg.optim.lr)  # warmup of 2
    assert lrs[3] < lrs[2] == lrs[1]  # then cosine decay (from step 2 on)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step-00000002.pt", "step-00000004.pt"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 4 and state["store_version"] == train_store[1]
    assert state["config"] == cfg.to_dict() and TrainConfig.from_dict(state["config"]) == cfg
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert {"model", "optimizer", "scheduler", "epoch", "batch_in_epoch"} <= set(state)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()


#: A PRC run that SIGKILLs itself during its KILL_AT-th forward call (step KILL_AT under way).
_CHILD = """
import os, signal, sys, torch
torch.set_num_threads(1)
import train.tasks.prc as prc
from train.config import small, with_overrides
from train.loop import pretrain_prc
kill_at, forward, calls = int(sys.argv[4]), prc.PRCModel.forward, [0]
def dying(self, batch):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return forward(self, batch)
prc.PRCModel.forward = dying
cfg = with_overrides(small(sys.argv[1], sys.argv[2]), sys.argv[5:])
pretrain_prc(cfg, sys.argv[3])
"""


def test_sigkilled_then_resumed_gives_the_uninterrupted_run(train_store, tmp_path, one_thread):
    """Killed (SIGKILL, no chance to checkpoint) during step 5 with checkpoints every 2 steps: step 4's checkpoint
    and metrics lines 1-4 are there; the resumed run's losses, final weights, optimizer and scheduler state equal
    an uninterrupted run's."""
    sets = ["optim.max_steps=8", "ckpt_every=2", "deterministic=True"]
    cfg = _cfg(train_store, *sets)
    straight = tmp_path / "straight"
    pretrain_prc(cfg, straight)

    killed = tmp_path / "killed"
    store, vid = train_store
    base = ["data.n_rich=64", "data.n_less=64", "optim.warmup_steps=2"]
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(store), vid, str(killed), "5", *base, *sets],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    assert sorted(checkpoint_steps(killed)) == [2, 4]  # the state meant: mid-step 5, step 4 checkpointed
    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == [1, 2, 3, 4]

    pretrain_prc(cfg, killed)  # resumes from the latest checkpoint
    assert_same_run(killed, straight, 8)


def test_resume_refuses_another_store_version(train_store, tmp_path):
    cfg = _cfg(train_store, "optim.max_steps=2")
    pretrain_prc(cfg, tmp_path, model_fn=lambda c: NanModel())
    state = load_checkpoint(latest_checkpoint(tmp_path))
    state["store_version"] = "feedfacefeedface"
    save_checkpoint(tmp_path, state)
    with pytest.raises(InputError, match="feedfacefeedface.*" + train_store[1]):
        pretrain_prc(_cfg(train_store, "optim.max_steps=4"), tmp_path, model_fn=lambda c: NanModel())


def test_no_resume_into_a_folder_with_an_earlier_runs_checkpoints_is_refused(train_store, tmp_path):
    cfg = _cfg(train_store, "optim.max_steps=2")
    pretrain_prc(cfg, tmp_path, model_fn=lambda c: NanModel())
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(InputError, match="--no-resume.*earlier run.*step-00000002"):
        pretrain_prc(cfg, tmp_path, resume=False, model_fn=lambda c: NanModel())
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before  # nothing touched
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    fresh = tmp_path / "fresh"
    assert pretrain_prc(cfg, fresh, resume=False, model_fn=lambda c: NanModel())["step"] == 2  # a new folder trains


def test_nan_guard_skips_and_counts_then_stops(train_store, tmp_path):
    cfg = _cfg(train_store, "optim.max_steps=3", "max_nan=2")
    model = NanModel(nan_calls={2})
    summary = pretrain_prc(cfg, tmp_path / "a", model_fn=lambda c: model)
    assert summary["step"] == 3 and summary["nan_skipped"] == 1 and model.calls == 4
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [r["nan_skipped"] for r in rows] == [0, 1, 1]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(TrainingDiverged, match="2 consecutive"):
        pretrain_prc(cfg, tmp_path / "b", model_fn=lambda c: NanModel(nan_calls={2, 3}))


@pytest.mark.parametrize("make, field", [
    (lambda: DataConfig(batch_size=0), "data.batch_size"),
    (lambda: DataConfig(n_rich=-1), "data.n_rich"),
    (lambda: OptimConfig(lr=0.0), "optim.lr"),
    (lambda: OptimConfig(warmup_steps=-1), "optim.warmup_steps"),
    (lambda: OptimConfig(betas=(0.9, 1.0)), "optim.betas"),
    (lambda: with_overrides(small(), ["optim.nope=1"]), "optim.nope"),
    (lambda: with_overrides(small(), ["data.point_range=(-1, -1, -1, 1, 1, 1)"]), "data.point_range"),
    (lambda: with_overrides(small(), ["model.prc.tau=0"]), "tau"),
])
def test_config_errors_name_the_field(make, field):
    with pytest.raises(ConfigError) as exc:
        make()
    assert exc.value.field == field


def test_schedule_warms_up_then_decays_to_the_floor():
    o = OptimConfig(lr=1.0, warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    f = [o.lr_factor(s) for s in range(25)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(f[4:])) and f[20] == pytest.approx(0.1) and f[24] == f[20]


def test_cli_pretrain_prc(train_store, tmp_path):
    from typer.testing import CliRunner

    from calico.commands.train import app

    store, vid = train_store
    args = ["pretrain-prc", "--store", str(store), "--version", vid[:6], "--out", str(tmp_path), "--steps", "2",
            "--batch-size", "1", "--set", "data.n_rich=32", "--set", "data.n_less=32"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["step"] == 2
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2
    res = CliRunner().invoke(app, args[:-4] + ["--preset", "huge"])
    assert res.exit_code != 0 and "--preset" in str(res.exception)


#: A torchrun child: PRC without BatchNorm (tests/train/conftest.py) on the store, 1 scan per rank, global-batch
#: split; rank 1 sends itself SIGINT during step STOP_AT, so every rank must stop after that step. Each rank saves
#: {step, exit_status, model state_dict} to OUT/rank<r>.pt. With NO_ALLREDUCE=1 the model is not wrapped in
#: DistributedDataParallel (the control: no gradient all-reduce, each rank trains on its own scans).
_DDP_CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
if os.environ.get("NO_ALLREDUCE") == "1":
    torch.nn.parallel.DistributedDataParallel = lambda module, *a, **k: module
from tests.train.conftest import prc_without_batchnorm
from train.config import small, with_overrides
from train.interrupt import TrainingInterrupted
from train.loop import pretrain_prc

rank, stop_at, out = int(os.environ["RANK"]), int(sys.argv[4]), sys.argv[5]
cfg = with_overrides(small(sys.argv[2], sys.argv[3]), sys.argv[6:])
models = []

def build(c):
    model = prc_without_batchnorm(c)
    forward, calls = model.forward, [0]
    def signalling(batch):
        calls[0] += 1
        if rank == 1 and calls[0] == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(batch)
    model.forward = signalling
    models.append(model)
    return model

try:
    pretrain_prc(cfg, out, model_fn=build)
    step, status = None, 0
except TrainingInterrupted as exc:
    step, status = exc.step, exc.exit_status
torch.save({"step": step, "exit_status": status, "model": models[0].state_dict()}, f"{out}/rank{rank}.pt")
"""


@pytest.mark.slow
def test_torchrun_ranks_stay_bit_equal_and_match_one_process_on_the_same_global_batch(train_store, tmp_path,
                                                                                      one_thread):
    """DDP (gloo, 2 processes x 1 scan) against 1 process x 2 scans (``data.global_batch``: the same scans at each
    step), on PRC without BatchNorm (:func:`prc_without_batchnorm`: BatchNorm normalises per process and each rank
    moves its running statistics with its own scans, so neither a one-process equality nor bit-equal ranks' buffers
    could hold with it). Rank 1 alone gets a SIGINT during step 2: both ranks stop after step 2. Then: the ranks'
    weights are bit-equal, rank 0 checkpointed them, their change from the initial weights equals the one
    process's within 1e-4 relative per tensor (float reduction order; a norm, as Adam's first steps move a weight
    by ~lr whatever the size of its gradient, so an element whose gradient is ~0 may move either way), and a
    control run without the gradient all-reduce fails the rank check and is far from the one process."""
    store, vid = train_store
    sets = ["data.n_rich=64", "data.n_less=64", "data.global_batch=True", "deterministic=True",
            "optim.warmup_steps=1", "optim.max_steps=3", "ckpt_every=100"]
    built = []

    def build(c):
        built.append(prc_without_batchnorm(c))
        built.append(copy.deepcopy(built[0].state_dict()))  # the initial weights (the same on every rank)
        return built[0]

    pretrain_prc(with_overrides(small(str(store), vid), sets + ["data.batch_size=2"]), tmp_path / "one",
                 stop_after=2, model_fn=build)
    ref, init = built[0].state_dict(), built[1]

    def change_error(model: dict) -> dict[str, float]:
        """Per tensor: |change from init - the one process's change| / |the one process's change|."""
        return {k: float((model[k] - init[k] - (v - init[k])).norm() / (v - init[k]).norm()) for k, v in ref.items()}

    script = tmp_path / "ddp_child.py"
    script.write_text(_DDP_CHILD)
    ranks = {}
    for name, no_allreduce in (("ddp", "0"), ("control", "1")):
        out = tmp_path / name
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              str(script), str(REPO), str(store), vid, "2", str(out), *sets, "data.batch_size=1"],
                             cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1", NO_ALLREDUCE=no_allreduce),
                             capture_output=True, text=True, timeout=400, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        ranks[name] = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
        assert [(d["step"], d["exit_status"]) for d in ranks[name]] == [(2, 130), (2, 130)]  # the same stop step

    r0, r1 = ranks["ddp"]
    assert_same_state(r0["model"], r1["model"])  # bit-equal ranks
    assert_same_state(load_checkpoint(tmp_path / "ddp" / "checkpoints" / "step-00000002.pt")["model"], r0["model"])
    assert sorted(ref) == sorted(r0["model"])
    assert max(change_error(r0["model"]).values()) < 1e-4  # measured <= 9e-6 (float reduction order, 2 steps)
    a = read_metrics(tmp_path / "one" / "metrics.jsonl")
    b = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for k in ("loss", "plrc", "rapc", "grad_norm"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5), (ra["step"], k)

    c0, c1 = ranks["control"]
    with pytest.raises(AssertionError):  # without the all-reduce the ranks drift apart: the check catches it
        assert_same_state(c0["model"], c1["model"])
    assert min(change_error(c0["model"]).values()) > 1e-2  # measured >= 0.2: each rank learnt from its own scans


def test_checkpoint_files_latest_atomic_and_truncated(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (3, 12, 7):
        save_checkpoint(tmp_path, {"step": step, "x": torch.arange(step)})
    (tmp_path / "checkpoints" / ".tmp-abc.pt").write_bytes(b"partial")  # a writer that died: ignored
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step-00000012.pt" and torch.equal(load_checkpoint(latest)["x"], torch.arange(12))
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-") and p.name != ".tmp-abc.pt"]
    latest.write_bytes(latest.read_bytes()[:50])
    with pytest.raises(InputError, match="step-00000012.pt"):
        load_checkpoint(latest)
