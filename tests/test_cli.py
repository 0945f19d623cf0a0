"""``calico preprocess sweep`` through a real subprocess (``python -m calico``) on the real fixtures."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

N015 = "nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951"


def calico(*args, timeout=300):
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "calico", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _n_points(path, dims):
    return path.stat().st_size // (4 * dims)


@pytest.mark.slow
@pytest.mark.fixtures
def test_sweep_nuscenes_with_calib_json_and_save(fixtures_dir, tmp_path):
    scan = fixtures_dir / f"{N015}.pcd.bin"
    out = tmp_path / "sub" / "n015.npz"
    r = calico("preprocess", "sweep", scan, "--calib", fixtures_dir / f"{N015}.calib.json", "--backend", "cpu",
               "--save", out, "--json", "--set", "cluster.eps=0.7")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    n = _n_points(scan, 5)
    s = rep["stats"]
    assert s["points"] == n == 34688
    assert 0 < s["ground_fraction"] < 1 and s["regions_kept"] > 0 and 0 <= s["noise_fraction"] <= 1
    assert set(rep["timings_ms"]) >= {"ground", "cluster", "pooling", "project", "augment", "total"}
    assert rep["config"]["cluster"]["eps"] == 0.7 and rep["backend"] == "cpu"
    assert list(rep["cameras"]) == ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK",
                                    "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]
    assert all(2900 <= c <= 4900 for c in rep["cameras"].values())
    z = np.load(out)
    ground, region = z["ground"], z["region"]
    assert ground.shape == (n,) and ground.dtype == bool
    assert region.shape == (n,) and np.issubdtype(region.dtype, np.signedinteger)
    assert np.all(region[ground] == -1) and (region >= 0).any()
    assert int(ground.sum()) == round(s["ground_fraction"] * n)
    assert len(np.unique(region[region >= 0])) == s["regions_kept"]
    # projections, in the file's point order
    assert z["proj_point"].dtype == np.int32 and z["proj_cam"].dtype == np.uint8
    assert z["proj_uv"].shape == (len(z["proj_point"]), 2) and np.all(np.diff(z["proj_point"]) >= 0)
    assert len(z["proj_point"]) == s["projected_pairs"]
    assert z["aug_params"].shape == (2, 7) and z["aug_params"].dtype == np.float32
    assert json.loads(str(z["config_json"]))["cluster"]["eps"] == 0.7
    # the saved ground mask is about the file's points: ground lies at about z = -1.77 m
    pts = np.fromfile(scan, dtype="<f4").reshape(-1, 5)
    assert abs(np.median(pts[ground, 2]) + 1.77) < 0.15


@pytest.mark.slow
@pytest.mark.fixtures
def test_sweep_kitti_table_and_save(fixtures_dir, tmp_path):
    scan = fixtures_dir / "kitti/000000.bin"
    out = tmp_path / "k.npz"
    r = calico("preprocess", "sweep", scan, "--calib", fixtures_dir / "kitti/000000.calib.txt", "--backend",
               "cpu", "--save", out)
    assert r.returncode == 0, r.stderr
    for word in ("ground", "cluster", "pooling", "project", "ground fraction", "regions kept", "CAM2"):
        assert word in r.stdout
    n = _n_points(scan, 4)
    z = np.load(out)
    assert z["ground"].shape == (n,) and z["region"].shape == (n,)
    assert np.all(z["region"][z["ground"]] == -1)
    assert list(z["proj_channels"]) == ["CAM2"]
    # same file without --calib, as JSON: same ground and no projection
    r2 = calico("preprocess", "sweep", scan, "--format", "kitti", "--backend", "cpu", "--json")
    assert r2.returncode == 0, r2.stderr
    rep = json.loads(r2.stdout)
    assert rep["cameras"] is None and rep["stats"]["points"] == n
    assert rep["stats"]["ground_points"] == int(z["ground"].sum())


def _assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.slow
def test_sweep_errors(tmp_path):
    trunc = tmp_path / "trunc.pcd.bin"
    np.arange(5 * 10 + 3, dtype="<f4").tofile(trunc)
    _assert_one_line_error(calico("preprocess", "sweep", trunc), str(trunc), "truncated")
    missing = tmp_path / "missing.bin"
    _assert_one_line_error(calico("preprocess", "sweep", missing), str(missing), "not found")
    ok = tmp_path / "ok.bin"
    np.zeros((10, 4), "<f4").tofile(ok)
    _assert_one_line_error(calico("preprocess", "sweep", ok, "--set", "cluster.eps=-1"), "cluster.eps")
    _assert_one_line_error(calico("preprocess", "sweep", ok, "--set", "nope.x=1"), "nope.x", "unknown")
    _assert_one_line_error(calico("preprocess", "sweep", ok, "--calib", tmp_path / "no.json"), "no.json")
    _assert_one_line_error(calico("preprocess", "sweep", ok, "--format", "las"), "--format")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _assert_one_line_error(calico("preprocess", "sweep", ok, "--save", blocker / "out.npz"), "cannot write")


@pytest.mark.slow
def test_sweep_nan_points_file(tmp_path):
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-20, 20, (500, 2)), np.full(500, -1.8), rng.uniform(0, 1, 500)].astype("<f4")
    pts[::50, 0] = np.nan
    f = tmp_path / "nan.bin"
    pts.tofile(f)
    out = tmp_path / "nan.npz"
    r = calico("preprocess", "sweep", f, "--backend", "cpu", "--json", "--save", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["stats"]["nonfinite_points"] == 10 and rep["stats"]["points"] == 500
    z = np.load(out)
    assert not z["ground"][::50].any() and np.all(z["region"][::50] == -1)
    assert z["ground"][1::50].all()  # the flat floor is ground
