"""The pre-training probe (train/probe.py): labels from the annotations, deterministic random backbones, the
scores on hand-made features, and the whole comparison on a checkpoint of a short run on the tiny store."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_catalog.reader import open_version
from shared.errors import ConfigError, InputError
from train.config import small, with_overrides
from train.loop import pretrain_prc
from train.eval.probe import (
    CLASSES,
    SCORE_KEYS,
    ProbeConfig,
    SweepPoints,
    class_labels,
    collect_points,
    compare,
    format_table,
    load_model,
    open_annotations,
    point_features,
    region_nn,
    scores,
    split_scenes,
)


@pytest.fixture(scope="module")
def short_run(train_store, tmp_path_factory):
    """A run folder with the checkpoint of a 2-step PRC run (small preset) on the tiny store."""
    store, version = train_store
    out = tmp_path_factory.mktemp("probe_run")
    cfg = with_overrides(small(str(store), version), ["optim.max_steps=2", "optim.warmup_steps=1"])
    pretrain_prc(cfg, out, resume=False)
    return out


@pytest.fixture(scope="module")
def nusc(train_store):
    store, version = train_store
    return open_annotations(open_version(store, version))


def test_class_labels_match_devkit_points_in_box_on_global_boxes(train_store, nusc):
    """Labels (boxes from get_sample_data, LiDAR frame) against devkit's points_in_box on the global-frame boxes
    of nusc.get_boxes with the stored points moved to the global frame by the stored lidar2ego / ego2global."""
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils.geometry_utils import points_in_box

    store, version = train_store
    sv = open_version(store, version)
    sw = sv.sweep(sv.scenes()[0], 0)
    assert nusc.get("sample_data", sw.token)["is_key_frame"]
    xyz, ground = sw.xyz, sw.ground
    labels = class_labels(nusc, sw.token, xyz, ground)

    to_global = np.asarray(sw.raw["ego2global"], np.float64) @ np.asarray(sw.raw["lidar2ego"], np.float64)
    g = (np.c_[xyz.astype(np.float64), np.ones(len(xyz))] @ to_global.T)[:, :3].T
    boxes = nusc.get_boxes(sw.token)
    masks = np.stack([points_in_box(b, g) for b in boxes])
    names = [category_to_detection_name(b.name) for b in boxes]
    n_in = masks.sum(0)
    one = np.flatnonzero(n_in == 1)
    assert one.size > 100  # the tiny dataset has annotated objects with points in them
    expected = np.array([CLASSES.index(names[k]) if names[k] in CLASSES else -1 for k in masks[:, one].argmax(0)])
    np.testing.assert_array_equal(labels[one], expected)
    none = n_in == 0
    np.testing.assert_array_equal(labels[none], np.where(ground[none], -1, 0))
    assert set(np.unique(labels[one])) - {-1} and labels.min() >= -1 and labels.max() < len(CLASSES)


def test_sampled_points_favour_boxes_and_regions(train_store, nusc):
    store, version = train_store
    sv = open_version(store, version)
    rng = small().prc.backbone.point_range
    cfg = ProbeConfig(points_per_sweep=200)
    sweeps = collect_points(sv, nusc, rng, cfg, scenes=sv.scenes()[:1])
    assert len(sweeps) == len(sv.scene(sv.scenes()[0]))
    for s in sweeps:
        assert s.idx.size == 200 and np.unique(s.idx).size == 200 and s.idx.max() < len(s.points)
        lo, hi = np.asarray(rng[:3]), np.asarray(rng[3:])
        assert np.all((s.points[:, :3] >= lo) & (s.points[:, :3] < hi))
        assert (s.cls >= 1).sum() >= 100  # half from the boxes (each tiny keyframe has more than 100 such points)
        assert (s.region >= 0).mean() > 0.4
    again = collect_points(sv, nusc, rng, cfg, scenes=sv.scenes()[:1])
    assert all(np.array_equal(a.idx, b.idx) for a, b in zip(sweeps, again))


def test_random_backbone_features_deterministic_per_seed(train_store, nusc, short_run):
    store, version = train_store
    sv = open_version(store, version)
    sweeps = collect_points(sv, nusc, small().prc.backbone.point_range, ProbeConfig(points_per_sweep=64),
                            scenes=sv.scenes()[:1])[:1]
    state = torch.get_rng_state()
    a = point_features(load_model(short_run, random_init=True)[0], sweeps)[0]
    b = point_features(load_model(short_run, random_init=True)[0], sweeps)[0]
    c = point_features(load_model(short_run, random_init=True, seed=7)[0], sweeps)[0]
    p = point_features(load_model(short_run)[0], sweeps)[0]
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert a.shape == (64, load_model(short_run)[0].backbone.out_channels) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, p)
    h = point_features(load_model(short_run)[0], sweeps, use_head=True)[0]
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), 1.0, rtol=1e-5)


def test_region_nn_hand_case():
    # Angles of the features: 0, 0.10, 1.57, 1.47, 0.29 rad; regions 0, 0, 1, 1, 1; point 5 semantic-less.
    f = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 0.3], [1, 0.0]])
    r = np.array([0, 0, 1, 1, 1, -1])
    hits, count, chance = region_nn(f, r)
    # nearest by cosine: 0 -> 1 (hit), 1 -> 0 (hit), 2 -> 3 (hit), 3 -> 2 (hit), 4 -> 1 (miss)
    assert (hits, count) == (4, 5)
    assert chance == pytest.approx(2 * 1 / 4 + 3 * 2 / 4)
    # points 1 m apart on a line; neighbours closer than 1.5 m are left out:
    # 0 -> {2,3,4}: 4 (miss), 1 -> {3,4}: 4 (miss), 2 -> {0,4}: 4 (hit), 3 -> {0,1}: 1 (miss), 4 -> {0,1,2}: 1 (miss)
    xy = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0]], float)
    hits, count, chance = region_nn(f, r, xy, exclude_m=1.5)
    assert (hits, count) == (1, 5)
    assert chance == pytest.approx(0 / 3 + 0 / 2 + 1 / 2 + 0 / 2 + 1 / 3)
    assert region_nn(f, r, xy, exclude_m=10.0) == (0, 0, 0.0)
    assert region_nn(f, np.full(6, -1)) == (0, 0, 0.0)


def _sweeps_with(features_fn, n_scenes=2, k=60, seed=0):
    rng = np.random.default_rng(seed)
    sweeps, feats = [], []
    for s in range(n_scenes):
        for j in range(2):
            cls = rng.integers(0, 3, k)
            region = rng.integers(0, 4, k)
            pts = np.c_[rng.uniform(-5, 5, (k, 2)), np.zeros((k, 2))].astype(np.float32)
            sweeps.append(SweepPoints(f"scene-{s}", f"t{s}{j}", pts, np.arange(k), region, cls))
            feats.append(features_fn(cls, region, rng))
    return sweeps, feats


def test_scores_separable_features_give_one_and_noise_gives_chance_level():
    sweeps, feats = _sweeps_with(lambda c, r, g: np.c_[np.eye(3)[c], np.eye(4)[r]] + 0.01 * g.normal(size=(len(c), 7)))
    train, test = split_scenes([s.scene for s in sweeps])
    out = scores(feats, sweeps, train, test, ProbeConfig(nn_exclude_m=0.5))
    assert set(SCORE_KEYS) <= set(out)
    assert out["class_acc"] == out["class_bacc"] == out["object_bacc"] == out["region_nn"] == 1.0
    assert out["n_train"] == out["n_test"] == 120
    sweeps, feats = _sweeps_with(lambda c, r, g: g.normal(size=(len(c), 7)))
    noise = scores(feats, sweeps, train, test)
    assert noise["class_bacc"] < 0.6 and noise["region_nn"] < 0.5
    assert abs(noise["chance_region_nn"] - 0.25) < 0.05


def test_split_and_config_errors(tmp_path):
    assert split_scenes(["b", "a", "d", "c"]) == (["a", "b"], ["c", "d"])
    assert split_scenes(["b", "a"]) == (["a"], ["b"])
    with pytest.raises(InputError, match="two scenes"):
        split_scenes(["a"])
    with pytest.raises(ConfigError, match="points_per_sweep"):
        ProbeConfig(points_per_sweep=1)
    with pytest.raises(ConfigError, match="nn_exclude_m"):
        ProbeConfig(nn_exclude_m=-1.0)
    with pytest.raises(InputError, match="no checkpoint"):
        load_model(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_compare_end_to_end_and_cli(train_store, short_run):
    store, version = train_store
    out = compare(short_run, store, version, cfg=ProbeConfig(points_per_sweep=128))
    assert out["checkpoint_step"] == 2 and out["store_version"] == version
    assert out["train_scenes"] and out["test_scenes"] and not set(out["train_scenes"]) & set(out["test_scenes"])
    for name in ("random", "pretrained"):
        for key in SCORE_KEYS + ("chance_class_acc", "chance_region_nn"):
            assert 0.0 <= out[name][key] <= 1.0, (name, key, out[name][key])
        assert out[name]["n_train"] > 0 and out[name]["n_test"] > 0 and out[name]["n_region_nn"] > 0

    from typer.testing import CliRunner

    from calico.commands.train import app

    res = CliRunner().invoke(app, ["probe", "--store", str(store), "--checkpoint", str(short_run), "--points", "32",
                                   "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["points_per_sweep"] == 32 and set(SCORE_KEYS) <= set(got["pretrained"])
    table = format_table(out)
    assert "pre-trained" in table and f"{out['pretrained']['region_nn']:.3f}" in table
