"""RAD's distillation loss against a hand-computed case and an explicit-loop reference (METHOD.md section 3)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from train.losses import rad_loss, rapc_loss, uniform_weights


def ref_rad(c, t, region, valid, tau, weighting) -> float:
    """The formula written out: d_i over the valid candidates of the scan, then the weighting."""
    per_scan = []
    for b in range(c.shape[0]):
        cand = [k for k in range(c.shape[1]) if valid[b, k]]
        if not cand:
            continue
        d = {}
        for i in cand:
            s = [float(np.dot(c[b, i], t[b, k])) / tau for k in cand]
            d[i] = -(float(np.dot(c[b, i], t[b, i])) / tau - math.log(sum(math.exp(v) for v in s)))
        if weighting == "uniform":
            per_scan.append(sum(d.values()) / len(d))
        else:
            groups: dict[int, list[float]] = {}
            for i, v in d.items():
                groups.setdefault(int(region[b, i]), []).append(v)
            per_scan.append(sum(sum(g) / len(g) for g in groups.values()) / len(groups))
    return float(np.mean(per_scan)) if per_scan else 0.0


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_hand_computed_two_regions():
    """Three points, one scan, tau = 1: point 0 and 1 in region 5, point 2 semantic-less. Embeddings chosen so that
    c_i . t_k is 1 on the diagonal and 0 elsewhere: d_i = -log(e / (e + 2)) for every point, so both weightings
    give that value; then point 2's term is changed by making c_2 . t_2 = 0 (d_2 = log 3): region weighting
    averages the groups {0, 1} and {2} (1/2 each), uniform averages the three points."""
    eye = torch.eye(3, dtype=torch.float64)[None]
    region = torch.tensor([[5, 5, -1]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    d_same = -math.log(math.e / (math.e + 2))
    for w in ("region", "uniform"):
        assert rad_loss(eye, eye, region, valid, tau=1.0, weighting=w).item() == pytest.approx(d_same, abs=1e-12)
    c = eye.clone()
    c[0, 2] = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)  # c_2 . t_k = 0 for all k: d_2 = log 3
    d2 = math.log(3)
    assert rad_loss(c, eye, region, valid, 1.0, "region").item() == pytest.approx(0.5 * d_same + 0.5 * d2, abs=1e-12)
    assert rad_loss(c, eye, region, valid, 1.0, "uniform").item() == pytest.approx((2 * d_same + d2) / 3, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weighting", ["region", "uniform"])
def test_matches_loop_reference(seed, weighting):
    rng = np.random.default_rng(seed)
    b, k, d = 3, 12, 6
    c = _unit(rng.normal(size=(b, k, d)))
    t = _unit(c + 0.7 * rng.normal(size=(b, k, d)))
    region = np.where(rng.random((b, k)) < 0.3, -1, rng.integers(0, 4, size=(b, k)) + 10 * np.arange(b)[:, None])
    valid = rng.random((b, k)) > 0.25
    valid[2] = False if seed % 2 else valid[2]  # a scan with no valid point is left out of the mean
    got = rad_loss(torch.from_numpy(c), torch.from_numpy(t), torch.from_numpy(region), torch.from_numpy(valid),
                   tau=0.2, weighting=weighting)
    assert got.item() == pytest.approx(ref_rad(c, t, region, valid, 0.2, weighting), rel=1e-10, abs=1e-12)


def test_region_weighting_is_rapc_of_student_against_teacher():
    """With region weighting, RAD is RAPC with the student as view 1 and the teacher as view 2 (same form)."""
    rng = np.random.default_rng(1)
    c, t = (torch.from_numpy(_unit(rng.normal(size=(2, 9, 4)))) for _ in range(2))
    region = torch.from_numpy(rng.integers(-1, 3, size=(2, 9)))
    valid = torch.from_numpy(rng.random((2, 9)) > 0.2)
    assert rad_loss(c, t, region, valid, 0.1, "region").item() == pytest.approx(
        rapc_loss(c, t, region, valid, 0.1).item(), rel=1e-12)


def test_region_weights_give_each_group_an_equal_share_uniform_weights_each_point():
    """Region weighting: each of the |R| groups (two regions and the semantic-less set) sums to 1/|R| whatever
    its size; uniform weighting: every valid point weighs 1/N."""
    from train.losses import region_weights

    region = torch.tensor([[0, 0, 0, 0, 1, -1]])
    valid = torch.ones(1, 6, dtype=torch.bool)
    w = region_weights(region, valid)
    assert torch.allclose(w[0, :4].sum(), torch.tensor(1 / 3)) and torch.allclose(w[0, 4], torch.tensor(1 / 3))
    u = uniform_weights(valid)
    assert torch.allclose(u, torch.full((1, 6), 1 / 6))


def test_gradients_and_empty_batch_and_errors():
    rng = np.random.default_rng(3)
    c = torch.from_numpy(_unit(rng.normal(size=(1, 5, 3)))).requires_grad_(True)
    t = torch.from_numpy(_unit(rng.normal(size=(1, 5, 3)))).requires_grad_(True)
    region = torch.zeros(1, 5, dtype=torch.long)
    rad_loss(c, t, region, torch.ones(1, 5, dtype=torch.bool)).backward()
    assert c.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    empty = rad_loss(c, t, region, torch.zeros(1, 5, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="weighting"):
        rad_loss(c, t, region, torch.ones(1, 5, dtype=torch.bool), weighting="size")
    with pytest.raises(ValueError, match="must both be"):
        rad_loss(c, t[:, :4], region, torch.ones(1, 5, dtype=torch.bool))
