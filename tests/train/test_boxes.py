"""train.data.boxes: keyframe boxes from devkit annotations, the two-view augmentation on boxes and its inverse,
and boxes back to the global frame, on the generated ``tiny`` dataset (mini_val)."""
from __future__ import annotations

import numpy as np
import pytest

from shared import augment_params
from shared.errors import ConfigError
from train.data.boxes import (
    DETECTION_CLASSES,
    augment_boxes,
    augment_boxes_inverse,
    boxes_to_devkit,
    keyframe_boxes,
    to_global,
    wrap_angle,
)
from train.eval.detection import split_sample_tokens


def _params(rng, n):
    """n random view records covering every flip combination."""
    out = []
    for i in range(n):
        out.append(np.array([rng.uniform(-np.pi, np.pi), rng.uniform(0.9, 1.1), i % 2, (i // 2) % 2,
                             *rng.uniform(-0.5, 0.5, 3)], np.float32))
    return out


def _random_boxes(rng, m=50):
    b = np.zeros((m, 9))
    b[:, :3] = rng.uniform(-40, 40, (m, 3))
    b[:, 3:6] = rng.uniform(0.3, 10, (m, 3))
    b[:, 6] = rng.uniform(-np.pi, np.pi, m)
    b[:, 7:9] = rng.uniform(-15, 15, (m, 2))
    return b


@pytest.fixture(scope="module")
def val_tokens(synth_nusc):
    return split_sample_tokens(synth_nusc, "mini_val")


def _lidar_pose(nusc, token):
    from shared.nuscenes_io import sweep_info

    return sweep_info(nusc, nusc.get("sample", token)["data"]["LIDAR_TOP"])


def test_keyframe_boxes_are_the_annotations(synth_nusc, val_tokens):
    from nuscenes.eval.detection.utils import category_to_detection_name

    n_valid = 0
    for token in val_tokens:
        kb = keyframe_boxes(synth_nusc, token)
        anns = [synth_nusc.get("sample_annotation", a) for a in synth_nusc.get("sample", token)["anns"]]
        expect = {a["token"]: a for a in anns if category_to_detection_name(a["category_name"]) is not None
                  and a["num_lidar_pts"] + a["num_radar_pts"] > 0}
        assert set(kb.ann_tokens) == set(expect) and len(kb.ann_tokens) == len(kb.boxes) > 0
        assert [DETECTION_CLASSES[i] for i in kb.labels] == [
            category_to_detection_name(expect[t]["category_name"]) for t in kb.ann_tokens]
        # back in the global frame: the annotation's centre, size, yaw and devkit's velocity
        info = _lidar_pose(synth_nusc, token)
        g = to_global(kb.boxes, np.ones(len(kb.boxes)), kb.labels, info.lidar2ego, info.ego2global)
        from pyquaternion import Quaternion

        for i, t in enumerate(kb.ann_tokens):
            a = expect[t]
            np.testing.assert_allclose(g.translation[i], a["translation"], atol=1e-6)
            np.testing.assert_allclose(g.size[i], a["size"], atol=1e-9)
            yaw = Quaternion(a["rotation"]).yaw_pitch_roll[0]
            assert abs(wrap_angle(Quaternion(g.rotation[i]).yaw_pitch_roll[0] - yaw)) < 1e-6
            vel = synth_nusc.box_velocity(t)[:2]
            if np.isfinite(vel).all():
                assert kb.velocity_valid[i]
                np.testing.assert_allclose(g.velocity[i], vel, atol=1e-6)
                n_valid += 1
            else:
                assert not kb.velocity_valid[i] and (kb.boxes[i, 7:9] == 0).all()
    assert n_valid > 0
    # min_points=0 keeps the annotations without points too
    assert len(keyframe_boxes(synth_nusc, val_tokens[0], min_points=0).boxes) >= len(
        keyframe_boxes(synth_nusc, val_tokens[0]).boxes)


def test_augmentation_round_trip():
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng)
    for p in _params(rng, 8):
        aug = augment_boxes(boxes, p)
        back = augment_boxes_inverse(aug, p)
        assert np.abs(back[:, :6] - boxes[:, :6]).max() < 1e-4
        assert np.abs(wrap_angle(back[:, 6] - boxes[:, 6])).max() < 1e-4
        assert np.abs(back[:, 7:9] - boxes[:, 7:9]).max() < 1e-4
        # the centres move exactly as points do; sizes scale with the view
        np.testing.assert_allclose(aug[:, :3], augment_params.apply(boxes[:, :3], p), atol=1e-4)
        np.testing.assert_allclose(aug[:, 3:6], boxes[:, 3:6] * p[1].astype(np.float64), rtol=1e-6)


def test_velocity_moves_as_the_centre_does():
    """The augmented velocity is the augmented centre's displacement per second (rotated, flipped, scaled)."""
    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng)
    later = boxes.copy()
    later[:, :2] += boxes[:, 7:9] * 0.5  # the box 0.5 s later
    for p in _params(rng, 4):
        a, b = augment_boxes(boxes, p), augment_boxes(later, p)
        np.testing.assert_allclose((b[:, :2] - a[:, :2]) / 0.5, a[:, 7:9], atol=1e-6)


def test_points_inside_stay_inside(synth_nusc, val_tokens):
    """Points of a real generated keyframe inside each annotated box are inside the augmented box, and no other."""
    from nuscenes.utils.geometry_utils import points_in_box

    from shared.nuscenes_io import load_sweep_points

    token = val_tokens[0]
    kb = keyframe_boxes(synth_nusc, token)
    pts = load_sweep_points(_lidar_pose(synth_nusc, token))[:, :3].astype(np.float64)
    before = np.stack([points_in_box(b, pts.T) for b in boxes_to_devkit(kb.boxes)])
    assert before.sum() > 100
    for p in _params(np.random.default_rng(2), 4):
        m = augment_params.as_matrix(p)
        moved = pts @ m[:3, :3].T + m[:3, 3]
        after = np.stack([points_in_box(b, moved.T) for b in boxes_to_devkit(augment_boxes(kb.boxes, p))])
        assert (after != before).sum() <= 1e-4 * before.sum(), (after != before).sum()  # float ties on a face


def test_bad_box_arrays():
    with pytest.raises(ConfigError, match="boxes"):
        augment_boxes(np.zeros((3, 7)), np.array([0, 1, 0, 0, 0, 0, 0], np.float32))
    with pytest.raises(ConfigError, match="augment params"):
        augment_boxes(np.zeros((3, 9)), np.array([0, -1, 0, 0, 0, 0, 0], np.float32))
