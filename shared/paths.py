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


def absolute(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute against the current directory and normalised (``a/../b`` is
    ``b``), without resolving symbolic links: the path as this machine names it, which is what a run sends to
    workers that may run in other directories or on other machines."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def check_folder(path: str | os.PathLike, what: str, *, must_exist: bool = True) -> Path:
    """The absolute path (:func:`absolute`) of a folder given as ``what`` (e.g. ``--store``), checked before
    anything is written: :class:`shared.errors.InputError` naming it when it is a file, when a parent of it is a
    file (so that it cannot be created), or, with ``must_exist``, when it does not exist."""
    from shared.errors import InputError

    p = absolute(path)
    if p.is_dir():
        return p
    if p.exists():
        raise InputError(f"{what} must be a folder, but this is a file", p)
    if must_exist:
        raise InputError(f"{what}: folder not found", p)
    parent = next(a for a in p.parents if a.exists())  # the root always exists
    if not parent.is_dir():
        raise InputError(f"{what} cannot be created here: {parent} is a file, not a folder", p)
    return p


def check_file(path: str | os.PathLike, what: str) -> Path:
    """The absolute path (:func:`absolute`) of an existing file given as ``what``; :class:`InputError` naming it
    when it does not exist or is a folder."""
    from shared.errors import InputError

    p = absolute(path)
    if p.is_dir():
        raise InputError(f"{what} must be a file, but this is a folder", p)
    if not p.exists():
        raise InputError(f"{what}: file not found", p)
    return p
