"""PRC model: bilinear BEV reading, the batch contract with train.data, symmetry, gradients, a short overfit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shared import augment_params
from shared.errors import ConfigError
from train.bev import in_range, sample_bev, sample_bev_batched
from train.losses import plrc_loss, rapc_loss
from train.models.pointpillars import PointPillars, PointPillarsConfig
from train.tasks.prc import PRCConfig, PRCModel

RANGE = (0.0, 0.0, -1.0, 2.0, 2.0, 1.0)  # a 2 m square; a 2x2 map has 1 m cells centred at 0.5 and 1.5


def test_bilinear_hand_computed():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])  # f[row=y][col=x]
    xy = torch.tensor([[[0.5, 0.5], [1.5, 0.5], [1.0, 0.5], [0.75, 1.25], [1.0, 1.0]]])
    got = sample_bev_batched(f, xy, RANGE)[0, :, 0]
    # (0.75, 1.25): u = 0.25, v = 0.75 from pixel (0, 0).
    want = [1.0, 2.0, 1.5, 0.75 * 0.25 * 1 + 0.25 * 0.25 * 2 + 0.75 * 0.75 * 3 + 0.25 * 0.75 * 5,
            (1 + 2 + 3 + 5) / 4]
    torch.testing.assert_close(got, torch.tensor(want))


def test_bilinear_reproduces_a_linear_map_and_matches_xy_to_grid():
    cfg = PointPillarsConfig.small()
    model = PointPillars(cfg)
    h, w = cfg.out_size
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    f = torch.stack([3 * cols - 2 * rows + 1, cols + 0.5 * rows])[None].repeat(2, 1, 1, 1)  # (2, 2, H, W)
    rng = np.random.default_rng(0)
    lo = np.array(cfg.point_range[:2]) + cfg.out_cell
    xy = torch.from_numpy(rng.uniform(lo, -lo, size=(2, 50, 2)))  # interior: no border clamping
    got = sample_bev_batched(f, xy, cfg.point_range)
    uv = model.xy_to_grid(xy)
    want = torch.stack([3 * uv[..., 0] - 2 * uv[..., 1] + 1, uv[..., 0] + 0.5 * uv[..., 1]], dim=-1)
    torch.testing.assert_close(got, want)
    bidx = torch.from_numpy(rng.integers(0, 2, size=50))
    flat = sample_bev(f, xy[0], bidx, cfg.point_range)
    torch.testing.assert_close(flat, want[0])  # both scans hold the same map
    assert in_range(torch.tensor([[0.0, 0.0], [2.0, 1.0], [float("nan"), 1.0]]), RANGE).tolist() == [True, False,
                                                                                                   False]


def make_batch(seed: int, cfg: PRCConfig, b: int = 2, points_per_scan: int = 1000, n_regions: int = 6):
    """Synthetic batch in the train.data contract: regions are blobs; view 1 is view 0 rotated and scaled."""
    rng = np.random.default_rng(seed)
    half = cfg.backbone.point_range[3] * 0.7
    pts, bidx, reg, samples = [], [], [], []
    offset = 0
    for s in range(b):
        centres = rng.uniform(-half, half, size=(n_regions, 2))
        lab = rng.integers(-1, n_regions, size=points_per_scan)
        xy = np.where(lab[:, None] >= 0, centres[np.maximum(lab, 0)] + rng.normal(0, 0.6, (points_per_scan, 2)),
                      rng.uniform(-half, half, (points_per_scan, 2)))
        z = np.where(lab >= 0, rng.uniform(-1, 1, points_per_scan), rng.uniform(-2, -1.5, points_per_scan))
        pts.append(np.column_stack([xy, z, rng.random(points_per_scan)]))
        bidx.append(np.full(points_per_scan, s))
        reg.append(np.where(lab >= 0, lab + 100 * s, -1))
        rich, less = np.flatnonzero(lab >= 0), np.flatnonzero(lab < 0)
        samples.append(np.concatenate([rng.choice(rich, cfg.n_rich), rng.choice(less, cfg.n_less)]) + offset)
        offset += points_per_scan
    p0 = np.concatenate(pts).astype(np.float32)
    view = np.array([rng.uniform(-np.pi / 2, np.pi / 2), rng.uniform(0.9, 1.1), 0, 0, 0, 0, 0], np.float32)
    p1 = augment_params.apply(p0, view).astype(np.float32)
    return {"points": torch.from_numpy(np.stack([p0, p1])), "batch_idx": torch.from_numpy(np.concatenate(bidx)),
            "region": torch.from_numpy(np.concatenate(reg)), "sample_idx": torch.from_numpy(np.stack(samples)),
            "sample_valid": torch.ones(b, cfg.n_samples, dtype=torch.bool), "batch_size": b}


TINY = PointPillarsConfig(point_range=(-12.8, -12.8, -3.0, 12.8, 12.8, 3.0), pillar_size=0.4, pfn_channels=(16, 16),
                          layer_nums=(1, 1), layer_strides=(2, 2), layer_channels=(16, 32),
                          upsample_strides=(1.0, 2.0), upsample_channels=(16, 16))


def tiny_prc(**kw) -> PRCConfig:
    return PRCConfig(backbone=TINY, n_rich=64, n_less=64, proj_hidden=32, proj_out=16, **kw)


def test_forward_contract_and_combination():
    cfg = tiny_prc(alpha=0.3)
    torch.manual_seed(0)
    model = PRCModel(cfg)
    out = model(make_batch(0, cfg))
    assert set(out) == {"loss", "plrc", "rapc"}
    assert all(v.shape == () and torch.isfinite(v) for v in out.values())
    assert out["loss"].item() == pytest.approx(0.3 * out["plrc"].item() + 0.7 * out["rapc"].item(), rel=1e-6)
    # Symmetrised: the mean of both directions of the directional losses on the same embeddings.
    model.eval()
    batch = make_batch(1, cfg)
    z0, z1, region, valid = model.embed(batch)
    with torch.no_grad():
        out = model(batch)
    want = 0.5 * (plrc_loss(z0, z1, region, valid, cfg.tau) + plrc_loss(z1, z0, region, valid, cfg.tau))
    assert out["plrc"].item() == pytest.approx(want.item(), rel=1e-5)
    want = 0.5 * (rapc_loss(z0, z1, region, valid, cfg.tau) + rapc_loss(z1, z0, region, valid, cfg.tau))
    assert out["rapc"].item() == pytest.approx(want.item(), rel=1e-5)


def test_swapping_views_gives_the_same_loss():
    cfg = tiny_prc()
    torch.manual_seed(1)
    model = PRCModel(cfg)
    batch = make_batch(2, cfg)
    swapped = dict(batch, points=batch["points"].flip(0))
    a, b = model(batch), model(swapped)
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-5)


def test_invalid_samples_and_out_of_range_points_are_ignored():
    cfg = tiny_prc()
    torch.manual_seed(2)
    model = PRCModel(cfg).eval()
    batch = make_batch(3, cfg)
    valid = batch["sample_valid"].clone()
    valid[:, ::5] = False
    with torch.no_grad():
        base = model(dict(batch, sample_valid=valid))
        other_idx = batch["sample_idx"].clone()
        other_idx[~valid] = 0  # invalid entries may point anywhere (or outside [0, P))
        other_idx[0, 0] = -7
        again = model(dict(batch, sample_valid=valid, sample_idx=other_idx))
    for k in base:
        assert base[k].item() == pytest.approx(again[k].item(), rel=1e-6)
    # A sampled point outside the map in one view is dropped from the losses.
    pts = batch["points"].clone()
    i = int(batch["sample_idx"][1, 3])
    pts[1, i, 0] = 1e3
    _, _, _, v = model.embed(dict(batch, points=pts))
    assert not v[1, 3] and v[1, 4] and v[0].all()


@pytest.mark.slow
def test_gradients_reach_the_backbone_and_a_short_overfit_lowers_the_loss():
    cfg = tiny_prc()
    torch.manual_seed(3)
    model = PRCModel(cfg)
    batch = make_batch(4, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        opt.zero_grad()
        out = model(batch)
        out["loss"].backward()
        if step == 0:
            for p in (model.backbone.pfn.layers[0][0].weight, model.backbone.backbone.blocks[0][0].weight,
                      model.head.mlp[0].weight):
                assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_backbone_is_a_reusable_pointpillars():
    model = PRCModel(tiny_prc())
    assert isinstance(model.backbone, PointPillars)
    assert model.backbone.cfg == TINY
    assert PRCModel(PRCConfig.small()).backbone.cfg == PointPillarsConfig.small()


@pytest.mark.parametrize("kw, field", [({"alpha": 1.5}, "alpha"), ({"tau": 0.0}, "tau"),
                                       ({"proj_out": 0}, "proj_out"), ({"n_rich": 2.5}, "n_rich")])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        PRCConfig(**kw)
    assert err.value.field == field


def test_bad_batch_raises():
    cfg = tiny_prc()
    batch = make_batch(5, cfg, b=1, points_per_scan=300)
    with pytest.raises(ValueError, match="points"):
        PRCModel(cfg)(dict(batch, points=batch["points"][0]))
    with pytest.raises(ValueError, match="sample_idx"):
        PRCModel(cfg)(dict(batch, batch_size=2))
