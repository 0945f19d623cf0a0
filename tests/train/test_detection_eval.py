"""nuScenes-devkit's DetectionEval (detection_cvpr_2019) on the generated validation split (mini_val).

Ground truth submitted as predictions scores 1 (every scene holds all 10 detection classes within devkit's class
ranges); an empty submission and displaced boxes score 0.
The submissions are the format later training code writes (train.eval.detection.gt_submission / write_submission).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from shared.errors import InputError
from train.eval.detection import evaluate_detection, gt_submission, split_sample_tokens, write_submission

SPLIT = "mini_val"


@pytest.fixture(scope="module")
def gt_sub(synth_nusc):
    return gt_submission(synth_nusc, SPLIT)


@pytest.fixture(scope="module")
def gt_eval(synth_nusc, gt_sub, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_gt")
    path = write_submission(gt_sub, out / "results.json")
    return evaluate_detection(synth_nusc, path, SPLIT, out)


def _classes_with_ground_truth(nusc) -> set[str]:
    """Detection classes with ground truth left after devkit's own filters (class range, zero points), found
    with devkit's loaders independently of the evaluation under test."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_gt
    from nuscenes.eval.detection.data_classes import DetectionBox

    cfg = config_factory("detection_cvpr_2019")
    gt = filter_eval_boxes(nusc, add_center_dist(nusc, load_gt(nusc, SPLIT, DetectionBox)), cfg.class_range)
    return {b.detection_name for t in gt.sample_tokens for b in gt[t]}


def test_gt_submission_format(synth_nusc, gt_sub):
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.utils import category_to_detection_name

    tokens = split_sample_tokens(synth_nusc, SPLIT)
    scenes = {synth_nusc.get("sample", t)["scene_token"] for t in tokens}
    assert {synth_nusc.get("scene", s)["name"] for s in scenes} <= {"scene-0103", "scene-0916"}
    assert set(gt_sub["results"]) == set(tokens)
    anns = [synth_nusc.get("sample_annotation", a) for t in tokens for a in synth_nusc.get("sample", t)["anns"]]
    n_expected = sum(category_to_detection_name(a["category_name"]) is not None and a["num_lidar_pts"] > 0
                     for a in anns)
    boxes = EvalBoxes.deserialize(json.loads(json.dumps(gt_sub["results"])), DetectionBox)  # devkit's own parser
    assert sum(len(boxes[t]) for t in tokens) == n_expected > 0
    assert all(b.detection_score == 1.0 for t in tokens for b in boxes[t])
    vel = np.array([b.velocity for t in tokens for b in boxes[t]])
    assert np.isfinite(vel).mean() > 0.5  # nan only where devkit cannot estimate a velocity
    with pytest.raises(InputError, match="unknown split"):
        gt_submission(synth_nusc, "mini_value")


def test_ground_truth_scores_one(synth_nusc, gt_eval):
    """The generator puts every detection class, seen by the LiDAR within devkit's class range, into every scene,
    so the ground truth scores AP 1 for all 10 classes with zero translation/scale/orientation/velocity/attribute
    error: mAP and NDS are 1 (up to float rounding)."""
    present = _classes_with_ground_truth(synth_nusc)
    missing = sorted(set(gt_eval["mean_dist_aps"]) - present)
    assert not missing, f"classes missing in the generated mini_val: {missing}"
    for c, ap in gt_eval["mean_dist_aps"].items():
        assert ap == pytest.approx(1.0, abs=1e-9), c
        for name, err in gt_eval["label_tp_errors"][c].items():
            # nan: not defined for the class (traffic_cone: attr/vel/orient, barrier: attr/vel)
            assert np.isnan(err) or err < 1e-6, (c, name, err)
    assert gt_eval["mean_ap"] >= 0.99
    tp = gt_eval["tp_errors"]
    nds = (5 * gt_eval["mean_ap"] + sum(1 - min(1.0, v) for v in tp.values())) / 10
    assert gt_eval["nd_score"] == pytest.approx(nds, abs=1e-9)
    assert gt_eval["nd_score"] >= 0.99


