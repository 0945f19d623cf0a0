"""Shared pytest fixtures. Tests mirror the package tree: tests/shared, tests/preprocess, ..."""
from __future__ import annotations

import os

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
