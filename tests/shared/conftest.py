"""Fixtures of tests/shared: devkit over the generated ``tiny`` dataroot (``synth_root``, tests/conftest.py)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def synth_nusc(synth_root):
    """devkit ``NuScenes`` over the generated dataroot, opened (and link-checked) by calico's reader.

    Shared by the session: tests must not modify it.
    """
    from shared.nuscenes_io import open_nuscenes

    dataroot, version = synth_root
    return open_nuscenes(dataroot, version)
