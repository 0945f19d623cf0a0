"""Fixtures of the training tests: a store of the generated ``tiny`` dataset (2 scenes x 3 keyframes)."""
from __future__ import annotations

import pytest


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
