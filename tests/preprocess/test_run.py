"""The Dask stage on the generated ``tiny`` dataset: store contents, resume, versions, bad inputs, SIGKILL."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_catalog.format import DEPTH_SCALE, UV_SCALE, XYZ_SCALE
from data_catalog.layout import ERRORS_TABLE, MANIFEST, committed_scenes, read_manifest, tmp_dirs, version_dir
from data_catalog.reader import open_version
from data_catalog.verify import verify_version
from data_catalog.versions import list_versions, run_records
from preprocess.run import plan_scenes, run
from preprocess.sweep import SweepConfig, process_sweep
from shared.errors import ConfigError, InputError

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
            assert np.abs(got.xyz - pts[:, :3]).max() <= XYZ_SCALE / 2 + 1e-5
            np.testing.assert_array_equal(got.features, pts[:, 3:].astype(np.float16))
            np.testing.assert_array_equal(got.proj_point, ref.projection.point)
            assert [shard.channels[c] for c in got.proj_cam] == [ref.projection.channels[c]
                                                                 for c in ref.projection.cam]
            assert np.abs(got.uv - ref.projection.uv).max() <= UV_SCALE / 2 + 1e-3
            assert np.abs(got.depth - ref.projection.depth).max() <= DEPTH_SCALE / 2 + 1e-5
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


def test_rerun_reuses_the_version_without_recomputation(tiny_synth, tiny_store, tmp_path):
    """A rerun computes nothing and keeps the shards as they were; it adds its own run record (the session
    store is read-only: the rerun goes to a copy of it)."""
    root, version = tiny_synth
    session_store, first = tiny_store
    store = tmp_path / "store"
    shutil.copytree(session_store, store)
    vdir = version_dir(store, first.version)
    shards = sorted((vdir / "shards").iterdir())
    before = {p.name: (p / "manifest.json").stat().st_mtime_ns for p in shards}
    records = run_records(vdir)
    again = run(root, version, store, sweeps="keyframes", workers=0, progress=False, log=None)
    assert again.version == first.version and not again.created_version
    assert again.scenes_skipped == 2 and again.scenes_done == 0 and again.sweeps_done == 0
    assert {p.name: (p / "manifest.json").stat().st_mtime_ns for p in shards} == before
    assert len(records) == 1 and run_records(vdir)[0] == records[0] and len(run_records(vdir)) == 2


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
    assert [d["id"] for d in list_versions(tmp_path)] == [a.version, b.version, c.version]
    # a subset run leaves the other scene missing, and verify says so
    assert verify_version(Path(a.path)).missing == ["scene-0103"]


def test_bad_inputs_go_to_the_errors_table_and_the_rest_goes_on(tiny_synth, tmp_path):
    """A truncated point file fails its sweep (an error row); a missing camera image does not: the sweep is
    kept without that camera (a warning row); NaN points are masked, not an error."""
    from shared.nuscenes_io import iter_lidar_sweeps, iter_scenes, load_sweep_points, open_nuscenes

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
    gone = k1[2].cameras[3]
    gone.image_path.unlink()
    summary = run(root, version, tmp_path / "store", sweeps="keyframes", workers=0,
                  progress=False, log=None)
    assert summary.scenes_done == 2 and summary.sweeps_done == 5 and summary.failed_sweeps == 1
    assert summary.warnings == 1 and summary.exit_code == 1
    v = open_version(tmp_path / "store")
    errors = {r["token"]: r for r in v.errors_table().to_pylist()}
    assert set(errors) == {k0[0].token, k1[2].token}
    e0 = errors[k0[0].token]
    assert e0["stage"] == "load" and "truncated" in e0["reason"] and e0["level"] == "error"
    assert e0["file"] == k0[0].path.relative_to(root).as_posix()
    e1 = errors[k1[2].token]
    assert e1["level"] == "warning" and gone.channel in e1["reason"]
    assert e1["file"] == gone.image_path.relative_to(root).as_posix()
    # the sweep without the image is in the store: projected into the five other cameras, the sixth absent
    kept = v.scene(s1["name"])
    assert kept.tokens == [k.token for k in k1]
    sw = kept.sweep(2)
    c = kept.channels.index(gone.channel)
    assert np.isnan(sw.raw["cam_lidar2cam"][c]).all() and sw.raw["cam_size"][c].tolist() == [0, 0]
    others = [cam for cam in k1[2].cameras if cam.channel != gone.channel]
    ref = process_sweep(load_sweep_points(k1[2]), others, SweepConfig(), backend="cpu", seed=0, token=k1[2].token)
    np.testing.assert_array_equal(sw.proj_point, ref.projection.point)
    assert c not in set(sw.proj_cam.tolist()) and len(set(sw.proj_cam.tolist())) > 1
    np.testing.assert_array_equal(sw.ground, ref.ground)
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


def _files(shard: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, size) of every file of a folder, by relative path."""
    return {p.relative_to(shard).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(shard.rglob("*")) if p.is_file()}


