"""Robustness evaluation wiring (train/eval/robustness/apply.py, the evaluation stream's ``corruption=``, the
spoofing tally in DetectTask.evaluate, ``calico eval det|seg --corrupt / --spoof-range``): what reaches the model
is the corrupted keyframe, the clean keyframe otherwise, and the scores and folders say which."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shared.errors import ConfigError
from train.eval.robustness import keyframe_rng, point_dropping
from train.eval.robustness.apply import EvalCorruption, SpoofTally

from tests.test_cli_errors import cli, one_line_error
from tests.train.test_finetune import ft_config


def test_eval_corruption_validates_and_names_its_folder():
    assert EvalCorruption("fog", 3).tag == "fog-s3" and EvalCorruption("fog", 3).lidar
    assert EvalCorruption(spoof_range=10).tag == "spoof-10m" and not EvalCorruption(spoof_range=10).camera
    assert EvalCorruption("low_light", 2, seed=4).tag == "low_light-s2-seed4"
    assert EvalCorruption("low_light", 2).camera and not EvalCorruption("low_light", 2).lidar
    for kw, needle in (({"name": "rain"}, "--corrupt"), ({"name": "fog", "severity": 6}, "--severity"),
                       ({"name": "fog", "seed": -1}, "--corrupt-seed"), ({"spoof_range": 500.0}, "--spoof-range"),
                       ({}, "--corrupt")):
        with pytest.raises(ConfigError, match=needle):
            EvalCorruption(**kw)


def test_spoof_tally_counts_hits_skips_real_objects_and_reports_a_rate():
    c = EvalCorruption(spoof_range=15.0)
    t = SpoofTally(c)
    box = c.spoof_box()
    assert abs(box[1] - 15.0) < 1e-9 and abs(box[0]) < 1e-9  # straight ahead: +y of the LiDAR frame
    far = box.copy()
    far[1] += 10.0
    none = np.zeros((0, 9))
    t.add(box[None], np.array([0]), np.array([0.9]), none)          # fooled
    t.add(far[None], np.array([0]), np.array([0.9]), none)          # a detection 10 m away: not fooled
    t.add(box[None], np.array([0]), np.array([0.1]), none)          # below the score threshold: not fooled
    t.add(box[None], np.array([0]), np.array([0.9]), box[None])     # a real car there: not scored
    s = t.scores()
    assert s == {"spoof_fp_rate": 1 / 3, "spoof_keyframes": 3.0, "spoof_skipped": 1.0}
    assert np.isnan(SpoofTally(c).scores()["spoof_fp_rate"])


def _eval_stream(train_store, task, corruption):
    from train.loop import finetune_task

    job = finetune_task(ft_config(train_store, task))
    job.set_corruption(corruption)
    return job.eval_stream()


def test_eval_stream_applies_the_corruption_per_keyframe(train_store):
    clean = _eval_stream(train_store, "det", None)
    item = clean.items[0]
    token = clean.sample_of[item.token]
    ref = clean.load(item)["points"]
    dropped = _eval_stream(train_store, "det", EvalCorruption("point_dropping", 5, seed=2))
    got = dropped.load(item)["points"]
    # what reaches the model is the corruption of the clean multi-sweep points with the keyframe's own generator
    from train.data.multisweep import load_multisweep

    raw = load_multisweep(clean.version, item.scene, item.index, clean.sweeps)
    expect = point_dropping(raw, 5, keyframe_rng(2, token)).points
    r = clean.point_range
    keep = np.all((expect[:, :3] >= np.float32(r[:3])) & (expect[:, :3] < np.float32(r[3:])), axis=1)
    np.testing.assert_array_equal(got, expect[keep])
    assert 0.1 * len(ref) < len(got) < 0.9 * len(ref)
    np.testing.assert_array_equal(dropped.load(item)["points"], got)  # seeded: the same again
    spoofed = _eval_stream(train_store, "det", EvalCorruption(spoof_range=10.0)).load(item)["points"]
    extra = spoofed[len(ref):]
    assert len(spoofed) > len(ref) and np.array_equal(spoofed[:len(ref)], ref)  # fake returns appended
    box = EvalCorruption(spoof_range=10.0).spoof_box()
    assert np.all(np.abs(extra[:, 0] - box[0]) <= box[3] / 2 + 0.1)
    assert np.all(np.abs(extra[:, 1] - box[1]) <= box[4] / 2 + 0.1)
    # a camera corruption leaves a LiDAR-only stream's points alone
    cam = _eval_stream(train_store, "det", EvalCorruption("brightness", 3)).load(item)["points"]
    np.testing.assert_array_equal(cam, ref)


def test_eval_stream_corrupts_the_decoded_images(train_store):
    from train.config import small, with_overrides
    from train.loop import finetune_task

    from tests.train.test_finetune import FT_SETS

    store, vid = train_store
    cfg = with_overrides(small(str(store), vid, "det", modality="camera"), FT_SETS)
    job = finetune_task(cfg)
    clean = job.eval_stream()
    item = clean.items[0]
    a = clean.load(item)
    job.set_corruption(EvalCorruption("occlusion", 5))
    b = job.eval_stream().load(item)
    valid = a["cam_valid"]
    assert valid.any() and np.array_equal(valid, b["cam_valid"])
    diff = (a["images"] - b["images"]).abs().flatten(1).amax(1)
    assert bool((diff[valid] > 0).all())  # every camera's image changed
    np.testing.assert_array_equal(a["points"], b["points"])


@pytest.mark.slow
def test_cli_eval_under_corruption_and_spoofing(train_store, tmp_path, capsys):
    store, _ = train_store
    out = tmp_path / "det"
    code, _, err = cli(capsys, "train", "finetune", "--store", store, "--lidar-sweeps", "1", "--fraction-by",
                       "samples", "--steps", "2", "--set", "optim.warmup_steps=1", "--task", "det", "--out", out)
    assert code == 0, err
    code, stdout, err = cli(capsys, "eval", "det", "--checkpoint", out, "--no-plots")
    assert code == 0, err
    clean = json.loads(stdout.strip().splitlines()[-1])
    code, stdout, err = cli(capsys, "eval", "det", "--checkpoint", out, "--corrupt", "beam_missing", "--severity",
                            "5", "--spoof-range", "12")
    assert code == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    folder = out / "eval" / "det-mini_val-step00000002-beam_missing-s5-spoof-12m"
    assert res["out"] == str(folder) and res["corruption"]["name"] == "beam_missing"
    assert res["out"] != clean["out"] and clean["corruption"] is None
    s = res["scores"]
    assert s["spoof_keyframes"] + s["spoof_skipped"] == len(json.loads((folder / "submission.json").read_text())
                                                            ["results"])
    assert np.isnan(s["spoof_fp_rate"]) or 0.0 <= s["spoof_fp_rate"] <= 1.0
    assert (folder / "plots").is_dir() and any((folder / "plots").iterdir())  # the devkit's curves
    plain = out / "eval" / clean["out"].rsplit("/", 1)[-1] / "plots"  # --no-plots: the devkit's folder stays empty
    assert not plain.exists() or not any(plain.iterdir())
    code, stdout, err = cli(capsys, "eval", "seg", "--checkpoint", out)
    assert code == 2
    one_line_error(capsys, "eval", "det", "--checkpoint", out, "--corrupt", "fog", "--severity", "9",
                   needles=["--severity"])
    one_line_error(capsys, "eval", "det", "--checkpoint", out, "--corrupt", "rain", needles=["--corrupt", "fog"])
