"""Where things are: the real sensor fixtures and default dataroots."""
from __future__ import annotations

import os
from pathlib import Path

#: The repository root (parent of this package) when running from a checkout.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Environment variable that overrides the fixtures folder.
FIXTURES_ENV = "CALICO_FIXTURES"


def fixtures_dir() -> Path:
    """Folder of the real nuScenes/KITTI fixtures: ``$CALICO_FIXTURES`` or ``../shared/fixtures``.

    The default is resolved relative to the repository root, so it works from any working directory
    of a checkout. The folder may be absent (a user's checkout does not have it); callers check.
    """
    env = os.environ.get(FIXTURES_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "fixtures").resolve()


def default_nuscenes_dataroot() -> Path:
    """``$NUSCENES`` if set, else ``/data/sets/nuscenes`` (nuscenes-devkit's convention)."""
    return Path(os.environ.get("NUSCENES", "/data/sets/nuscenes"))
