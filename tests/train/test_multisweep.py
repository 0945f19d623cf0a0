"""Multi-sweep LiDAR input (train/data/multisweep.py) against the devkit's ``LidarPointCloud.from_file_multisweep``
on the generated ``tiny`` dataset (2 scenes x 3 keyframes x 10 sweeps), preprocessed with ``--sweeps all``."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from data_catalog.reader import open_version
from shared.errors import ConfigError, InputError
from train.data.multisweep import MultiSweepConfig, load_multisweep, sweep_chain, sweep_index


@pytest.fixture(scope="module")
def all_store(synth_root, tmp_path_factory):
    """The tiny dataset preprocessed with ``--sweeps all`` (every sweep with its poses), opened."""
    from preprocess.run import run

    root, version = synth_root
    store = tmp_path_factory.mktemp("store_all")
    summary = run(root, version, store, sweeps="all", workers=0, progress=False, log=None)
    assert summary.failed_sweeps == 0 and not summary.failed_scenes
    return open_version(store, summary.version)


@pytest.fixture(scope="module")
def nusc(synth_root):
    from shared.nuscenes_io import open_nuscenes

    root, version = synth_root
    return open_nuscenes(root, version)


def devkit_multisweep(nusc, sample, n_sweeps):
    """The devkit's aggregate as (N, 5): x, y, z, intensity, time lag."""
    from nuscenes.utils.data_classes import LidarPointCloud

    pc, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=n_sweeps,
                                                     min_distance=1.0)
    return np.vstack([pc.points, times]).T


def ours(version, nusc, sample, n_sweeps):
    scene = nusc.get("scene", sample["scene_token"])["name"]
    index = sweep_index(version.scene(scene), sample["data"]["LIDAR_TOP"])
    return load_multisweep(version, scene, index, MultiSweepConfig(n_sweeps=n_sweeps))


def by_time_lag(points):
    """Rows sorted by time lag (stable: each sweep's points keep their file order, as both sides write them)."""
    return points[np.argsort(points[:, 4], kind="stable")]


def assert_same_points(got, ref, atol_xyz):
    assert got.dtype == np.float32 and got.shape == ref.shape, (got.shape, ref.shape)
    got, ref = by_time_lag(got), by_time_lag(ref)
    np.testing.assert_allclose(got[:, 4], ref[:, 4], rtol=0, atol=1e-6)  # time lags (float32 of the devkit's)
    np.testing.assert_array_equal(got[:, 3], ref[:, 3])  # intensity (float16 in the store, exact for integers)
    np.testing.assert_allclose(got[:, :3], ref[:, :3], rtol=0, atol=atol_xyz)


# the samples: scene-0061's first keyframe (9 previous sweeps exactly), its second, and scene-0103's last;
# 15 sweeps: more than the first keyframe has (the devkit stops at the scene's first sweep, so do we)
CASES = [(0, 10), (0, 15), (1, 10), (1, 15), (5, 10), (1, 3)]


@pytest.mark.parametrize("sample_i,n_sweeps", CASES)
def test_multisweep_matches_the_devkit_on_the_point_files(all_store, nusc, sample_i, n_sweeps):
    """Same points, time lags and intensities as the devkit reading the point files, within the store's 1 cm
    quantisation (5 mm a coordinate, so at most 5 mm x sqrt(3) after the rotation)."""
    sample = nusc.sample[sample_i]
    got, ref = ours(all_store, nusc, sample, n_sweeps), devkit_multisweep(nusc, sample, n_sweeps)
    scale = float(all_store.scene(all_store.scenes()[0]).attrs["xyz_scale"])
    assert_same_points(got, ref, atol_xyz=0.5 * scale * np.sqrt(3) + 1e-5)


@pytest.mark.parametrize("sample_i,n_sweeps", [(0, 15), (4, 10)])
def test_multisweep_equals_the_devkit_on_the_stored_points(all_store, nusc, monkeypatch, sample_i, n_sweeps):
    """With the devkit reading the store's (quantised) points instead of the files, the two agree to float32
    rounding: the sweeps chosen, the min-distance cut, the pose chain and the time lags are the devkit's."""
    from nuscenes.utils.data_classes import LidarPointCloud

    stored = {}
    for scene in all_store.scenes():
        shard = all_store.scene(scene)
        for i, token in enumerate(shard.tokens):
            sw = shard.sweep(i, ("xyz", "flags", "features"))
            path = os.path.join(nusc.dataroot, nusc.get("sample_data", token)["filename"])
            stored[path] = np.concatenate([sw.xyz, sw.features[:, :1].astype(np.float32)], axis=1).T.copy()
    monkeypatch.setattr(LidarPointCloud, "from_file", classmethod(lambda cls, path: cls(stored[path].copy())))
    sample = nusc.sample[sample_i]
    got, ref = ours(all_store, nusc, sample, n_sweeps), devkit_multisweep(nusc, sample, n_sweeps)
    assert_same_points(got, ref, atol_xyz=2e-5)  # float32 rounding at ~100 m


