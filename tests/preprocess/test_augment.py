"""Two-view augmentation: matrix form, inverse, reproducibility from the stored record, distributions."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from preprocess.augment import (
    NUM_PARAMS,
    AugmentConfig,
    apply,
    apply_inverse,
    as_matrix,
    inverse_matrix,
    sample_views,
)
from shared.errors import ConfigError

ALL_ON = AugmentConfig(flip_x_prob=0.5, flip_y_prob=0.5, translation_std=(0.5, 0.5, 0.1))


def _points(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-50, 50, size=(n, 5)).astype(np.float32)
    pts[:, 3] = rng.uniform(0, 255, n)
    pts[:, 4] = rng.integers(0, 32, n)
    return pts


def test_apply_equals_matrix_and_keeps_other_columns():
    pts = _points()
    for token in range(20):
        for params in sample_views(ALL_ON, 7, token):
            out = apply(pts, params)
            m = as_matrix(params)
            ref = (np.c_[pts[:, :3].astype(np.float64), np.ones(len(pts))] @ m.T)[:, :3]
            np.testing.assert_allclose(out[:, :3], ref, rtol=1e-6, atol=1e-4)
            np.testing.assert_array_equal(out[:, 3:], pts[:, 3:])
            assert out.dtype == np.float32 and out.shape == pts.shape


def test_matrix_form_by_hand():
    # 90 degrees, scale 2, flip x, translation (1, 2, 3): (1, 0, 0) -> flip (-1, 0, 0) -> rot (0, -1, 0) -> *2 + t
    params = np.array([np.pi / 2, 2.0, 1, 0, 1, 2, 3], dtype=np.float32)
    out = apply(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], np.float32), params)
    np.testing.assert_allclose(out, [[1.0, 0.0, 3.0], [-1.0, 2.0, 5.0]], atol=1e-5)
    # flip y only negates y
    out = apply(np.array([[1.0, 2.0, 3.0]], np.float32), np.array([0, 1, 0, 1, 0, 0, 0], np.float32))
    np.testing.assert_allclose(out, [[1.0, -2.0, 3.0]])


def test_inverse_round_trip():
    pts = _points(seed=1)
    for token in ("a", "b", "c", 3, 4):
        for params in sample_views(ALL_ON, 0, token):
            np.testing.assert_allclose(inverse_matrix(params) @ as_matrix(params), np.eye(4), atol=1e-12)
            back = apply_inverse(apply(pts, params), params)
            np.testing.assert_allclose(back[:, :3], pts[:, :3], atol=1e-4)
            np.testing.assert_array_equal(back[:, 3:], pts[:, 3:])


def test_reproducible_from_seed_token_and_record():
    cfg = AugmentConfig()
    a = sample_views(cfg, 42, "e3d495d4ac534d54b321f50006683844")
    b = sample_views(cfg, 42, "e3d495d4ac534d54b321f50006683844")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, NUM_PARAMS) and a.dtype == np.float32
    assert not np.array_equal(a[0], a[1])  # two different views
    assert not np.array_equal(a, sample_views(cfg, 43, "e3d495d4ac534d54b321f50006683844"))
    assert not np.array_equal(a, sample_views(cfg, 42, "e3d495d4ac534d54b321f50006683845"))
    np.testing.assert_array_equal(sample_views(cfg, 0, 12), sample_views(cfg, 0, "12"))  # index == str(index)
    # the stored float32 record reproduces the views exactly
    pts = _points(seed=2)
    stored = np.frombuffer(a.tobytes(), dtype=np.float32).reshape(a.shape)
    for v in range(2):
        np.testing.assert_array_equal(apply(pts, stored[v]), apply(pts, a[v]))


def test_stable_across_processes():
    """No dependence on Python's per-process hash randomisation."""
    code = ("from preprocess.augment import AugmentConfig, sample_views;"
            "print(sample_views(AugmentConfig(), 5, 'tok').tobytes().hex())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(s), "PATH": ""}).stdout for s in (1, 2)}
    assert len(outs) == 1
    assert outs.pop().strip() == sample_views(AugmentConfig(), 5, "tok").tobytes().hex()


def test_distribution_bounds():
    cfg = AugmentConfig()
    p = np.concatenate([sample_views(cfg, 0, i) for i in range(3000)])
    assert np.all(np.abs(p[:, 0]) <= np.pi / 2 + 1e-6)
    assert np.all((p[:, 1] >= 0.9 - 1e-6) & (p[:, 1] <= 1.1 + 1e-6))
    assert np.all(p[:, 2:] == 0)  # flips and translation are off by default
    # uniform: mean and standard deviation of U(a, b)
    assert abs(p[:, 0].mean()) < 0.05 and abs(p[:, 0].std() - np.pi / np.sqrt(12)) < 0.03
    assert abs(p[:, 1].mean() - 1.0) < 0.005 and abs(p[:, 1].std() - 0.2 / np.sqrt(12)) < 0.003
    q = np.concatenate([sample_views(ALL_ON, 0, i) for i in range(3000)])
    assert abs(q[:, 2].mean() - 0.5) < 0.04 and abs(q[:, 3].mean() - 0.5) < 0.04
    assert set(np.unique(q[:, 2:4])) <= {0.0, 1.0}
    np.testing.assert_allclose(q[:, 4:].std(axis=0), [0.5, 0.5, 0.1], rtol=0.06)
    # turning flips on does not change the sampled angles and scales
    np.testing.assert_array_equal(p[:, :2], q[:, :2])
    narrow = AugmentConfig(rotation_deg=(10.0, 20.0), num_views=3)
    r = sample_views(narrow, 0, "x")
    assert r.shape == (3, NUM_PARAMS)
    assert np.all((r[:, 0] >= np.deg2rad(10) - 1e-6) & (r[:, 0] <= np.deg2rad(20) + 1e-6))


@pytest.mark.parametrize("kwargs,field", [
    ({"rotation_deg": (10.0, -10.0)}, "rotation_deg"),
    ({"rotation_deg": (0.0, 400.0)}, "rotation_deg"),
    ({"scale": (0.0, 1.0)}, "scale"),
    ({"scale": (1.0,)}, "scale"),
    ({"flip_x_prob": 1.5}, "flip_x_prob"),
    ({"translation_std": (0.1, -1.0, 0.0)}, "translation_std"),
    ({"num_views": 0}, "num_views"),
])
def test_config_validation(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        AugmentConfig(**kwargs)


def test_bad_params_and_seed():
    with pytest.raises(ConfigError):
        as_matrix(np.zeros(5, np.float32))
    with pytest.raises(ConfigError):
        as_matrix(np.array([0, 0, 0, 0, 0, 0, 0], np.float32))  # scale 0
    with pytest.raises(ConfigError, match="seed"):
        sample_views(AugmentConfig(), -1, "t")
