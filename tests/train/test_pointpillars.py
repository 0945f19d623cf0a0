"""PointPillars: configuration checks, pillarisation + PFN against a per-point Python loop, output geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared.errors import ConfigError
from train.models.pointpillars import PointPillars, PointPillarsConfig


def tiny_cfg(**kw) -> PointPillarsConfig:
    base = {"point_range": (-2.0, -1.0, -1.0, 2.0, 1.0, 1.0), "pillar_size": 0.25, "pfn_channels": (6, 5),
                "layer_nums": (1, 1), "layer_strides": (1, 2), "layer_channels": (4, 8), "upsample_strides": (1.0, 2.0),
                "upsample_channels": (3, 3)}
    base.update(kw)
    return PointPillarsConfig(**base)


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)


def reference_canvas(model: PointPillars, points: np.ndarray, batch_idx: np.ndarray, batch_size: int) -> np.ndarray:
    """The PFN canvas built point by point: group points into pillars with a dict, decorate each point, run the
    layers on one point at a time (eval mode), max over the pillar, write the pillar's cell."""
    cfg = model.cfg
    x0, y0, z0, x1, y1, z1 = cfg.point_range
    ny, nx = cfg.grid_size
    pillars: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for p, b in zip(points, batch_idx):
        if not (x0 <= p[0] < x1 and y0 <= p[1] < y1 and z0 <= p[2] < z1 and np.isfinite(p[3])):
            continue
        ix, iy = math.floor((p[0] - x0) / cfg.pillar_size), math.floor((p[1] - y0) / cfg.pillar_size)
        pillars.setdefault((int(b), iy, ix), []).append(p)
    canvas = np.zeros((batch_size, cfg.pfn_channels[-1], ny, nx))
    with torch.no_grad():
        for (b, iy, ix), pts in pillars.items():
            mean = np.mean([q[:3] for q in pts], axis=0)
            cx, cy = x0 + (ix + 0.5) * cfg.pillar_size, y0 + (iy + 0.5) * cfg.pillar_size
            feats = [torch.tensor([*q[:4], *(q[:3] - mean), q[0] - cx, q[1] - cy], dtype=torch.float64)
                     for q in pts]
            pooled = None
            for k, layer in enumerate(model.pfn.layers):
                if k:
                    feats = [torch.cat([f, pooled]) for f in feats]
                feats = [layer(f[None].float())[0].double() for f in feats]
                pooled = torch.stack(feats).max(0).values
            canvas[b, :, iy, ix] = pooled.numpy()
    return canvas


