"""train.losses.focal and train.losses.l1 against slow, literal loops over cells and objects."""
from __future__ import annotations

import math

import pytest
import torch

from train.losses import center_l1_loss, gaussian_focal_loss


def _focal_reference(logits, target, ind, cat, mask):
    """CenterPoint's FastFocalLoss written cell by cell and object by object."""
    b, c, h, w = logits.shape
    neg, pos, n = 0.0, 0.0, 0
    for bi in range(b):
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    p = 1 / (1 + math.exp(-float(logits[bi, ci, i, j])))
                    neg += math.log(1 - p) * p ** 2 * (1 - float(target[bi, ci, i, j])) ** 4
        for k in range(ind.shape[1]):
            if mask[bi, k]:
                cell = int(ind[bi, k])
                p = 1 / (1 + math.exp(-float(logits[bi, int(cat[bi, k]), cell // w, cell % w])))
                pos += math.log(p) * (1 - p) ** 2
                n += 1
    return -(pos + neg) / max(1, n)


def _case(seed, n_obj=3):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w, k = 2, 3, 5, 6, 4
    logits = torch.randn(b, c, h, w, generator=g) * 2
    target = torch.rand(b, c, h, w, generator=g) * 0.9
    ind = torch.randint(0, h * w, (b, k), generator=g)
    cat = torch.randint(0, c, (b, k), generator=g)
    mask = torch.zeros(b, k, dtype=torch.bool)
    mask[0, :n_obj] = True
    for bi in range(b):
        for kk in range(k):
            if mask[bi, kk]:
                target[bi, cat[bi, kk], ind[bi, kk] // w, ind[bi, kk] % w] = 1.0
    return logits, target, ind, cat, mask


@pytest.mark.parametrize("seed, n_obj", [(0, 3), (1, 1), (2, 0)])
def test_focal_loss_matches_the_loop(seed, n_obj):
    args = _case(seed, n_obj)
    assert gaussian_focal_loss(*args).item() == pytest.approx(_focal_reference(*args), rel=1e-5)


def test_focal_loss_rewards_peaks_and_penalises_background():
    logits, target, ind, cat, mask = _case(0)
    base = gaussian_focal_loss(logits, target, ind, cat, mask)
    up = logits.clone()
    up[0, cat[0, 0], ind[0, 0] // 6, ind[0, 0] % 6] += 3.0  # more confident at an object's centre
    assert gaussian_focal_loss(up, target, ind, cat, mask) < base
    bg = logits.clone()
    bg[target < 0.05] += 3.0  # more confident far from every object
    assert gaussian_focal_loss(bg, target, ind, cat, mask) > base
    with pytest.raises(ValueError, match="expected logits"):
        gaussian_focal_loss(logits, target[:, :2], ind, cat, mask)


def test_l1_loss_matches_the_loop():
    g = torch.Generator().manual_seed(3)
    b, d, h, w, k = 2, 10, 4, 5, 6
    reg = torch.randn(b, d, h, w, generator=g)
    ind = torch.randint(0, h * w, (b, k), generator=g)
    target = torch.randn(b, k, d, generator=g)
    weight = torch.zeros(b, k, d)
    weight[0, :4] = 1.0
    weight[1, :2] = 1.0
    weight[1, 1, 8:] = 0.0  # an object without a velocity
    got = center_l1_loss(reg, ind, target, weight)
    ref = torch.zeros(d)
    for bi in range(b):
        for kk in range(k):
            cell = int(ind[bi, kk])
            for di in range(d):
                ref[di] += weight[bi, kk, di] * abs(reg[bi, di, cell // w, cell % w] - target[bi, kk, di])
    torch.testing.assert_close(got, ref / (6 + 1e-4), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected regression"):
        center_l1_loss(reg, ind, target[:, :, :3], weight)