def _error_rows(output: str) -> list[list[str]]:
    """The rows printed by ``calico catalog errors`` (tab-separated, after the header)."""
    lines = output.strip().splitlines()
    return [line.split("\t") for line in lines[2:]] if len(lines) > 1 else []


def test_failures_stay_visible_until_retried_after_repair(tiny_synth, tiny_store, tmp_path):
    """A dataroot with a truncated point file and a deleted camera image (both in scene-0061): the first run
    exits 1 (1 failed sweep, 1 warning); the identical rerun computes nothing and still exits 1 with the same
    counts; ``catalog errors`` lists both rows. After the files are repaired, ``--retry-failed`` makes the version
    of the repaired inputs (a new id: the input manifest changed): scene-0061 is computed, scene-0103 (same
    inputs, no failed sweep) is hard-linked from the first version; it exits 0 with no errors, equals a clean
    run shard for shard, and the first version is left as it was (docs/store.md shows this session)."""
    from typer.testing import CliRunner

    from calico.cli import app
    from shared.nuscenes_io import iter_lidar_sweeps, open_nuscenes

    root, version = _copy(tiny_synth, tmp_path)
    k = list(iter_lidar_sweeps(open_nuscenes(root, version), "scene-0061", keyframes_only=True))
    point_file, image = k[0].path, k[1].cameras[2].image_path
    saved = {point_file: point_file.read_bytes(), image: image.read_bytes()}
    point_file.write_bytes(saved[point_file][:-7])
    image.unlink()
    store = tmp_path / "store"
    runner = CliRunner()
    args = ["preprocess", "run", "--store", str(store), "--dataroot", str(root), "--version", version,
            "--workers", "0", "--no-progress"]

    def errors(vid):
        r = runner.invoke(app, ["catalog", "errors", "--store", str(store), "--version", vid])
        assert r.exit_code == 0, r.output
        return r.stdout, _error_rows(r.stdout)

    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.output
    v1 = first.stdout.split()[1].rstrip(":")
    assert "2 scene(s) written" in first.stdout and "5 sweep(s) done" in first.stdout
    assert "hold 1 failed sweep(s) and 1 warning(s)" in first.stdout and "--retry-failed" in first.stdout
    out, rows = errors(v1)
    assert out.startswith(f"version {v1}: 1 failed sweep(s), 1 warning(s) in 1 scene(s)")
    rel = {p: p.relative_to(root).as_posix() for p in saved}
    assert sorted((r[0], r[1], r[2], r[3], r[4]) for r in rows) == [
        ("error", "scene-0061", k[0].token, "load", rel[point_file]),
        ("warning", "scene-0061", k[1].token, "load", rel[image])]
    assert "truncated" in rows[[r[0] for r in rows].index("error")][5]
    assert _error_rows(runner.invoke(app, ["catalog", "errors", "--store", str(store), "--version", v1,
                                           "--level", "warning"]).stdout) == [r for r in rows if r[0] == "warning"]
    bad = runner.invoke(app, ["catalog", "errors", "--store", str(store), "--level", "fatal"])
    assert isinstance(bad.exception, ConfigError) and "--level" in str(bad.exception)

    again = runner.invoke(app, args)  # the identical rerun: nothing computed, the failures still counted
    assert again.exit_code == 1, again.output
    assert again.stdout.startswith(f"version {v1}: 0 scene(s) written, 2 skipped")
    assert "hold 1 failed sweep(s) and 1 warning(s)" in again.stdout
    assert errors(v1)[1] == rows

    for path, data in saved.items():  # repair the inputs
        path.write_bytes(data)
    before = _files(version_dir(store, v1))
    retry = runner.invoke(app, args + ["--retry-failed"])
    assert retry.exit_code == 0, retry.output
    v2 = retry.stdout.split()[1].rstrip(":")
    assert v2 != v1 and v2 == tiny_store[1].version  # the repaired dataroot is the clean one: its version id
    assert retry.stdout.startswith(f"version {v2}: 1 scene(s) written, 0 skipped")
    assert f"reused from version {v1} (same inputs, no failed sweep): scene-0103" in retry.stdout
    assert "hold 0 failed sweep(s) and 0 warning(s)" in retry.stdout
    assert errors(v2)[0].startswith(f"version {v2}: 0 failed sweep(s), 0 warning(s)") and errors(v2)[1] == []
    assert _files(version_dir(store, v1)) == before  # the first version is untouched
    assert errors(v1)[1] == rows
    a, b = (version_dir(store, v) / "shards" / "scene-0103" for v in (v1, v2))
    assert _files(a) == _files(b)  # the same files (hard links): same inodes, times and sizes
    clean = Path(tiny_store[1].path)
    for scene in ("scene-0061", "scene-0103"):
        assert read_manifest(version_dir(store, v2) / "shards" / scene)["content_sha256"] == \
               read_manifest(clean / "shards" / scene)["content_sha256"]
    assert verify_version(version_dir(store, v2)).ok


