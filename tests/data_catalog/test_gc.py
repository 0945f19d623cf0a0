"""``calico catalog gc``: keeps what is asked, dry run touches nothing, trash of a crashed gc is emptied, versions
with a live writer are never removed."""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_catalog import gc
from data_catalog.layout import shard_dir, version_dir
from data_catalog.tables import finalize
from data_catalog.versions import create_version, list_versions
from data_catalog.writer import link_shard
from shared.errors import ConfigError, InputError

OLD = time.time() - 3600  # an hour ago: older than any grace period used here


def _age(path: Path, t: float = OLD) -> None:
    """Set the mtime of ``path`` and everything under it to ``t``."""
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.utime(os.path.join(root, n), (t, t), follow_symlinks=False)
    os.utime(path, (t, t))


def _snapshot(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_size for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path, make_shard):
    """A store with 4 versions (v0 oldest ... v3 latest), each with one real committed shard and its version
    tables, all an hour old."""
    from data_catalog.version import VersionSpec

    root = tmp_path / "store"
    ids = []
    for k in range(4):
        spec = VersionSpec(dataset_version="v1.0-mini", manifest_sha256="m", config={}, sweeps="keyframes",
                           seed=k, code_sha256="c")
        vdir, _ = create_version(root, spec, {"scenes": ["scene-a"]})
        make_shard(scene="scene-a", sizes=(200 + 100 * k, 50), seed=k, vdir=vdir)
        finalize(vdir)
        ids.append(spec.id)
    _age(root)
    return root, ids


def _ids(root: Path) -> list[str]:
    return [d["id"] for d in list_versions(root)]


def test_keeps_what_is_asked_and_removes_the_rest(store):
    root, ids = store
    plan = gc.plan_gc(root, keep=(ids[0][:6],), keep_latest=1)
    assert [v.action for v in plan.versions] == ["keep", "remove", "remove", "keep"]
    sizes = {v.id: gc.tree_bytes(version_dir(root, v.id)) for v in plan.versions}
    assert plan.bytes_freed == sizes[ids[1]] + sizes[ids[2]] > 0
    res = gc.collect(root, plan)
    assert res.removed == [ids[1], ids[2]] and res.bytes_freed == plan.bytes_freed and not res.skipped
    assert _ids(root) == [ids[0], ids[3]]
    assert not (root / gc.TRASH).exists()
    # what is left is intact
    from data_catalog.verify import verify_version

    assert all(verify_version(version_dir(root, i)).ok for i in _ids(root))


def test_a_shard_hard_linked_into_a_kept_version_is_not_counted_as_freed(store):
    """``--retry-failed`` hard-links unchanged shards into the new version: removing the old version frees
    only what no kept version links to, and the kept version stays whole."""
    from data_catalog.verify import verify_shard

    root, ids = store
    src = shard_dir(version_dir(root, ids[0]), "scene-a")
    link_shard(src, version_dir(root, ids[3]), "scene-b")
    linked = gc.tree_bytes(src)
    plan = gc.plan_gc(root, keep_latest=1)
    assert [v.id for v in plan.to_remove] == ids[:3]
    assert plan.bytes_freed == sum(v.bytes for v in plan.to_remove) - linked > 0
    res = gc.collect(root, plan)
    assert res.bytes_freed == plan.bytes_freed
    assert verify_shard(shard_dir(version_dir(root, ids[3]), "scene-b")) == []


def test_latest_kept_by_default_and_only_removed_when_asked(store):
    root, ids = store
    gc.collect(root, gc.plan_gc(root))
    assert _ids(root) == [ids[3]]
    assert gc.plan_gc(root).to_remove == ()  # the only version, which is the latest, stays
    gc.collect(root, gc.plan_gc(root, keep_latest=0))
    assert _ids(root) == []


def test_bad_arguments(store):
    root, _ = store
    with pytest.raises(InputError, match="ffff"):
        gc.plan_gc(root, keep=("ffff",))
    with pytest.raises(ConfigError, match="keep_latest"):
        gc.plan_gc(root, keep_latest=-1)
    with pytest.raises(InputError, match="not a store"):
        gc.plan_gc(root / "nothing")


def test_dry_run_removes_nothing(store):
    from typer.testing import CliRunner

    from calico.cli import app

    root, ids = store
    before = _snapshot(root)
    r = CliRunner().invoke(app, ["catalog", "gc", "--store", str(root), "--keep-latest", "2"])
    assert r.exit_code == 0, r.output
    assert "would remove 2 version(s)" in r.output and "dry run" in r.output
    assert _snapshot(root) == before
    r = CliRunner().invoke(app, ["catalog", "gc", "--store", str(root), "--keep-latest", "2", "--yes"])
    assert r.exit_code == 0, r.output
    assert f"removed 2 version(s) ({ids[0]}, {ids[1]})" in r.output
    assert _ids(root) == ids[2:]