def _random_points(n: int, seed: int, lo=(-2.5, -1.5, -1.5), hi=(2.5, 1.5, 1.5)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(lo, hi, size=(n, 3))
    return np.concatenate([xyz, rng.random((n, 1))], axis=1).astype(np.float32)


def test_pfn_canvas_matches_point_loop_reference():
    torch.manual_seed(0)
    model = PointPillars(tiny_cfg()).eval()
    _randomise_bn(model)
    pts = _random_points(300, 1)
    pts[::7, :2] = pts[::7, :2] * 0.1  # crowd a few pillars
    pts[5] = [np.nan, 0, 0, 1]
    pts[6] = [0.1, 0.2, 0.3, np.nan]
    bidx = np.random.default_rng(2).integers(0, 2, size=300)
    got = model.pfn(torch.from_numpy(pts), torch.from_numpy(bidx), 2).detach().numpy()
    want = reference_canvas(model, pts, bidx, 2)
    assert got.shape == (2, 5, 8, 16)
    assert (np.abs(want).sum(1) > 0).sum() > 50  # many non-empty pillars, so the comparison means something
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_pillar_grid_orientation():
    # One point in column 3 (x), row 1 (y) of scan 1: only that cell of scan 1 is non-zero.
    cfg = tiny_cfg()
    model = PointPillars(cfg).eval()
    last_bn = model.pfn.layers[-1][1]
    last_bn.weight.data.zero_()
    last_bn.bias.data.fill_(1.0)  # every non-empty pillar reads exactly 1
    x = cfg.point_range[0] + 3.5 * cfg.pillar_size
    y = cfg.point_range[1] + 1.2 * cfg.pillar_size
    canvas = model.pfn(torch.tensor([[x, y, 0.0, 0.5]]), torch.tensor([1]), 2).detach()
    assert torch.nonzero(canvas.abs().sum(1)).tolist() == [[1, 1, 3]]
    assert (canvas[1, :, 1, 3] == 1).all()


def test_out_of_range_points_change_nothing():
    model = PointPillars(tiny_cfg()).eval()
    pts = _random_points(100, 3, lo=(-1.9, -0.9, -0.9), hi=(1.9, 0.9, 0.9))
    bidx = np.zeros(100, dtype=np.int64)
    far = np.array([[5.0, 0, 0, 1], [0, 0, 3.0, 1], [-2.01, 0, 0, 1], [2.0, 0.0, 0.0, 1]], np.float32)
    with torch.no_grad():
        a = model(torch.from_numpy(pts), torch.from_numpy(bidx), 1)
        b = model(torch.from_numpy(np.concatenate([pts, far])), torch.from_numpy(np.zeros(104, np.int64)), 1)
    torch.testing.assert_close(a, b)


def test_no_points_gives_a_defined_map():
    model = PointPillars(tiny_cfg()).eval()
    with torch.no_grad():
        out = model(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2)
    assert out.shape == (2, 6, 8, 16) and torch.isfinite(out).all()


def test_small_config_shapes_and_gradients():
    cfg = PointPillarsConfig.small()
    assert cfg.grid_size == (128, 128) and cfg.out_size == (64, 64) and cfg.out_cell == pytest.approx(0.8)
    model = PointPillars(cfg)
    pts = torch.from_numpy(_random_points(3000, 4, lo=(-30, -30, -4), hi=(30, 30, 2)))
    bidx = torch.randint(0, 2, (3000,))
    out = model(pts, bidx, 2)
    assert out.shape == (2, cfg.out_channels, 64, 64) == (2, 96, 64, 64)
    out.square().mean().backward()
    assert model.pfn.layers[0][0].weight.grad.abs().sum() > 0
    assert model.backbone.blocks[0][0].weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_nuscenes_config_shapes():
    cfg = PointPillarsConfig()
    assert cfg.grid_size == (512, 512) and cfg.out_size == (128, 128) and cfg.out_channels == 384
    model = PointPillars(cfg).eval()
    pts = torch.from_numpy(_random_points(500, 5, lo=(-50, -50, -4), hi=(50, 50, 2)))
    with torch.no_grad():
        out = model(pts, torch.zeros(500, dtype=torch.long), 1)
    assert out.shape == (1, 384, 128, 128) and torch.isfinite(out).all()


def test_xy_to_grid_maps_pixel_centres_to_integers():
    cfg = PointPillarsConfig.small()
    model = PointPillars(cfg)
    x0, y0 = cfg.point_range[:2]
    xy = torch.tensor([[x0 + 0.5 * cfg.out_cell, y0 + 0.5 * cfg.out_cell],
                       [x0 + 10.5 * cfg.out_cell, y0 + 3.5 * cfg.out_cell], [x0, y0]])
    torch.testing.assert_close(model.xy_to_grid(xy), torch.tensor([[0.0, 0.0], [10.0, 3.0], [-0.5, -0.5]]))


@pytest.mark.parametrize("kw, field", [
    ({"pillar_size": 0.3}, "pillar_size"),
    ({"pillar_size": -1.0}, "pillar_size"),
    ({"point_range": (0, 0, 0, -1, 1, 1)}, "point_range"),
    ({"pfn_channels": ()}, "pfn_channels"),
    ({"layer_strides": (1,)}, "layer_strides"),
    ({"upsample_strides": (1.0, 1.0)}, "upsample_strides"),
    ({"upsample_strides": (1.0, 1.5)}, "upsample_strides"),
    ({"layer_strides": (1, 32), "upsample_strides": (1.0, 32.0)}, "layer_strides"),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        tiny_cfg(**kw)
    assert err.value.field == field


def test_lists_from_json_become_tuples():
    cfg = tiny_cfg(pfn_channels=[6, 5], point_range=[-2, -1, -1, 2, 1, 1])
    assert cfg == tiny_cfg() and hash(cfg) == hash(tiny_cfg())
    with pytest.raises(ConfigError) as err:
        tiny_cfg(layer_nums=3)
    assert err.value.field == "layer_nums"


def test_bad_inputs_raise():
    model = PointPillars(tiny_cfg())
    with pytest.raises(ValueError, match="points"):
        model(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="batch_idx"):
        model(torch.zeros(5, 4), torch.zeros(4, dtype=torch.long), 1)
