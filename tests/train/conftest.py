"""Fixtures of the training tests: a store of the generated ``tiny`` dataset (2 scenes x 3 keyframes)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def train_store(tiny_store):
    """(store path, version id) of the session's keyframes store of the tiny dataset (tests/conftest.py).

    Tests may import ``preprocess`` to build it; ``train`` itself never does (test_data checks that).
    """
    store, summary = tiny_store
    return store, summary.version


#: Overrides that make the PRC runs of the tests small and quick.
PRC_TEST_SETS = ["data.n_rich=64", "data.n_less=64", "optim.warmup_steps=2", "optim.max_steps=3", "ckpt_every=3"]


@pytest.fixture(scope="session")
def prc_teacher(train_store, tmp_path_factory):
    """A PRC run folder (3 steps of the small preset) on the session store: the teacher of the RAD tests."""
    from train.config import small, with_overrides
    from train.loop import pretrain_prc

    store, vid = train_store
    out = tmp_path_factory.mktemp("prc_teacher")
    pretrain_prc(with_overrides(small(str(store), vid), PRC_TEST_SETS), out)
    return out


#: Overrides that make the RAD runs of the tests small and quick (a 64x128 input, 18 depth bins).
RAD_TEST_SETS = ["data.n_rich=64", "data.n_less=64", "data.num_workers=0", "optim.warmup_steps=2",
                 "optim.max_steps=3", "ckpt_every=3", "model.camera.image_size=(64, 128)", "images.size=(64, 128)",
                 "model.lss.depth_bins=(1.0, 37.0, 2.0)", "model.lss.channels=16", "model.lss.bev_channels=32",
                 "model.camera.neck_channels=32"]


def rad_config(train_store, teacher, *sets):
    """The small RAD preset for ``teacher`` (a run folder) with :data:`RAD_TEST_SETS` and ``sets`` applied, as the
    CLI builds it."""
    from calico.commands.train import train_config

    store, vid = train_store
    return train_config("small", "rad", store, vid, None, None, RAD_TEST_SETS + list(sets), teacher=teacher)


@pytest.fixture
def one_thread():
    """CPU results depend on the thread count (reduction order): pin it to 1 here (and in the test's children)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_state(a, b, path: str = "") -> None:
    """``a`` and ``b`` (state dicts, optimizer states: nested dicts / lists of tensors and plain values) are equal:
    tensors bit for bit (same dtype and shape), everything else with ``==``."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), (path, sorted(a), sorted(b))
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), (path, (a.float() - b.float()).abs().max().item())
    else:
        assert a == b, (path, a, b)


def prc_without_batchnorm(cfg):
    """``PRCModel(cfg.prc)`` with every BatchNorm replaced by an identity: for comparing W processes with one
    process on the same global batch exactly (BatchNorm normalises over each process's scans, and each rank
    updates its running statistics from its own scans; without it the PRC loss, a mean of per-scan losses, gives
    W x 1 scans the gradient of 1 x W scans)."""
    from torch import nn

    from train.tasks.prc import PRCModel

    model = PRCModel(cfg.prc)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                setattr(parent, name, nn.Identity())
    return model


def assert_same_run(run, reference, steps: int, keys=("loss", "plrc", "rapc", "lr", "grad_norm")) -> None:
    """The run folder ``run`` (e.g. interrupted and resumed) ended as ``reference`` did: metric lines of steps
    1..steps with ``keys`` equal within 1e-6 relative, and the final checkpoints' model, optimizer and scheduler
    states bit-equal."""
    from train.checkpoint import latest_checkpoint, load_checkpoint
    from train.loop import read_metrics

    got, ref = read_metrics(run / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, steps + 1))
    for a, b in zip(got, ref):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (a["step"], k)
    end_a, end_b = load_checkpoint(latest_checkpoint(run)), load_checkpoint(latest_checkpoint(reference))
    assert end_a["step"] == end_b["step"] == steps
    for part in ("model", "optimizer", "scheduler"):
        assert_same_state(end_a[part], end_b[part], part)