def test_single_sweep_is_the_keyframe_in_its_own_frame(all_store, train_store, nusc):
    """n_sweeps=1: the keyframe's stored points without the close ones, unmoved, time lag 0; the same from a
    keyframes store (which needs no previous sweep)."""
    sample = nusc.sample[1]
    scene = nusc.get("scene", sample["scene_token"])["name"]
    shard = all_store.scene(scene)
    index = sweep_index(shard, sample["data"]["LIDAR_TOP"])
    got = load_multisweep(all_store, scene, index, MultiSweepConfig(n_sweeps=1))
    xyz = shard.sweep(index).xyz
    close = (np.abs(xyz[:, 0]) < 1.0) & (np.abs(xyz[:, 1]) < 1.0)
    assert close.any() and not close.all()  # the test sees points removed and kept
    np.testing.assert_allclose(got[:, :3], xyz[~close], rtol=0, atol=1e-5)
    assert (got[:, 4] == 0).all()
    kf_store = open_version(*train_store)
    kf_index = sweep_index(kf_store.scene(scene), sample["data"]["LIDAR_TOP"])
    np.testing.assert_array_equal(load_multisweep(kf_store, scene, kf_index, MultiSweepConfig(n_sweeps=1)), got)


def test_start_of_a_scene_gives_the_sweeps_there_are(all_store):
    """Near the scene's first sweep the chain stops there: sweep 3 with 10 asked gives sweeps 3, 2, 1, 0, and
    their time lags are the timestamp differences, increasing."""
    scene = all_store.scenes()[0]
    shard = all_store.scene(scene)
    assert sweep_chain(all_store, shard, 3, 10) == [3, 2, 1, 0]
    assert sweep_chain(all_store, shard, 12, 10) == list(range(12, 2, -1))
    pts = load_multisweep(all_store, scene, 3, MultiSweepConfig(n_sweeps=10))
    lags = np.unique(pts[:, 4])
    t = shard.array("timestamp")
    np.testing.assert_allclose(lags, sorted(1e-6 * (t[3] - t[i]) for i in range(4)), atol=1e-6)
    first = load_multisweep(all_store, scene, 0, MultiSweepConfig(n_sweeps=10))
    assert (first[:, 4] == 0).all() and len(first) < len(pts)


def test_a_keyframes_store_cannot_give_previous_sweeps(train_store):
    store, vid = train_store
    version = open_version(store, vid)
    scene = version.scenes()[0]
    with pytest.raises(InputError) as exc:
        load_multisweep(version, scene, 1, MultiSweepConfig(n_sweeps=10))
    msg = str(exc.value)
    assert vid in msg and "--sweeps keyframes" in msg and "--sweeps all" in msg and scene in msg


def test_a_shard_with_failed_sweeps_cannot_give_previous_sweeps(synth_root, tmp_path):
    """A truncated sweep file fails that sweep: the shard lacks it, and multi-sweep input of that scene is an
    error naming the scene, the version and the failed sweep (one sweep still reads)."""
    from preprocess.run import run
    from shared.nuscenes_io import open_nuscenes

    root, version = synth_root
    copy = tmp_path / "data"
    shutil.copytree(root, copy, copy_function=os.symlink)
    nusc = open_nuscenes(copy, version)
    scene = nusc.scene[0]
    bad = [sd for sd in nusc.sample_data if "LIDAR_TOP" in sd["filename"] and not sd["is_key_frame"]
           and nusc.get("sample", sd["sample_token"])["scene_token"] == scene["token"]][0]
    target = copy / bad["filename"]
    data = target.read_bytes()
    target.unlink()
    target.write_bytes(data[:-7])
    summary = run(copy, version, tmp_path / "store", sweeps="all", workers=0, progress=False, log=None,
                  scenes=[scene["name"]])
    assert summary.failed_sweeps == 1
    sv = open_version(tmp_path / "store", summary.version)
    shard = sv.scene(scene["name"])
    with pytest.raises(InputError) as exc:
        load_multisweep(sv, scene["name"], len(shard) - 1, MultiSweepConfig(n_sweeps=10))
    msg = str(exc.value)
    assert scene["name"] in msg and sv.id in msg and bad["token"] in msg and "--retry-failed" in msg
    assert len(load_multisweep(sv, scene["name"], len(shard) - 1, MultiSweepConfig(n_sweeps=1))) > 0


@pytest.mark.parametrize("kw", [{"n_sweeps": 0}, {"n_sweeps": 2.0}, {"n_sweeps": True}, {"min_distance": -1.0},
                                {"min_distance": float("nan")}, {"min_distance": "1"}])
def test_bad_multisweep_settings_are_config_errors(kw):
    with pytest.raises(ConfigError) as exc:
        MultiSweepConfig(**kw)
    assert next(iter(kw)) in str(exc.value)


def test_an_unknown_sweep_token_names_the_shard(all_store):
    shard = all_store.scene(all_store.scenes()[0])
    with pytest.raises(InputError, match="no sweep nope in the shard of scene"):
        sweep_index(shard, "nope")
