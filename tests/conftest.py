"""Shared pytest fixtures. Tests mirror the package tree: tests/shared, tests/preprocess, ..."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("MPLBACKEND", "Agg")

# Hypothesis: in CI (env CI set, as .ci/run does) the examples are derived from each test's name, not drawn at
# random, and no example database is kept, so a run is repeatable; elsewhere the default random profile.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


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
def synth_nusc(synth_root):
    """devkit ``NuScenes`` over the generated dataroot, opened (and link-checked) by calico's reader.

    Shared by the session: tests must not modify it.
    """
    from shared.nuscenes_io import open_nuscenes

    dataroot, version = synth_root
    return open_nuscenes(dataroot, version)


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``root``, by relative path."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_store(synth_root, tmp_path_factory):
    """(store path, RunSummary) of a keyframes store of the ``tiny`` dataset, written once per session (in this
    process, no Dask). Read-only for the tests: a test that changes a store (a rerun writes a run record and
    the version tables) copies it or builds its own. Checked: at the end of the session every file is as it
    was, or the last test using it errors, naming what changed."""
    from preprocess.run import run

    root, version = synth_root
    store = tmp_path_factory.mktemp("store")
    summary = run(root, version, store, sweeps="keyframes", workers=0, progress=False, log=None)
    assert summary.failed_sweeps == 0 and not summary.failed_scenes
    before = tree_state(store)
    yield store, summary
    after = tree_state(store)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the read-only session store {store}: {', '.join(changed[:5])}"
