"""The Dask stage on the generated ``tiny`` dataset: store contents, resume, versions, bad inputs, SIGKILL."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_catalog import store as st
from data_catalog.reader import open_version
from data_catalog.verify import verify_version
from preprocess.run import plan_scenes, run
from preprocess.sweep import SweepConfig, process_sweep
from shared.errors import InputError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_synth(synth_root):
    """(dataroot, version) of the ``tiny`` synthetic dataset (2 scenes x 3 keyframes, 30 sweeps each)."""
    return synth_root


def _copy(tiny_synth, tmp_path):
    root, version = tiny_synth
    dst = tmp_path / "data"
    shutil.copytree(root, dst)
    return dst, version


def test_store_holds_what_process_sweep_computes(tiny_synth, tiny_store):
    from shared.nuscenes_io import iter_lidar_sweeps, iter_scenes, load_sweep_points, open_nuscenes

    root, version = tiny_synth
    store, summary = tiny_store
    assert summary.scenes_done == 2 and summary.sweeps_done == 6 and summary.failed_sweeps == 0
    assert summary.exit_code == 0
    v = open_version(store)
    assert v.id == summary.version and v.scenes() == ["scene-0061", "scene-0103"]
    assert v.config == SweepConfig().to_dict() and v.spec["sweeps"] == "keyframes"
    nusc = open_nuscenes(root, version)
    for scene in iter_scenes(nusc):
        shard = v.scene(scene["name"])
        infos = list(iter_lidar_sweeps(nusc, scene, keyframes_only=True))
        assert shard.tokens == [i.token for i in infos]
        for i, info in enumerate(infos):
            pts = load_sweep_points(info)
            ref = process_sweep(pts, info.cameras, SweepConfig(), backend="cpu", seed=0, token=info.token)
            got = shard.sweep(i)
            np.testing.assert_array_equal(got.ground, ref.ground)
            np.testing.assert_array_equal(got.region, ref.region)
            assert np.abs(got.xyz - pts[:, :3]).max() <= st.XYZ_SCALE / 2 + 1e-5
            np.testing.assert_array_equal(got.features, pts[:, 3:].astype(np.float16))
            np.testing.assert_array_equal(got.proj_point, ref.projection.point)
            assert [shard.channels[c] for c in got.proj_cam] == [ref.projection.channels[c]
                                                                 for c in ref.projection.cam]
            assert np.abs(got.uv - ref.projection.uv).max() <= st.UV_SCALE / 2 + 1e-3
            assert np.abs(got.depth - ref.projection.depth).max() <= st.DEPTH_SCALE / 2 + 1e-5
            np.testing.assert_array_equal(got.aug_params, ref.aug_params)
            np.testing.assert_array_equal(got.lidar2ego, info.lidar2ego)
            assert got.region_id.size == ref.stats.regions_kept
    rows = v.sweeps_table().to_pylist()
    assert len(rows) == 6 and all(r["backend"] == "cpu" and r["t_total_ms"] > 0 for r in rows)
    assert {r["file"] for r in rows} == {i.path.relative_to(root).as_posix()
                                         for s in iter_scenes(nusc)
                                         for i in iter_lidar_sweeps(nusc, s, keyframes_only=True)}
    assert verify_version(v.path).ok
    assert (v.path / "scenes.parquet").is_file() and len(list((v.path / "runs").glob("*.json"))) == 1


def test_rerun_reuses_the_version_without_recomputation(tiny_synth, tiny_store):
    root, version = tiny_synth
    store, first = tiny_store
    shards = sorted((Path(first.path) / "shards").iterdir())
    before = {p.name: (p / "manifest.json").stat().st_mtime_ns for p in shards}
    again = run(root, version, store, sweeps="keyframes", workers=0, progress=False, log=None)
    assert again.version == first.version and not again.created_version
    assert again.scenes_skipped == 2 and again.scenes_done == 0 and again.sweeps_done == 0
    assert {p.name: (p / "manifest.json").stat().st_mtime_ns for p in shards} == before


def test_one_changed_parameter_makes_a_new_version(tiny_synth, tmp_path):
    root, version = tiny_synth
    a = run(root, version, tmp_path, sweeps="keyframes", workers=0, progress=False, log=None,
            scenes=["scene-0061"])
    b = run(root, version, tmp_path, SweepConfig.from_overrides(["cluster.eps=0.6"]), sweeps="keyframes",
            workers=0, progress=False, log=None, scenes=["scene-0061"])
    c = run(root, version, tmp_path, sweeps="keyframes", seed=1, workers=0, progress=False,
            log=None, scenes=["scene-0061"])
    assert len({a.version, b.version, c.version}) == 3
    assert b.created_version and b.scenes_done == 1
    assert open_version(tmp_path, b.version).config["cluster"]["eps"] == 0.6
    assert [d["id"] for d in st.list_versions(tmp_path)] == [a.version, b.version, c.version]
    # a subset run leaves the other scene missing, and verify says so
    assert verify_version(Path(a.path)).missing == ["scene-0103"]


def test_bad_inputs_go_to_the_errors_table_and_the_rest_goes_on(tiny_synth, tmp_path):
    from shared.nuscenes_io import iter_lidar_sweeps, iter_scenes, open_nuscenes

    root, version = _copy(tiny_synth, tmp_path)
    nusc = open_nuscenes(root, version)
    s0, s1 = list(iter_scenes(nusc))
    k0 = list(iter_lidar_sweeps(nusc, s0, keyframes_only=True))
    k1 = list(iter_lidar_sweeps(nusc, s1, keyframes_only=True))
    data = k0[0].path.read_bytes()
    k0[0].path.write_bytes(data[:-7])  # truncated point file
    pts = np.fromfile(k0[1].path, "<f4").reshape(-1, 5)
    pts[:10, :3] = np.nan  # NaN points: masked, not an error
    pts.tofile(k0[1].path)
    missing_image = k1[2].cameras[3].image_path
    missing_image.unlink()
    summary = run(root, version, tmp_path / "store", sweeps="keyframes", workers=0,
                  progress=False, log=None)
    assert summary.scenes_done == 2 and summary.sweeps_done == 4 and summary.failed_sweeps == 2
    assert summary.exit_code == 1
    v = open_version(tmp_path / "store")
    errors = {r["token"]: r for r in v.errors_table().to_pylist()}
    assert set(errors) == {k0[0].token, k1[2].token}
    e0 = errors[k0[0].token]
    assert e0["stage"] == "load" and "truncated" in e0["reason"]
    assert e0["file"] == k0[0].path.relative_to(root).as_posix()
    e1 = errors[k1[2].token]
    assert "image" in e1["reason"] and e1["file"] == missing_image.relative_to(root).as_posix()
    shard = v.scene(s0["name"])
    assert shard.tokens == [k0[1].token, k0[2].token]
    nan_sweep = shard.sweep(0)
    assert (~nan_sweep.finite).sum() == 10 and not nan_sweep.ground[:10].any()
    assert (nan_sweep.region[:10] == -1).all()
    row = v.sweeps_table().to_pylist()[0]
    assert row["token"] == k0[1].token and row["nonfinite_points"] == 10
    # the version-level errors table reads back as well
    import pyarrow.parquet as pq

    assert pq.read_table(v.path / "errors.parquet").num_rows == 2


def test_a_sweep_without_calibration_is_recorded_by_the_driver(tiny_synth, monkeypatch):
    from shared import nuscenes_io
    from shared.nuscenes_io import open_nuscenes

    root, version = tiny_synth
    nusc = open_nuscenes(root, version)
    real = nuscenes_io.sweep_info
    bad = {}

    def flaky(nusc, token, **kw):
        if not bad:
            bad[token] = True
            raise InputError("calibrated_sensor x of CAM_FRONT has no 3x3 camera_intrinsic", "calibrated_sensor.json")
        return real(nusc, token, **kw)

    monkeypatch.setattr(nuscenes_io, "sweep_info", flaky)
    plans = plan_scenes(nusc, "keyframes")
    items = [sp for p in plans for sp in p.sweeps]
    assert len(items) == 6 and sum(sp.error is not None for sp in items) == 1
    [failed] = [sp for sp in items if sp.error is not None]
    assert failed.error[1] == "calibration" and "camera_intrinsic" in failed.error[2]


def test_existing_scheduler_and_a_crashing_scene(tiny_synth, tmp_path, monkeypatch):
    """--scheduler: tasks go to a running Dask cluster; a scene whose task raises (a bug, not an InputError)
    gets no shard and is reported, the other scene is committed, and the next run retries only that scene."""
    from distributed import LocalCluster

    import preprocess.sweep as sweep_mod

    root, version = tiny_synth
    real = sweep_mod.process_sweep
    crashing = {"on": True}

    def flaky(points, cameras=None, cfg=SweepConfig(), backend="cpu", seed=0, token=0):
        if crashing["on"] and str(token) in bad_tokens:
            raise RuntimeError("boom")
        return real(points, cameras, cfg, backend=backend, seed=seed, token=token)

    from shared.nuscenes_io import iter_lidar_sweeps, open_nuscenes

    nusc = open_nuscenes(root, version)
    bad_tokens = {i.token for i in iter_lidar_sweeps(nusc, "scene-0103", keyframes_only=True)}
    monkeypatch.setattr(sweep_mod, "process_sweep", flaky)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        s = run(root, version, tmp_path, sweeps="keyframes", scheduler=cluster.scheduler_address,
                progress=False, log=None)
        assert s.workers == 1 and s.scenes_done == 1 and list(s.failed_scenes) == ["scene-0103"]
        assert "boom" in s.failed_scenes["scene-0103"] and s.exit_code == 1
        assert st.committed_scenes(Path(s.path)) == ["scene-0061"] and st.tmp_dirs(Path(s.path)) == []
        crashing["on"] = False
        again = run(root, version, tmp_path, sweeps="keyframes", scheduler=cluster.scheduler_address,
                    progress=False, log=None)
    assert again.scenes_skipped == 1 and again.scenes_done == 1 and again.exit_code == 0
    assert verify_version(Path(again.path)).ok


def test_two_runs_at_once_on_one_version(tiny_synth, tmp_path):
    """Two runs of the same version at the same time: each scene is committed once, intact, by one of them."""
    from concurrent.futures import ThreadPoolExecutor

    root, version = tiny_synth

    def go(_):
        return run(root, version, tmp_path, sweeps="keyframes", workers=0, progress=False, log=None)

    with ThreadPoolExecutor(2) as ex:
        a, b = ex.map(go, range(2))
    assert a.version == b.version and a.created_version != b.created_version
    assert a.scenes_done + b.scenes_done == 2 and a.scenes_skipped + b.scenes_skipped == 2
    assert a.sweeps_done + b.sweeps_done == 6
    rep = verify_version(Path(a.path))
    assert rep.ok and rep.checked == ["scene-0061", "scene-0103"] and rep.leftovers == []
    assert open_version(tmp_path).sweeps_table().num_rows == 6


def test_gpu_local_cluster_needs_dask_cuda():
    from preprocess.run import _cuda_cluster
    from shared.errors import BackendUnavailable

    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="dask-cuda"):
            _cuda_cluster(1)
    else:
        pytest.skip("dask-cuda is installed: the error path is not reachable")


def _worker_settings():
    import dask

    return dask.config.get("distributed.worker.profile.enabled"), os.environ.get("NUMBA_NUM_THREADS")


@pytest.mark.slow
def test_local_cluster_workers_run_without_the_profiler():
    """The workers ``run`` starts do not sample their tasks' stacks every 10 ms (Dask's default), and the
    driver's own Dask settings are left as they were."""
    import dask
    from distributed import Client

    from preprocess.run import local_cluster

    before = dask.config.get("distributed.worker.profile.enabled")
    with local_cluster(1) as cluster, Client(cluster) as client:
        assert list(client.run(_worker_settings).values()) == [(False, "1")]
    assert dask.config.get("distributed.worker.profile.enabled") == before


