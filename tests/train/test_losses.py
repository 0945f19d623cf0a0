"""PLRC and RAPC against explicit-loop references written from the formulas of METHOD.md section 2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from train.losses import plrc_loss, rapc_loss, region_weights


def _softmax_log(s_row: np.ndarray, cand: list[int], j: int) -> float:
    """log( exp(s_j) / sum_{k in cand} exp(s_k) ), written out."""
    return s_row[j] - math.log(sum(math.exp(s_row[k]) for k in cand))


def ref_plrc(z1, z2, region, valid, tau) -> float:
    per_scan = []
    for b in range(z1.shape[0]):
        cand = [k for k in range(z1.shape[1]) if valid[b, k]]
        anchors = [i for i in cand if region[b, i] >= 0]
        if not anchors:
            continue
        total = 0.0
        for i in anchors:
            s = np.array([float(np.dot(z1[b, i], z2[b, k])) / tau for k in range(z1.shape[1])])
            pos = [j for j in cand if region[b, j] == region[b, i]]
            total += -sum(_softmax_log(s, cand, j) for j in pos) / len(pos)
        per_scan.append(total / len(anchors))
    return float(np.mean(per_scan)) if per_scan else 0.0


def ref_rapc(z1, z2, region, valid, tau) -> float:
    per_scan = []
    for b in range(z1.shape[0]):
        cand = [k for k in range(z1.shape[1]) if valid[b, k]]
        if not cand:
            continue
        groups: dict[int, list[float]] = {}
        for i in cand:
            s = np.array([float(np.dot(z1[b, i], z2[b, k])) / tau for k in range(z1.shape[1])])
            groups.setdefault(int(region[b, i]), []).append(-_softmax_log(s, cand, i))
        per_scan.append(sum(sum(v) / len(v) for v in groups.values()) / len(groups))
    return float(np.mean(per_scan)) if per_scan else 0.0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_case(seed: int, b: int = 2, k: int = 14, d: int = 5, n_regions: int = 4, p_invalid: float = 0.2):
    rng = np.random.default_rng(seed)
    z1 = _unit(rng.normal(size=(b, k, d)))
    z2 = _unit(z1 + 0.5 * rng.normal(size=(b, k, d)))
    region = rng.integers(0, n_regions, size=(b, k)) + 100 * np.arange(b)[:, None]  # unique across scans
    region = np.where(rng.random((b, k)) < 0.3, -1, region)
    valid = rng.random((b, k)) >= p_invalid
    return z1, z2, region, valid


def _t(z1, z2, region, valid):
    return (torch.tensor(z1, dtype=torch.float64), torch.tensor(z2, dtype=torch.float64),
            torch.tensor(region, dtype=torch.int64), torch.tensor(valid))


def test_hand_case_known_value():
    # One scan, 4 points in 2-D: points 0, 1 in region 7, point 2 in region 3, point 3 semantic-less.
    z1 = np.array([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]]])
    z2 = np.array([[[0.8, 0.6], [1.0, 0.0], [0.0, -1.0], [-0.6, 0.8]]])
    region = np.array([[7, 7, 3, -1]])
    valid = np.ones((1, 4), bool)
    tau = 0.5
    s = np.einsum("id,kd->ik", z1[0], z2[0]) / tau
    lse = np.log(np.exp(s).sum(1))
    logp = s - lse[:, None]
    # PLRC by hand: anchors 0, 1 (positives {0, 1}), anchor 2 (positive {2}).
    plrc = -((logp[0, 0] + logp[0, 1]) / 2 + (logp[1, 0] + logp[1, 1]) / 2 + logp[2, 2]) / 3
    # RAPC by hand: groups {0, 1}, {2}, {3}, each counts 1/3.
    rapc = -((logp[0, 0] + logp[1, 1]) / 2 + logp[2, 2] + logp[3, 3]) / 3
    args = _t(z1, z2, region, valid)
    assert plrc_loss(*args, tau=tau).item() == pytest.approx(plrc, abs=1e-6)
    assert rapc_loss(*args, tau=tau).item() == pytest.approx(rapc, abs=1e-6)
    assert ref_plrc(z1, z2, region, valid, tau) == pytest.approx(plrc, abs=1e-9)
    assert ref_rapc(z1, z2, region, valid, tau) == pytest.approx(rapc, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_match_loop_reference(seed):
    z1, z2, region, valid = _random_case(seed)
    tau = 0.1
    args = _t(z1, z2, region, valid)
    assert plrc_loss(*args, tau=tau).item() == pytest.approx(ref_plrc(z1, z2, region, valid, tau), abs=1e-6)
    assert rapc_loss(*args, tau=tau).item() == pytest.approx(ref_rapc(z1, z2, region, valid, tau), abs=1e-6)


def test_float32_inputs_match_reference():
    z1, z2, region, valid = _random_case(11, b=3, k=30, d=16)
    args = [torch.tensor(a) for a in (z1.astype(np.float32), z2.astype(np.float32), region, valid)]
    assert plrc_loss(*args, tau=0.1).item() == pytest.approx(ref_plrc(z1, z2, region, valid, 0.1), abs=1e-4)
    assert rapc_loss(*args, tau=0.1).item() == pytest.approx(ref_rapc(z1, z2, region, valid, 0.1), abs=1e-4)


@pytest.mark.parametrize("loss", [plrc_loss, rapc_loss])
def test_invariant_to_permuting_sampled_points(loss):
    z1, z2, region, valid = _random_case(3, k=20)
    base = loss(*_t(z1, z2, region, valid)).item()
    perm = np.random.default_rng(0).permutation(20)
    assert loss(*_t(z1[:, perm], z2[:, perm], region[:, perm], valid[:, perm])).item() == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("loss", [plrc_loss, rapc_loss])
def test_invariant_to_relabelling_regions(loss):
    z1, z2, region, valid = _random_case(4, k=20)
    base = loss(*_t(z1, z2, region, valid)).item()
    ids = np.unique(region[region >= 0])
    new_ids = np.random.default_rng(1).permutation(10_000)[: ids.size] + 5
    mapping = dict(zip(ids.tolist(), new_ids.tolist()))
    relabelled = np.vectorize(lambda r: mapping.get(int(r), -1))(region)
    assert loss(*_t(z1, z2, relabelled, valid)).item() == pytest.approx(base, abs=1e-9)


def test_invalid_points_do_not_count():
    z1, z2, region, valid = _random_case(5, p_invalid=0.3)
    base = [f(*_t(z1, z2, region, valid)).item() for f in (plrc_loss, rapc_loss)]
    rng = np.random.default_rng(2)
    z1b, z2b = z1.copy(), z2.copy()
    z1b[~valid] = _unit(rng.normal(size=(int((~valid).sum()), z1.shape[2])))
    z2b[~valid] = _unit(rng.normal(size=(int((~valid).sum()), z1.shape[2])))
    regb = np.where(valid, region, rng.integers(-1, 3, size=region.shape))
    assert [f(*_t(z1b, z2b, regb, valid)).item() for f in (plrc_loss, rapc_loss)] == pytest.approx(base, abs=1e-9)


def test_region_weights_sum_as_intended():
    region = torch.tensor([[5, 5, 5, 5, 9, -1, -1, 2, 2, 2], [11, -1, -1, -1, 11, 11, 12, 12, 0, 0]])
    valid = torch.ones_like(region, dtype=torch.bool)
    valid[1, 8:] = False
    w = region_weights(region, valid)
    assert torch.allclose(w.sum(1), torch.ones(2, dtype=torch.float32))
    for b in range(2):
        groups = region[b][valid[b]].unique()
        for g in groups:
            assert w[b][(region[b] == g) & valid[b]].sum().item() == pytest.approx(1 / groups.numel())
    assert (w[~valid] == 0).all()
    # Growing a region (four more points of region 9) leaves every group's total weight unchanged.
    grown = torch.cat([region[:1], torch.full((1, 4), 9)], dim=1)
    w2 = region_weights(grown, torch.ones_like(grown, dtype=torch.bool))
    for g in (5, 9, -1, 2):
        assert w2[0][grown[0] == g].sum().item() == pytest.approx(w[0][region[0] == g].sum().item())


def test_rapc_one_point_per_region_is_plain_infonce():
    z1, z2, _, _ = _random_case(6, b=1, k=12)
    region = np.arange(12)[None]
    valid = np.ones((1, 12), bool)
    s = np.einsum("id,kd->ik", z1[0], z2[0]) / 0.1
    infonce = float(np.mean(np.log(np.exp(s).sum(1)) - np.diag(s)))
    assert rapc_loss(*_t(z1, z2, region, valid)).item() == pytest.approx(infonce, abs=1e-9)


def test_perfect_embeddings_beat_random():
    rng = np.random.default_rng(7)
    k, d = 32, 32
    region = np.repeat(np.arange(-1, 7), 4)[None]  # 8 groups of 4
    valid = np.ones((1, k), bool)
    # PLRC-perfect: one embedding per region, regions orthogonal, identical views.
    centres = np.eye(d)[: 8]
    z_region = centres[region[0] + 1][None]
    # RAPC-perfect: every point its own orthogonal direction, identical views.
    z_point = np.eye(d)[None]
    zr1, zr2 = _unit(rng.normal(size=(1, k, d))), _unit(rng.normal(size=(1, k, d)))
    tau = 0.05
    assert (plrc_loss(*_t(z_region, z_region, region, valid), tau=tau)
            < plrc_loss(*_t(zr1, zr2, region, valid), tau=tau))
    assert (rapc_loss(*_t(z_point, z_point, region, valid), tau=tau)
            < 1e-3 < rapc_loss(*_t(zr1, zr2, region, valid), tau=tau))


def test_degenerate_batches_give_zero_with_finite_gradients():
    z = torch.nn.functional.normalize(torch.randn(2, 6, 4, dtype=torch.float64), dim=-1).requires_grad_()
    region = torch.full((2, 6), -1)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1] = False
    loss = plrc_loss(z, z.detach(), region, valid)  # no semantic-rich anchor at all
    assert loss.item() == 0.0
    (loss + rapc_loss(z, z.detach(), region, valid)).backward()
    assert torch.isfinite(z.grad).all()
    # A fully invalid scan is left out of the mean, not counted as zero.
    z1, z2, reg, val = _random_case(8, b=2)
    val[1] = False
    one = _t(z1[:1], z2[:1], reg[:1], val[:1])
    assert rapc_loss(*_t(z1, z2, reg, val)).item() == pytest.approx(rapc_loss(*one).item(), abs=1e-12)
    assert plrc_loss(*_t(z1, z2, reg, val)).item() == pytest.approx(plrc_loss(*one).item(), abs=1e-12)


def test_bad_shapes_raise():
    z = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="region and valid"):
        plrc_loss(z, z, torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="tau"):
        rapc_loss(z, z, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), tau=0.0)


def test_losses_stay_float32_under_autocast():
    z1, z2, region, valid = _random_case(9, p_invalid=0.3)
    args = [torch.tensor(a) for a in (z1.astype(np.float32), z2.astype(np.float32), region, valid)]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = [f(*args, tau=0.1) for f in (plrc_loss, rapc_loss)]
    assert all(g.dtype == torch.float32 for g in got)
    assert got[0].item() == pytest.approx(ref_plrc(z1, z2, region, valid, 0.1), abs=1e-4)
    assert got[1].item() == pytest.approx(ref_rapc(z1, z2, region, valid, 0.1), abs=1e-4)
