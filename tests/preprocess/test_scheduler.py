"""``calico preprocess run --scheduler``: an external Dask cluster (real ``dask scheduler`` / ``dask worker``
processes started from another folder) given relative paths; workers that cannot see the dataroot; Ctrl-C of a
run; the connection checks and the kernels' compilation notice (preprocess/dask_setup.py,
shared/compile_notice.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_catalog.layout import committed_scenes, is_committed, read_manifest
from data_catalog.reader import open_version
from data_catalog.verify import verify_version
from preprocess import dask_setup
from shared.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _wait_for(cond, what: str, timeout: float = 60.0, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first (status {proc.returncode})")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class ExternalCluster:
    """A ``dask scheduler`` and ``dask worker`` processes, all started in ``cwd`` (not the driver's folder);
    ``wrap`` prefixes each worker's command line (e.g. ``unshare``)."""

    def __init__(self, cwd: Path, workers: int = 1, wrap: tuple[str, ...] = ()):
        cwd.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd
        sfile = cwd / "scheduler.json"
        py = [sys.executable, "-m", "dask"]
        self.procs = [subprocess.Popen([*py, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                        "--scheduler-file", str(sfile)], cwd=cwd, env=_env(),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            _wait_for(lambda: sfile.is_file() and sfile.stat().st_size > 0, "the scheduler file", proc=self.procs[0])
            time.sleep(0.2)  # written whole
            self.address = json.loads(sfile.read_text())["address"]
            for _ in range(workers):
                self.procs.append(subprocess.Popen(
                    [*wrap, *py, "worker", self.address, "--nthreads", "1", "--no-dashboard",
                     "--local-directory", str(cwd / "scratch")], cwd=cwd, env=_env(),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.workers = _wait_for(lambda: self._workers(workers), f"{workers} worker(s)", timeout=90)
        except BaseException:
            _stop(self.procs)
            raise

    def _workers(self, n: int) -> list[str] | None:
        from distributed import Client

        with Client(self.address, timeout=10) as c:
            found = sorted(c.scheduler_info()["workers"])
        return found if len(found) >= n else None

    def close(self) -> None:
        _stop(self.procs[::-1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One scheduler and one worker, started in a folder of their own."""
    c = ExternalCluster(tmp_path_factory.mktemp("elsewhere"))
    yield c
    c.close()


def _calico(*args, cwd: Path, timeout: float = 300):
    """The real CLI, in ``cwd``, output not a terminal."""
    return subprocess.run([sys.executable, "-m", "calico", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(r, *needles) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr[-3000:])
    err = r.stderr.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in err[-1], err[-1]
    return err[-1]


def assert_same_store_version(a: Path, b: Path) -> None:
    """Two store versions hold the same shards: the same scenes, per shard the same content checksum, counts and
    file checksums (``sweeps.parquet`` aside: its timing columns differ between runs; its other columns are
    compared), the same errors."""
    assert a.name == b.name  # the version id
    assert committed_scenes(a) == committed_scenes(b) != []
    for scene in committed_scenes(a):
        ma, mb = read_manifest(a / "shards" / scene), read_manifest(b / "shards" / scene)
        assert ma["content_sha256"] == mb["content_sha256"] and ma["counts"] == mb["counts"]
        assert {k: v for k, v in ma["files"].items() if k != "sweeps.parquet"} == \
               {k: v for k, v in mb["files"].items() if k != "sweeps.parquet"}
    ta, tb = (open_version(p.parent.parent, p.name) for p in (a, b))
    keep = [c for c in ta.sweeps_table().column_names if not c.startswith("t_")]
    assert ta.sweeps_table().select(keep).equals(tb.sweeps_table().select(keep))
    assert ta.errors_table().num_rows == tb.errors_table().num_rows


@pytest.mark.slow
def test_external_scheduler_with_relative_paths_gives_the_local_store(cluster, synth_root, tiny_store, tmp_path):
    """The driver runs in one folder, the scheduler and its worker in another; --dataroot and --store are
    relative to the driver's folder. The store is complete, identical to the in-process run's (tiny_store), and
    nothing is written in the workers' folder; the rerun skips every scene."""
    root, version = synth_root
    driver = tmp_path / "driver"
    driver.mkdir()
    rel_root = os.path.relpath(root, driver)
    assert not Path(rel_root).is_absolute() and not (cluster.cwd / rel_root).exists()
    before = set(p.name for p in cluster.cwd.iterdir())
    r = _calico("preprocess", "run", "--store", "store", "--dataroot", rel_root, "--version", version,
                "--scheduler", cluster.address, "--no-progress", "--json", cwd=driver)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["scenes_done"] == 2 and summary["sweeps_done"] == 6 and summary["failed_sweeps"] == 0
    assert summary["workers"] == 1 and summary["path"] == str(driver / "store" / "versions" / summary["version"])
    ref_store, ref = tiny_store
    assert_same_store_version(Path(summary["path"]), Path(ref.path))
    assert verify_version(summary["path"]).ok
    assert set(p.name for p in cluster.cwd.iterdir()) == before  # nothing under the workers' folder
    again = _calico("preprocess", "run", "--store", "store", "--dataroot", rel_root, "--version", version,
                    "--scheduler", cluster.address, "--no-progress", "--json", cwd=driver)
    assert again.returncode == 0 and json.loads(again.stdout)["scenes_skipped"] == 2, again.stderr[-2000:]


@pytest.mark.slow
def test_a_worker_that_cannot_see_the_dataroot_fails_the_run_up_front(cluster, synth_root, tmp_path):
    """The driver names the dataroot ``/proc/self/cwd/<name>``: an absolute path that the kernel resolves in each
    process against that process's own working directory. It is the dataroot for the driver (run from the
    dataroot's parent) and does not exist for the worker (run from another folder): a path valid only where the
    driver runs, as a path on a disk that only the driver's machine mounts is. The run fails before anything is
    written, naming the worker and the path."""
    root, version = synth_root
    assert not (cluster.cwd / root.name).exists()
    store = tmp_path / "store"
    path = f"/proc/self/cwd/{root.name}"
    r = _calico("preprocess", "run", "--store", store, "--dataroot", path, "--version", version,
                "--scheduler", cluster.address, "--no-progress", cwd=root.parent)
    line = _one_line_error(r, f"{path}: Dask worker {cluster.workers[0]} cannot see the dataroot",
                           "no such folder there", "shared filesystem")
    assert len(line) > 80 and not store.exists()


def _unshare_works(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs tmpfs "$0"', str(probe)],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.slow
def test_a_worker_without_the_dataroots_mount_fails_the_run_up_front(synth_root, tmp_path):
    """Closest to another machine without the shared filesystem: the worker runs in a mount namespace of its own
    (``unshare -rm``) in which an empty tmpfs hides the folder holding the dataroot. The driver sees the dataroot,
    the worker does not: the run fails before anything is written, naming that worker and the dataroot.
    Skipped where unprivileged mount namespaces are not allowed (test_a_worker_that_cannot_see_the_dataroot_...
    covers the check there)."""
    if shutil.which("unshare") is None or not _unshare_works(tmp_path):
        pytest.skip("unshare -rm (a private mount namespace) is not permitted here")
    root, version = synth_root
    hide = root.parent
    assert hide not in tmp_path.parents
    wrap = ("unshare", "-rm", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hide))
    c = ExternalCluster(tmp_path / "elsewhere", wrap=wrap)
    try:
        store = tmp_path / "store"
        r = _calico("preprocess", "run", "--store", store, "--dataroot", root, "--version", version,
                    "--scheduler", c.address, "--no-progress", cwd=tmp_path)
    finally:
        c.close()
    _one_line_error(r, f"{root}: Dask worker {c.workers[0]} cannot see the dataroot (no such folder there)")
    assert not store.exists()


#: The real CLI (``calico.cli.main``) with one change, to pin the moment of the Ctrl-C: scene-0103's task says
#: it has started (a marker file) and then waits instead of computing. The task is defined here, in
#: ``__main__``, so it is sent to the worker processes by value.
BLOCKED_SCENE = """if True:
    import sys, time
    from pathlib import Path
    from preprocess import run as run_mod

    MARKER = Path(sys.argv[1])

    def scene_task(vdir, plan, *args, **kwargs):
        from preprocess import run as real

        if plan.scene == "scene-0103":
            MARKER.write_text("started")
            time.sleep(300)
        return real.process_scene(vdir, plan, *args, **kwargs)

    run_mod.process_scene = scene_task
    from calico.cli import main

    main(sys.argv[2:])
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background jobs start with SIGINT ignored


@pytest.mark.slow
def test_ctrl_c_ends_quietly_says_what_was_committed_and_the_rerun_resumes(synth_root, tmp_path):
    """SIGINT to the run's whole process group (what Ctrl-C in a terminal does: the driver and its local Dask
    workers get it) once scene-0061 is committed and scene-0103 is being computed: exit status 130, no Dask
    warning or traceback, a line saying 1 of 2 scenes is committed and that rerunning resumes; the rerun
    computes scene-0103 only."""
    from preprocess.run import run

    root, version = synth_root
    store, marker = tmp_path / "store", tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_SCENE, str(marker), "preprocess", "run", "--store",
                             str(store), "--dataroot", str(root), "--version", version, "--workers", "2",
                             "--no-progress"], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    try:
        vdir = _wait_for(lambda: next(iter((store / "versions").glob("*")), None), "the store version",
                         proc=proc, timeout=120)
        _wait_for(lambda: is_committed(vdir, "scene-0061") and marker.is_file(),
                  "scene-0061 committed and scene-0103 started", proc=proc, timeout=120)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert committed_scenes(vdir) == ["scene-0061"]  # the interrupted state: scene-0103 was not committed
    lines = err.strip().splitlines()
    assert lines[-1] == ("interrupted: 1 of 2 scene(s) committed; rerun the same command to resume "
                         "(committed scenes are skipped)"), err
    for noise in ("Traceback", "WARNING", "ERROR", "distributed.", "KeyboardInterrupt", "CancelledError"):
        assert noise not in err, err
    again = run(root, version, store, sweeps="keyframes", workers=0, progress=False, log=None)
    assert again.scenes_skipped == 1 and [t["scene"] for t in again.tasks] == ["scene-0103"]
    assert verify_version(again.path).ok


# ---------------------------------------------------------------------------------------------------------------
# The pieces, in this process
# ---------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["foo:bar", "tcp://", "http://127.0.0.1:8786", "127.0.0.1", ""])
def test_a_malformed_scheduler_address_is_refused_at_once(address):
    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        dask_setup.check_scheduler(address, 10)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), True, "10"])
def test_the_connect_timeout_must_be_positive_seconds(timeout):
    with pytest.raises(ConfigError, match="--connect-timeout"):
        dask_setup.check_scheduler("tcp://127.0.0.1:8786", timeout)


def test_an_unreachable_scheduler_fails_after_the_timeout():
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ConfigError, match=r"no Dask scheduler answered within 0\.5 s") as exc:
        dask_setup.connect_scheduler(address, 0.5)
    assert address in str(exc.value)


def test_a_scheduler_without_workers_fails_after_the_timeout():
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as c:
        with pytest.raises(ConfigError, match=r"no worker joined this scheduler within 0\.5 s"):
            dask_setup.connect_scheduler(c.scheduler_address, 0.5)


def test_path_problems_name_what_a_process_cannot_use(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    checks = [("dataroot", str(tmp_path / "d"), "folder"), ("point file", str(tmp_path / "f"), "file"),
              ("shards", str(tmp_path / "d"), "writable"), ("dataroot", str(tmp_path / "f"), "folder"),
              ("point file", str(tmp_path / "d"), "file"), ("shards", str(tmp_path / "nope"), "writable")]
    assert dask_setup.path_problems(checks) == [
        ("dataroot", str(tmp_path / "f"), "no such folder there"),
        ("point file", str(tmp_path / "d"), "no such file there"),
        ("shards", str(tmp_path / "nope"), "no such folder there")]


def test_require_visible_names_the_first_worker_and_path_and_counts_the_rest():
    class Client:  # what client.run returns: the function's result per worker address
        def run(self, fn, checks):
            return {"tcp://b:2": [("dataroot", "/data", "no such folder there")],
                    "tcp://a:1": [("dataroot", "/data", "no such folder there"), ("store", "/s", "x")],
                    "tcp://c:3": []}

    with pytest.raises(InputError) as exc:
        dask_setup.require_visible(Client(), [])
    msg = str(exc.value)
    assert msg.startswith("/data: Dask worker tcp://a:1 cannot see the dataroot (no such folder there); "
                          "2 more such problem(s) on 2 worker(s)")
    assert "\n" not in msg


def test_the_workers_path_check_runs_on_the_workers(tmp_path):
    """Through a real Client: a folder every worker sees passes, a missing one names the worker."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as c, Client(c) as client:
        dask_setup.require_visible(client, [("dataroot", str(tmp_path), "folder")])
        with pytest.raises(InputError, match=f"Dask worker {list(c.workers.values())[0].address} cannot see"):
            dask_setup.require_visible(client, [("dataroot", str(tmp_path / "nope"), "folder")])


def test_the_compile_notice_is_said_once_and_only_when_numba_compiles():
    from numba import njit

    from shared.compile_notice import announce_compilation

    @njit
    def add(a, b):
        return a + b

    @njit
    def mul(a, b):
        return a * b

    said = []
    with announce_compilation(said.append, "the test kernels", seconds=3):
        assert add(1, 2) == 3 and mul(2, 3) == 6  # two compilations, one line
    assert said == ["compiling the test kernels (Numba, first run only, ~3 s on a free core; cached afterwards)..."]
    with announce_compilation(said.append):
        assert add(2, 2) == 4  # compiled already: nothing to say
    assert len(said) == 1


def test_a_local_cluster_passes_a_workers_compile_notice_to_the_driver_once():
    """The notice of a compilation on a worker (its warm-up task) reaches the driver's log once."""
    from distributed import Client, LocalCluster

    from preprocess.run import warm_workers
    from preprocess.sweep import SweepConfig

    lines = []
    with LocalCluster(n_workers=2, processes=False, dashboard_address=":0") as c, Client(c) as client:
        workers = sorted(client.scheduler_info()["workers"])
        with dask_setup.forward_notices(client, lines.append):
            client.gather([client.submit(dask_setup.notify_driver, "compiling x...", workers=[a], pure=False)
                           for a in workers])
            _wait_for(lambda: lines, "the notice")
            time.sleep(0.3)  # the second worker's notice has arrived too
        assert lines == ["compiling x..."]
        warm = warm_workers(client, "t", SweepConfig().to_dict(), "cpu", None, 1)  # one task pinned to each
        assert sorted(warm) == workers and all(v > 0 for v in warm.values())