def _route(args):
    """``run``/``verify`` live under ``calico preprocess``, the rest under ``calico catalog``."""
    args = [str(a) for a in args]
    return (["preprocess"] if args[0] in ("run", "verify") else []) + args


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "calico", *_route(args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_cli_with_two_worker_processes_then_verify_and_catalog(tiny_synth, tmp_path):
    from typer.testing import CliRunner

    from calico.cli import app
    from shared.errors import ConfigError

    root, version = tiny_synth
    store = tmp_path / "store"
    r = _cli("run", "--store", store, "--dataroot", root, "--version", version, "--workers", 2, "--no-progress",
             "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["workers"] == 2 and summary["sweeps_done"] == 6 and "dashboard" in r.stderr
    cli, runner = app, CliRunner()
    r = runner.invoke(cli, ["preprocess", "verify", "--store", str(store)])
    assert r.exit_code == 0 and "0 missing, 0 corrupt" in r.stdout
    r = runner.invoke(cli, ["catalog", "list", "--store", str(store), "--json"])
    assert [d["id"] for d in json.loads(r.stdout)] == [summary["version"]]
    r = runner.invoke(cli, ["catalog", "list", "--store", str(store)])
    assert r.exit_code == 0 and summary["version"][:8] in r.stdout
    r = runner.invoke(cli, ["catalog", "show", "--store", str(store), summary["version"][:6], "--json"])
    doc = json.loads(r.stdout)
    assert doc["counts"]["sweeps"] == 6 and doc["spec"]["config"] == SweepConfig().to_dict()
    assert doc["lineage"]["packages"]["zarr"] and doc["dataset"]["version"] == version
    r = runner.invoke(cli, ["catalog", "show", "--store", str(store)])
    assert r.exit_code == 0 and "non-default parameters: (none)" in r.stdout
    r = runner.invoke(cli, ["catalog", "stats", "--store", str(store), "--json"])
    assert [row["scene"] for row in json.loads(r.stdout)] == ["scene-0061", "scene-0103"]
    r = runner.invoke(cli, ["catalog", "stats", "--store", str(store)])
    assert r.exit_code == 0 and "scene-0061" in r.stdout
    r = runner.invoke(cli, ["preprocess", "run", "--store", str(store), "--dataroot", str(root), "--version", version,
                            "--set", "cluster.eps=0.6", "--workers", "0", "--scenes", "scene-0061", "--json"])
    assert r.exit_code == 0, r.output
    other = json.loads(r.stdout[r.stdout.index("{"):])["version"]
    r = runner.invoke(cli, ["catalog", "diff", "--store", str(store), summary["version"], other, "--json"])
    d = json.loads(r.stdout)
    assert d["spec"] == {"config.cluster.eps": [SweepConfig().cluster.eps, 0.6]} and d["only_in_a"] == ["scene-0103"]
    assert list(d["scenes"]) == ["scene-0061"]
    r = runner.invoke(cli, ["catalog", "diff", "--store", str(store), summary["version"], other])
    assert r.exit_code == 0 and f"config.cluster.eps: {SweepConfig().cluster.eps!r} -> 0.6" in r.stdout
    r = runner.invoke(cli, ["preprocess", "run", "--store", str(store), "--dataroot", str(root), "--version", version,
                            "--set", "cluster.eps=-1"])
    assert isinstance(r.exception, ConfigError) and "cluster.eps" in str(r.exception)
    r = runner.invoke(cli, ["catalog", "show", "--store", str(store), "ffffffff"])
    assert isinstance(r.exception, InputError) and "no version" in str(r.exception)
    # a corrupted chunk: verify names it and exits 1
    chunk = next(p for p in (store / "versions" / summary["version"] / "shards" / "scene-0103" / "xyz").rglob("*")
                 if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = runner.invoke(cli, ["preprocess", "verify", "--store", str(store), "--version", summary["version"]])
    assert r.exit_code == 1 and "corrupt: scene-0103: xyz/" in r.stdout and "checksum" in r.stdout


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_the_clean_store(tiny_synth, tmp_path):
    root, version = tiny_synth
    clean = run(root, version, tmp_path / "clean", sweeps="all", workers=0, progress=False,
                log=None)
    store = tmp_path / "killed"
    vdir = Path(clean.path.replace(str(tmp_path / "clean"), str(store)))
    proc = subprocess.Popen([sys.executable, "-m", "calico", "preprocess", "run", "--store", str(store),
                             "--dataroot", str(root), "--version", version, "--sweeps", "all", "--workers", "1",
                             "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "killed.log", "w"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill once a shard is being written or done
        if any(p.name.startswith((".tmp-", "scene-")) for p in store.glob("versions/*/shards/*")):
            break
        time.sleep(0.005)
    import psutil

    assert proc.poll() is None, "the run ended before it could be killed: " + (tmp_path / "killed.log").read_text()
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the Dask worker process dies with its parent (it may still commit a shard, atomically, on its way)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
    assert len(st.committed_scenes(vdir)) < 2
    again = run(root, version, store, sweeps="all", workers=0, progress=False, log=None)
    assert again.version == clean.version and again.scenes_done + again.scenes_skipped == 2
    assert st.tmp_dirs(vdir) == []  # the dead writer's temporary shard was removed
    for scene in ("scene-0061", "scene-0103"):
        a = st.read_manifest(Path(clean.path) / "shards" / scene)
        b = st.read_manifest(vdir / "shards" / scene)
        assert a["content_sha256"] == b["content_sha256"] and a["counts"] == b["counts"]
        assert {k: v for k, v in a["files"].items() if k != "sweeps.parquet"} == \
               {k: v for k, v in b["files"].items() if k != "sweeps.parquet"}
    ta = open_version(tmp_path / "clean").sweeps_table()
    tb = open_version(store).sweeps_table()
    keep = [c for c in ta.column_names if not c.startswith("t_")]
    assert ta.select(keep).equals(tb.select(keep)) and tb.num_rows == 60
    assert verify_version(vdir).ok


def test_workers_are_warmed_up_before_the_tasks(tiny_synth, tmp_path):
    """The one-off warm-up (Numba kernels loaded, malloc and Blosc settings) is timed apart from the tasks."""
    import numcodecs.blosc

    from preprocess.run import warm_worker

    assert warm_worker(SweepConfig().to_dict(), "cpu", None) > 0
    assert numcodecs.blosc.get_nthreads() == 1
    root, version = tiny_synth
    s = run(root, version, tmp_path, sweeps="keyframes", workers=0, progress=False, log=None)
    assert s.scenes_done == 2 and s.startup_s > 0 and s.tasks_s > 0
    assert s.prepare_s + s.startup_s + s.tasks_s <= s.wall_s + 1e-6


def test_scene_plans_round_trip_through_pickle(tiny_synth):
    """Plans travel to the workers packed (stacked arrays); every field comes back equal, errors included."""
    import pickle

    from preprocess.run import ScenePlan, SweepPlan
    from shared.nuscenes_io import open_nuscenes

    root, version = tiny_synth
    plan = plan_scenes(open_nuscenes(root, version), "all", None)[0]
    mixed = ScenePlan("s", (SweepPlan("bad", None, ("f.bin", "load", "truncated")), *plan.sweeps[:3],
                            SweepPlan("none", None, None)))
    for p in (plan, mixed, ScenePlan("empty", ())):
        q = pickle.loads(pickle.dumps(p))
        assert q.scene == p.scene and [s.token for s in q.sweeps] == [s.token for s in p.sweeps]
        assert [s.error for s in q.sweeps] == [s.error for s in p.sweeps]
        for a, b in zip(p.sweeps, q.sweeps):
            assert (a.info is None) == (b.info is None)
            if a.info is None:
                continue
            for f in ("token", "path", "timestamp", "is_key_frame", "scene_token", "scene_name", "sample_token"):
                assert getattr(a.info, f) == getattr(b.info, f) and type(getattr(a.info, f)) is type(getattr(b.info, f))
            np.testing.assert_array_equal(a.info.lidar2ego, b.info.lidar2ego)
            np.testing.assert_array_equal(a.info.ego2global, b.info.ego2global)
            assert len(a.info.cameras) == len(b.info.cameras) > 0
            for c, d in zip(a.info.cameras, b.info.cameras):
                for f in ("channel", "width", "height", "timestamp", "image_path", "token"):
                    assert getattr(c, f) == getattr(d, f) and type(getattr(c, f)) is type(getattr(d, f))
                for f in ("intrinsic", "lidar2cam", "cam2ego", "ego2global"):
                    np.testing.assert_array_equal(getattr(c, f), getattr(d, f))
