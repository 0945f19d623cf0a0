"""One tiny synthetic dataset per test session, shared by the synth tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_root(synth_root):
    """(dataroot, version) of the ``tiny`` preset, seed 0 (the session's ``synth_root``)."""
    return synth_root


@pytest.fixture(scope="session")
def nusc(tiny_root):
    from nuscenes.nuscenes import NuScenes

    root, version = tiny_root
    return NuScenes(version=version, dataroot=str(root), verbose=False)
