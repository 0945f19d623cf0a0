"""Fixtures of tests/shared: a generated nuScenes dataroot (``shared.synth``, preset ``tiny``), made once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> tuple[Path, str]:
    """(dataroot, version) of the ``tiny`` synthetic dataset, seed 0, generated once per test session."""
    try:
        from shared.synth import generate
    except ImportError as exc:
        pytest.skip(f"shared.synth is not importable ({exc}): the synthetic-dataset generator is needed")
    dataroot, version = generate(tmp_path_factory.mktemp("synth"), preset="tiny", seed=0, progress=False)
    return Path(dataroot), version


@pytest.fixture(scope="session")
def synth_nusc(synth_root):
    """devkit ``NuScenes`` over the generated dataroot, opened (and link-checked) by calico's reader.

    Shared by the session: tests must not modify it.
    """
    from shared.nuscenes_io import open_nuscenes

    dataroot, version = synth_root
    return open_nuscenes(dataroot, version)