def test_a_missing_image_alone_is_a_warning_and_exits_0(tiny_synth, tmp_path):
    from typer.testing import CliRunner

    from calico.cli import app
    from shared.nuscenes_io import iter_lidar_sweeps, open_nuscenes

    root, version = _copy(tiny_synth, tmp_path)
    k = list(iter_lidar_sweeps(open_nuscenes(root, version), "scene-0103", keyframes_only=True))
    k[0].cameras[0].image_path.unlink()
    r = CliRunner().invoke(app, ["preprocess", "run", "--store", str(tmp_path / "store"), "--dataroot", str(root),
                                 "--version", version, "--workers", "0", "--no-progress", "--scenes", "scene-0103"])
    assert r.exit_code == 0, r.output
    assert "3 sweep(s) done" in r.stdout and "hold 0 failed sweep(s) and 1 warning(s): calico catalog errors" in r.stdout
    assert "--retry-failed" not in r.stdout


def test_retry_failed_replaces_only_the_failed_scene_in_place(tiny_synth, tiny_store, tmp_path, monkeypatch):
    """A sweep that failed although its inputs are fine (an unreadable moment of a network filesystem): the
    version id is unchanged, so --retry-failed recomputes that scene in place: its new shard is swapped in for
    the old one, the other scene's files are not touched, and the store equals a clean run."""
    import shared.nuscenes_io as nio

    root, version = tiny_synth
    store = tmp_path / "store"
    real = nio.load_sweep_points
    bad = plan_scenes(nio.open_nuscenes(root, version), "keyframes", ["scene-0103"])[0].sweeps[1].token

    def flaky(info):
        if info.token == bad:
            raise InputError("point file unreadable (I/O error)", info.path)
        return real(info)

    monkeypatch.setattr(nio, "load_sweep_points", flaky)
    first = run(root, version, store, sweeps="keyframes", workers=0, progress=False, log=None)
    assert first.failed_sweeps == 1 and first.exit_code == 1 and first.sweeps_done == 5
    monkeypatch.undo()
    plain = run(root, version, store, sweeps="keyframes", workers=0, progress=False, log=None)
    assert plain.scenes_skipped == 2 and plain.failed_sweeps == 1 and plain.exit_code == 1  # not forgotten
    vdir = Path(first.path)
    other = _files(vdir / "shards" / "scene-0061")
    retry = run(root, version, store, sweeps="keyframes", workers=0, progress=False, log=None, retry_failed=True)
    assert retry.version == first.version and retry.retried_scenes == ["scene-0103"]
    assert retry.scenes_done == 1 and retry.scenes_skipped == 1 and retry.sweeps_done == 3
    assert retry.failed_sweeps == 0 and retry.exit_code == 0
    assert _files(vdir / "shards" / "scene-0061") == other
    clean = Path(tiny_store[1].path)
    assert read_manifest(vdir / "shards" / "scene-0103")["content_sha256"] == \
           read_manifest(clean / "shards" / "scene-0103")["content_sha256"]
    assert tmp_dirs(vdir) == [] and verify_version(vdir).ok
    assert open_version(store).errors_table().num_rows == 0
    assert len(run_records(vdir)) == 3  # every run's record is kept


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
        assert committed_scenes(Path(s.path)) == ["scene-0061"] and tmp_dirs(Path(s.path)) == []
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


