"""train.data.det_targets and train.models.heads: CenterPoint targets on the BEV grid, the head's outputs, and
decoding (max-pool peaks, top-k, score threshold, class-wise NMS) back to the boxes the targets came from."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.errors import ConfigError
from train.data.det_targets import CenterHeadConfig, center_targets, draw_gaussian, gaussian_radius, regression_maps
from train.model_config import PointPillarsConfig
from train.models.heads import CenterHead, decode_boxes

CFG = CenterHeadConfig.of_backbone(PointPillarsConfig.small(), score_threshold=0.1)


def _boxes(rng, m):
    """m boxes on a jittered lattice (centres >= 3 m apart), random sizes, yaw and velocity."""
    xs = np.arange(-21.0, 21.0, 3.0)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    b = np.zeros((m, 9))
    b[:, :2] = grid[rng.choice(len(grid), m, replace=False)] + rng.uniform(-0.5, 0.5, (m, 2))
    b[:, 2] = rng.uniform(-2, 1, m)
    b[:, 3:6] = rng.uniform(0.4, 2.5, (m, 3))
    b[:, 6] = rng.uniform(-np.pi, np.pi, m)
    b[:, 7:9] = rng.uniform(-10, 10, (m, 2))
    return b


def test_head_config_on_the_backbone_grid():
    bb = PointPillarsConfig.small()
    assert CFG.grid_size == bb.out_size and CFG.cell == bb.out_cell and CFG.in_channels == bb.out_channels
    with pytest.raises(ConfigError, match="head.top_k"):
        CenterHeadConfig(top_k=501)
    with pytest.raises(ConfigError, match="head.cell"):
        CenterHeadConfig(cell=0.7)


def test_gaussian_radius_and_drawing():
    # CornerNet/CenterPoint: bigger boxes get bigger radii; a looser overlap a bigger radius
    assert gaussian_radius(2, 2, 0.1) < gaussian_radius(6, 6, 0.1)
    assert gaussian_radius(4, 4, 0.5) < gaussian_radius(4, 4, 0.1)
    hm = np.zeros((9, 9), np.float32)
    draw_gaussian(hm, 4, 4, 2)
    draw_gaussian(hm, 4, 6, 2)
    assert hm[4, 4] == hm[4, 6] == 1.0 and 0 < hm[4, 5] < 1 and hm[0, 0] == 0
    assert hm[4, 3] == pytest.approx(np.exp(-1 / (2 * (5 / 6) ** 2)))


def test_targets_hold_the_boxes():
    rng = np.random.default_rng(0)
    b = _boxes(rng, 20)
    b[0, :2] = (30.0, 0.0)  # outside the +-25.6 m map: skipped
    labels = rng.integers(0, 10, 20)
    valid = np.ones(20, bool)
    valid[1] = False
    t = center_targets(b, labels, CFG, valid)
    assert t.mask.sum() == 19 and t.mask[:19].all()
    h, w = CFG.grid_size
    row, col = t.ind[:19] // w, t.ind[:19] % w
    x0, y0 = CFG.point_range[:2]
    np.testing.assert_allclose(x0 + (col + t.reg[:19, 0]) * CFG.cell, b[1:, 0], atol=1e-4)
    np.testing.assert_allclose(y0 + (row + t.reg[:19, 1]) * CFG.cell, b[1:, 1], atol=1e-4)
    assert (t.reg[:19, :2] >= 0).all() and (t.reg[:19, :2] < 1).all()
    assert (t.heatmap[labels[1:], row, col] == 1).all()
    assert (t.reg_weight[0, 8:] == 0).all() and (t.reg_weight[0, :8] == 1).all() and (t.reg_weight[19:] == 0).all()
    few = center_targets(b, labels, CenterHeadConfig.of_backbone(PointPillarsConfig.small(), max_objects=5))
    assert few.mask.sum() == 5


def test_decode_gives_back_the_boxes():
    rng = np.random.default_rng(1)
    b = _boxes(rng, 40)
    labels = rng.integers(0, 10, 40)
    t = center_targets(b, labels, CFG)
    heat = torch.from_numpy(t.heatmap)[None]
    reg = torch.from_numpy(regression_maps(t, CFG.grid_size))[None]
    det = decode_boxes(heat, reg, CFG)[0]
    assert len(det.boxes) == 40 and (det.scores == 1).all()
    order = np.lexsort((det.boxes[:, 1].numpy(), det.boxes[:, 0].numpy()))
    ref = np.lexsort((b[:, 1], b[:, 0]))
    got = det.boxes.double().numpy()[order]
    np.testing.assert_allclose(got[:, :6], b[ref, :6], atol=1e-4)
    assert np.abs(np.angle(np.exp(1j * (got[:, 6] - b[ref, 6])))).max() < 1e-4
    np.testing.assert_allclose(got[:, 7:], b[ref, 7:], atol=1e-4)
    assert (det.labels.numpy()[order] == labels[ref]).all()
    # top_k caps the peaks; the score threshold drops weak ones
    assert len(decode_boxes(heat, reg, CenterHeadConfig.of_backbone(PointPillarsConfig.small(), top_k=7))[0].boxes) == 7
    assert len(decode_boxes(heat * 0.05, reg, CFG)[0].boxes) == 0


def test_nms_drops_a_duplicate_of_the_same_class_only():
    h, w = CFG.grid_size
    heat = torch.zeros(1, 10, h, w)
    reg = torch.zeros(1, 10, h, w)
    reg[0, 3:6] = np.log(4.0)  # 4 m cubes ...
    reg[0, 3:6, 30] = np.log(2.0)  # ... but 2 m ones on row 30
    reg[0, 7] = 1.0  # yaw 0
    # two cells (1.6 m) apart, beyond the 3x3 max-pool:
    heat[0, 0, 30, 30], heat[0, 0, 30, 32] = 0.9, 0.8  # two 2 m cars: BEV IoU 0.11, both kept at 0.2
    heat[0, 0, 40, 40], heat[0, 0, 40, 42] = 0.9, 0.8  # two 4 m cars: IoU 0.43, the weaker dropped
    heat[0, 1, 50, 50], heat[0, 2, 50, 52] = 0.9, 0.8  # a truck and a bus: different classes, both kept
    det = decode_boxes(heat, reg, CFG)[0]
    assert sorted(det.scores.tolist()) == pytest.approx([0.8, 0.8, 0.9, 0.9, 0.9])
    assert len(decode_boxes(heat, reg, CenterHeadConfig.of_backbone(PointPillarsConfig.small(), nms_iou=0))[0].boxes) == 6


def test_head_shapes_and_prior():
    head = CenterHead(CFG).eval()
    h, w = CFG.grid_size
    out = head(torch.randn(2, CFG.in_channels, h, w))
    assert out.heatmap.shape == (2, 10, h, w) and out.regression.shape == (2, 10, h, w)
    assert head.heatmap[-1].bias.detach().sigmoid().mean().item() == pytest.approx(0.1, abs=0.001)
    with pytest.raises(ValueError, match="CenterHead expects"):
        head(torch.randn(2, CFG.in_channels, h // 2, w))
    # the head and its losses learn: a few steps on one batch lower them
    from train.losses import center_l1_loss, gaussian_focal_loss

    torch.manual_seed(0)
    head = CenterHead(CFG).train()
    feats = torch.randn(1, CFG.in_channels, h, w)
    rng = np.random.default_rng(2)
    t = center_targets(_boxes(rng, 10), rng.integers(0, 10, 10), CFG)
    tt = {k: torch.from_numpy(getattr(t, k))[None] for k in ("heatmap", "ind", "mask", "cat", "reg", "reg_weight")}
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        out = head(feats)
        loss = (gaussian_focal_loss(out.heatmap, tt["heatmap"], tt["ind"], tt["cat"], tt["mask"])
                + center_l1_loss(out.regression, tt["ind"], tt["reg"], tt["reg_weight"]).sum() * 0.25)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
