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
