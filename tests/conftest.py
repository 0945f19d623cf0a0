"""Shared pytest fixtures. Tests mirror the package tree: tests/shared, tests/preprocess, ..."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def fixtures_dir():
    """The real sensor fixtures (``$CALICO_FIXTURES`` or ``../shared/fixtures``); skip when absent."""
    from shared.paths import fixtures_dir as _fixtures_dir

    path = _fixtures_dir()
    if not (path / "nuscenes").is_dir():
        pytest.skip(f"real sensor fixtures not found at {path} (set CALICO_FIXTURES to their folder)")
    return path


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> tuple[Path, str]:
    """(dataroot, version) of the ``tiny`` synthetic dataset, seed 0, generated once per test session.

    Shared by every test of the session: a test that changes files copies the dataroot first.
    """
    from shared.synth import generate

    dataroot, version = generate(tmp_path_factory.mktemp("synth") / "tiny", preset="tiny", seed=0, progress=False)
    return Path(dataroot), version


@pytest.fixture(scope="session")
def tiny_store(synth_root, tmp_path_factory):
    """(store path, RunSummary) of a keyframes store of the ``tiny`` dataset, written once per session (in this
    process, no Dask). Read-only for the tests: a test that changes a store builds its own."""
    from preprocess.run import run

    root, version = synth_root
    store = tmp_path_factory.mktemp("store")
    summary = run(root, version, store, sweeps="keyframes", workers=0, progress=False, log=None)
    assert summary.failed_sweeps == 0 and not summary.failed_scenes
    return store, summary