def test_class_ranges_match_devkit():
    """The generator places its guaranteed objects within devkit's detection_cvpr_2019 class ranges."""
    from nuscenes.eval.common.config import config_factory

    from shared.synth.world import CLASS_RANGE

    assert CLASS_RANGE == {k: float(v) for k, v in config_factory("detection_cvpr_2019").class_range.items()}


def test_boxes_without_points_count_as_false_positives(synth_nusc, gt_eval, tmp_path):
    """devkit drops ground truth with no LiDAR/radar point but cannot drop such predictions."""
    full = gt_submission(synth_nusc, SPLIT, skip_empty=False)
    n_empty = sum(synth_nusc.get("sample_annotation", a)["num_lidar_pts"] == 0
                  for t in full["results"] for a in synth_nusc.get("sample", t)["anns"])
    if n_empty == 0:
        pytest.skip("every annotation of the generated mini_val has LiDAR points")
    summary = evaluate_detection(synth_nusc, full, SPLIT, tmp_path)
    assert summary["mean_ap"] < gt_eval["mean_ap"]
    for c, ap in summary["mean_dist_aps"].items():
        assert ap <= gt_eval["mean_dist_aps"][c] + 1e-9


def test_empty_submission_scores_zero(synth_nusc, gt_sub, tmp_path):
    empty = {"meta": gt_sub["meta"], "results": {t: [] for t in gt_sub["results"]}}
    summary = evaluate_detection(synth_nusc, empty, SPLIT, tmp_path)
    assert summary["mean_ap"] == 0.0 and summary["nd_score"] == 0.0
    assert (tmp_path / "metrics_summary.json").is_file()


def test_displaced_boxes_score_near_zero(synth_nusc, gt_sub, gt_eval, tmp_path):
    # boxes of the training scenes' samples (another simulated street) handed to the validation samples
    val = sorted(gt_sub["results"], key=lambda t: synth_nusc.get("sample", t)["timestamp"])
    train = gt_submission(synth_nusc, "mini_train")["results"]
    donors = sorted(train, key=lambda t: synth_nusc.get("sample", t)["timestamp"])
    moved = {t: [dict(b, sample_token=t) for b in train[donors[i % len(donors)]]] for i, t in enumerate(val)}
    assert sum(map(len, moved.values())) > 0
    shuffled = evaluate_detection(synth_nusc, {"meta": gt_sub["meta"], "results": moved}, SPLIT, tmp_path / "a")
    assert shuffled["mean_ap"] < 0.15 * gt_eval["mean_ap"]
    assert shuffled["nd_score"] < 0.15
    # every box translated 30 m: beyond the largest matching distance (4 m)
    far = {t: [dict(b, translation=[b["translation"][0] + 30.0, *b["translation"][1:]]) for b in boxes]
           for t, boxes in gt_sub["results"].items()}
    far_summary = evaluate_detection(synth_nusc, {"meta": gt_sub["meta"], "results": far}, SPLIT, tmp_path / "b")
    assert far_summary["mean_ap"] == 0.0 and far_summary["nd_score"] == 0.0


def test_lower_scored_false_positives_keep_ap(synth_nusc, gt_sub, gt_eval, tmp_path):
    """Extra boxes far away with a lower score than every true box leave AP at 1 (they rank last)."""
    noisy = {
        t: boxes + [dict(b, translation=[b["translation"][0] + 30.0, *b["translation"][1:]], detection_score=0.5)
                    for b in boxes]
        for t, boxes in gt_sub["results"].items()
    }
    summary = evaluate_detection(synth_nusc, {"meta": gt_sub["meta"], "results": noisy}, SPLIT, tmp_path)
    # (devkit interpolates precision at recall 1.0 from the last, false-positive, point: a tiny loss)
    assert summary["mean_ap"] == pytest.approx(gt_eval["mean_ap"], rel=0.02)
    # ... while scoring them higher than the true boxes costs precision
    inverted = {
        t: [dict(b, detection_score=0.5) for b in boxes]
        + [dict(b, translation=[b["translation"][0] + 30.0, *b["translation"][1:]], detection_score=1.0)
           for b in boxes]
        for t, boxes in gt_sub["results"].items()
    }
    worse = evaluate_detection(synth_nusc, {"meta": gt_sub["meta"], "results": inverted}, SPLIT, tmp_path / "w")
    assert worse["mean_ap"] < 0.8 * gt_eval["mean_ap"]