def test_a_crashed_gc_leaves_no_valid_looking_version_and_the_next_gc_cleans_it(store):
    root, ids = store
    # a gc killed between the rename and the end of rmtree: the version sits in trash/, partly deleted
    trash = root / gc.TRASH
    trash.mkdir()
    half = trash / f"{ids[1]}-deadbeef"
    os.rename(version_dir(root, ids[1]), half)
    (half / "version.json").unlink()
    assert _ids(root) == [ids[0], ids[2], ids[3]]  # invisible to list/open_version already
    plan = gc.plan_gc(root, keep=(ids[0], ids[2]))
    assert plan.trash == (half,) and plan.trash_bytes > 0 and plan.to_remove == ()
    res = gc.collect(root, plan)
    assert res.trash_emptied == [half] and res.removed == []
    assert not trash.exists() and _ids(root) == [ids[0], ids[2], ids[3]]


def test_a_kill_during_gc_leaves_whole_versions_only(store):
    """A real gc process dies by SIGKILL in the middle of deleting a version (half of its files gone): every
    version left in versions/ is whole and verifies; a rerun finishes the job."""
    from data_catalog.verify import verify_version

    root, ids = store
    code = """if True:
        import os, signal, sys
        from pathlib import Path
        from data_catalog import gc

        def dying_rmtree(path, *a, **k):  # delete half the files, then get killed
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            for f in files[: len(files) // 2]:
                f.unlink()
            os.kill(os.getpid(), signal.SIGKILL)

        gc.shutil.rmtree = dying_rmtree
        gc.collect(sys.argv[1], gc.plan_gc(sys.argv[1], keep_latest=1))
    """
    p = subprocess.run([sys.executable, "-c", code, str(root)], check=False, timeout=60)
    assert p.returncode == -9
    left = list((root / gc.TRASH).iterdir())
    assert len(left) == 1 and left[0].name.startswith(ids[0])  # the oldest, half deleted, in trash/
    assert _ids(root) == ids[1:]
    for vid in _ids(root):
        assert verify_version(version_dir(root, vid)).ok
    res = gc.collect(root, gc.plan_gc(root, keep_latest=1))
    assert res.trash_emptied == left and res.removed == ids[1:3]
    assert _ids(root) == [ids[3]] and not (root / gc.TRASH).exists()


def _tmp_shard(vdir: Path, pid: int, host: str | None = None) -> Path:
    p = vdir / "shards" / f".tmp-scene-b-{host or socket.gethostname()}-{pid}-0123abcd"
    p.mkdir()
    (p / "xyz").write_bytes(b"partial")
    return p


def test_refuses_a_version_with_a_live_writer(store):
    root, ids = store
    vdir = version_dir(root, ids[1])
    _tmp_shard(vdir, os.getpid())  # this process is alive: a writer at work
    _age(vdir)
    plan = gc.plan_gc(root)
    by_id = {v.id: v for v in plan.versions}
    assert by_id[ids[1]].action == "keep" and "live pid" in by_id[ids[1]].reason
    assert plan.busy == (by_id[ids[1]],)
    res = gc.collect(root, plan)
    assert sorted(res.removed) == [ids[0], ids[2]] and vdir.is_dir()

    from typer.testing import CliRunner

    from calico.cli import app

    r = CliRunner().invoke(app, ["catalog", "gc", "--store", str(root), "--yes"])
    assert r.exit_code == 1 and "busy" in r.output and vdir.is_dir()


def test_dead_writer_leftovers_do_not_block(store):
    root, ids = store
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is not running any more
    vdir = version_dir(root, ids[1])
    _tmp_shard(vdir, dead.pid)
    _age(vdir)
    assert gc.writer_activity(vdir) is None
    assert ids[1] in gc.collect(root, gc.plan_gc(root)).removed


def test_recent_activity_and_other_hosts_count_as_busy(store):
    root, ids = store
    v1, v2 = version_dir(root, ids[1]), version_dir(root, ids[2])
    (v1 / "shards" / "scene-a" / "manifest.json").touch()  # a shard committed just now, no .tmp left
    _tmp_shard(v2, 1, host="some-other-host")  # a writer elsewhere (pid unknowable), touched now
    assert "modified" in gc.writer_activity(v1, grace_s=600)
    assert "another host" in gc.writer_activity(v2, grace_s=600)
    assert gc.writer_activity(v1, grace_s=0) is None and gc.writer_activity(v2, grace_s=0) is None
    plan = gc.plan_gc(root, grace_s=600)
    assert [v.id for v in plan.to_remove] == [ids[0]]
    _age(v2)  # the other host's writer went quiet an hour ago: a leftover
    assert gc.writer_activity(v2, grace_s=600) is None


def test_a_writer_that_starts_after_the_plan_is_respected(store):
    root, ids = store
    plan = gc.plan_gc(root)
    assert ids[0] in [v.id for v in plan.to_remove]
    _tmp_shard(version_dir(root, ids[0]), os.getpid())
    res = gc.collect(root, plan)
    assert ids[0] not in res.removed and "busy" in res.skipped[ids[0]]
    assert version_dir(root, ids[0]).is_dir()


def test_two_gcs_at_once(store):
    root, _ = store
    with open(root / gc.LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another calico catalog gc"):
            gc.collect(root, gc.plan_gc(root))
    assert len(_ids(root)) == 4