#: A run (one Dask worker process) that dies at a chosen point: inside the commit of scene-0103's shard, with
#: every file of the shard written into its temporary folder but the manifest, the worker SIGKILLs the driver
#: (the whole run dies) and waits; it must die with its parent. The scene task is sent to the worker by value
#: (defined here, in ``__main__``), so the hook is installed in the worker process.
KILLED_DURING_COMMIT = """if True:
    import os, signal, sys, time
    from pathlib import Path
    from preprocess import run as run_mod

    DRIVER, PIDFILE = os.getpid(), sys.argv[4]

    def scene_task(*args, **kwargs):
        from data_catalog import writer as st
        from preprocess import run as real

        if not getattr(st, "kill_hook_installed", False):
            write = st.write_file

            def dying_write(path, data):
                if path.name == st.MANIFEST and path.parent.name.startswith(".tmp-scene-0103-"):
                    Path(PIDFILE).write_text(str(os.getpid()))
                    os.kill(DRIVER, signal.SIGKILL)
                    time.sleep(120)
                return write(path, data)

            st.write_file, st.kill_hook_installed = dying_write, True
        return real.process_scene(*args, **kwargs)

    run_mod.process_scene = scene_task
    run_mod.run(sys.argv[1], sys.argv[2], sys.argv[3], sweeps="all", workers=1, progress=False, log=None)
"""


@pytest.mark.slow
def test_sigkill_during_a_shard_commit_then_rerun_gives_the_clean_store(tiny_synth, tmp_path):
    """The run is killed at a chosen point (KILLED_DURING_COMMIT): the state it interrupted is checked (scene-0103
    half written in its temporary folder, not committed; the worker gone with its parent), then the rerun
    removes the leftover and gives shards whose files equal a clean run's."""
    import psutil

    root, version = tiny_synth
    clean = run(root, version, tmp_path / "clean", sweeps="all", workers=0, progress=False, log=None)
    store = tmp_path / "killed"
    vdir = version_dir(store, clean.version)
    pidfile = tmp_path / "worker.pid"
    log = tmp_path / "killed.log"
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-c", KILLED_DURING_COMMIT, str(root), version, str(store),
                               str(pidfile)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, timeout=300)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    worker = int(pidfile.read_text())
    try:
        psutil.Process(worker).wait(timeout=30)  # the worker dies with its parent, before the manifest
    except psutil.NoSuchProcess:
        pass
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    [tmp] = tmp_dirs(vdir)  # the interrupted state: scene-0103 written but for its manifest
    assert tmp.name.startswith(".tmp-scene-0103-") and f"-{worker}-" in tmp.name
    assert (tmp / ERRORS_TABLE).is_file() and (tmp / "zarr.json").is_file()
    assert not (tmp / MANIFEST).exists()
    assert "scene-0103" not in committed_scenes(vdir)
    lines = []
    again = run(root, version, store, sweeps="all", workers=0, progress=False, log=lines.append)
    assert again.version == clean.version and again.scenes_done + again.scenes_skipped == 2
    assert "scene-0103" in [t["scene"] for t in again.tasks]  # computed again, from the start
    assert "removed 1 leftover temporary shard(s) of dead writers" in lines
    assert tmp_dirs(vdir) == []  # the dead writer's temporary shard was removed
    for scene in ("scene-0061", "scene-0103"):
        a = read_manifest(Path(clean.path) / "shards" / scene)
        b = read_manifest(vdir / "shards" / scene)
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
                            SweepPlan("none", None, None)), replace=True)
    for p in (plan, mixed, ScenePlan("empty", ())):
        q = pickle.loads(pickle.dumps(p))
        assert q.scene == p.scene and [s.token for s in q.sweeps] == [s.token for s in p.sweeps]
        assert q.replace == p.replace
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