def test_submission_must_list_the_split(synth_nusc, gt_sub, tmp_path):
    partial = {"meta": gt_sub["meta"], "results": dict(list(gt_sub["results"].items())[1:])}
    with pytest.raises(InputError, match=r"1 missing, 0 not in the split"):
        evaluate_detection(synth_nusc, partial, SPLIT, tmp_path)
    with pytest.raises(InputError, match="submission file not found"):
        evaluate_detection(synth_nusc, tmp_path / "none.json", SPLIT, tmp_path)


def test_make_submission_lists_every_sample(synth_nusc, gt_sub):
    from train.eval.detection import MAX_BOXES_PER_SAMPLE, make_submission

    tokens = split_sample_tokens(synth_nusc, SPLIT)
    sub = make_submission({tokens[0]: gt_sub["results"][tokens[0]]}, tokens)
    assert list(sub["results"]) == tokens and sub["results"][tokens[1]] == [] and sub["meta"]["use_lidar"]
    with pytest.raises(InputError, match="not in the evaluated split"):
        make_submission({"nope": []}, tokens)
    with pytest.raises(InputError, match="the devkit allows 500"):
        make_submission({tokens[0]: [{}] * (MAX_BOXES_PER_SAMPLE + 1)}, tokens)


def test_default_attribute_follows_the_speed():
    from train.eval.detection import default_attribute

    assert default_attribute("car", 5.0) == "vehicle.moving" and default_attribute("car", 0.0) == "vehicle.parked"
    assert default_attribute("pedestrian", 0.0) == "pedestrian.standing"
    assert default_attribute("bicycle", 3.0) == "cycle.with_rider" and default_attribute("barrier", 3.0) == ""


def test_encoded_and_decoded_ground_truth_scores_one(synth_nusc, tmp_path):
    """The geometry round trip: mini_val's annotated boxes -> CenterPoint targets (Gaussian heatmaps, regression at
    the centre cells) taken as a perfect head's output -> decoded (max-pool, top-k, NMS) -> global frame through
    the keyframe's poses -> devkit results JSON -> DetectionEval: mAP and NDS >= 0.99 (velocities and the
    speed-derived attributes included). The grid is the nuScenes PointPillars output (+-51.2 m, 0.8 m cells): the
    devkit's class ranges reach 50 m."""
    import torch

    from shared.nuscenes_io import sweep_info
    from train.data.boxes import keyframe_boxes, to_global
    from train.data.det_targets import CenterHeadConfig, center_targets, regression_maps
    from train.eval.detection import MAX_BOXES_PER_SAMPLE, box_dicts, make_submission
    from train.model_config import PointPillarsConfig
    from train.models.heads import decode_boxes

    cfg = CenterHeadConfig.of_backbone(PointPillarsConfig())
    tokens = split_sample_tokens(synth_nusc, SPLIT)
    results, n_boxes = {}, 0
    for token in tokens:
        kb = keyframe_boxes(synth_nusc, token)
        t = center_targets(kb.boxes, kb.labels, cfg, kb.velocity_valid)
        det = decode_boxes(torch.from_numpy(t.heatmap)[None],
                           torch.from_numpy(regression_maps(t, cfg.grid_size))[None], cfg)[0]
        info = sweep_info(synth_nusc, synth_nusc.get("sample", token)["data"]["LIDAR_TOP"])
        g = to_global(det.boxes.double().numpy(), det.scores.numpy(), det.labels.numpy(), info.lidar2ego,
                      info.ego2global)
        results[token] = box_dicts(token, g)
        n_boxes += len(results[token])
        assert len(results[token]) <= MAX_BOXES_PER_SAMPLE
    assert n_boxes > 0
    path = write_submission(make_submission(results, tokens), tmp_path / "results.json")
    summary = evaluate_detection(synth_nusc, path, SPLIT, tmp_path)
    assert summary["mean_ap"] >= 0.99 and summary["nd_score"] >= 0.99, (summary["mean_ap"], summary["nd_score"],
                                                                         summary["tp_errors"])
    assert summary["tp_errors"]["vel_err"] < 0.05
