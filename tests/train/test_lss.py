"""LSS view transform: frustum and image-augmentation conventions, the geometry against the store's own
projections, the splat against a per-point Python loop, gradients, the BEV cell convention, grid matching."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared import augment_params
from shared.errors import ConfigError
from train import bev
from train.model_config import CameraConfig, LSSConfig, PointPillarsConfig
from train.models import lss as lss_mod
from train.models.lss import LSSViewTransform, check_grid_matches, depth_bin_centres, frustum, image_to_bev, splat


def synthetic_rig(batch: int, image_size: tuple[int, int], n_cams: int = 6, height: float = 1.6,
                  focal: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(K (B, C, 3, 3), lidar2cam (B, C, 4, 4)) float32 of ``n_cams`` cameras at ``height`` m looking outwards
    at evenly spaced yaws (camera: x right, y down, z forward; LiDAR: x forward, y left, z up)."""
    h, w = image_size
    f = focal if focal is not None else 0.5 * w
    k = torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    l2c = []
    for c in range(n_cams):
        yaw = 2 * math.pi * c / n_cams
        fwd = [math.cos(yaw), math.sin(yaw), 0.0]
        right = [math.sin(yaw), -math.cos(yaw), 0.0]
        down = [0.0, 0.0, -1.0]
        cam2lidar = torch.eye(4, dtype=torch.float64)
        cam2lidar[:3, :3] = torch.tensor([right, down, fwd], dtype=torch.float64).T
        cam2lidar[:3, 3] = torch.tensor([0.5 * fwd[0], 0.5 * fwd[1], height])
        l2c.append(torch.linalg.inv(cam2lidar))
    k = k.expand(batch, n_cams, 3, 3).float().contiguous()
    return k, torch.stack(l2c).expand(batch, n_cams, 4, 4).float().contiguous()


def img_aug_matrix(scale: float = 1.0, crop: tuple[float, float] = (0.0, 0.0), flip: bool = False,
                   rotate_deg: float = 0.0, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """A (3, 3) float64 img_aug in the pixel-centres-at-integers convention (as train.data.camera): resize by
    ``scale``, crop at ``crop`` (x0, y0), flip the ``out_size`` (H, W) result, rotate it about its centre."""
    m = np.array([[scale, 0.0, 0.5 * scale - 0.5 - crop[0]], [0.0, scale, 0.5 * scale - 0.5 - crop[1]],
                  [0.0, 0.0, 1.0]])
    if flip:
        m = np.array([[-1.0, 0.0, out_size[1] - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    if rotate_deg:
        c, s = math.cos(math.radians(rotate_deg)), math.sin(math.radians(rotate_deg))
        cx, cy = (out_size[1] - 1) / 2.0, (out_size[0] - 1) / 2.0
        to_c = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
        back = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
        m = back @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]) @ to_c @ m  # CCW as displayed (y down)
    return m


# ----------------------------------------------------------------------------------------------- conventions

def test_frustum_pixel_centres_and_depth_bin_centres():
    cam = CameraConfig.small()  # 96x256, stride 8
    cfg = LSSConfig()  # 1-60 m at 0.5 m
    f = frustum(cam, cfg)
    assert f.shape == (118, 12, 32, 3) and f.dtype == torch.float32
    assert torch.allclose(f[0, 0, 0], torch.tensor([3.5, 3.5, 1.25]))  # input pixel centres at integers
    assert torch.allclose(f[-1, -1, -1], torch.tensor([251.5, 91.5, 59.75]))
    assert torch.allclose(f[3, 2, 5], torch.tensor([5.5 * 8 - 0.5, 2.5 * 8 - 0.5, 1.0 + 3.5 * 0.5]))
    d = depth_bin_centres(cfg)
    assert d.shape == (cfg.num_bins,) and d[0] == 1.25 and torch.all(d[1:] - d[:-1] == 0.5)


def test_frustum_centre_is_the_mean_input_pixel_of_its_window():
    """With input pixel centres at integers, a stride-8 feature pixel's (u, v) is the mean (column, row) of the
    input pixels it pools, and what an align_corners=False downscale samples."""
    cam = CameraConfig.small()
    h, w = cam.image_size
    cols = torch.arange(w, dtype=torch.float64).expand(1, 1, h, w)
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(1, 1, h, w)
    f = frustum(cam, LSSConfig()).double()
    for coord, plane in ((0, cols), (1, rows)):
        assert torch.allclose(f[0, ..., coord], torch.nn.functional.avg_pool2d(plane, 8)[0, 0])
        resized = torch.nn.functional.interpolate(plane, scale_factor=1 / 8, mode="bilinear", align_corners=False)
        assert torch.allclose(f[0, ..., coord], resized[0, 0])


def test_local_img_aug_helper_convention():
    def ap(m, u, v):
        return (m @ np.array([u, v, 1.0]))[:2]

    m = img_aug_matrix(0.5, crop=(10, 20))
    assert np.allclose(ap(m, -0.5, -0.5), [-10.5, -20.5]) and np.allclose(ap(m, 0.5, 1.5), [-10, -19.5])
    assert np.allclose(ap(img_aug_matrix(1.0, flip=True, out_size=(100, 300)), 0, 7), [299, 7])
    m = img_aug_matrix(1.0, rotate_deg=90, out_size=(101, 301))
    assert np.allclose(ap(m, 150, 50), [150, 50]) and np.allclose(ap(m, 160, 50), [150, 40])  # CCW on screen


def test_local_img_aug_helper_agrees_with_the_camera_stream():
    """The convention the frustum assumes is the one train.data.camera builds img_aug in (skipped without it)."""
    camera_data = pytest.importorskip("train.data.camera")
    image_aug = getattr(camera_data, "ImageAug", None)
    if image_aug is None:
        pytest.skip("train.data.camera has no ImageAug")
    for flip, rot in ((False, 0.0), (True, 0.0), (True, 4.5)):
        aug = image_aug(width=1600, height=900, new_w=800, new_h=450, crop_w=48, crop_h=194, flip=flip, rotate=rot)
        assert np.allclose(aug.matrix((256, 704)), img_aug_matrix(0.5, (48, 194), flip, rot, (256, 704)))


# ---------------------------------------------------------------------------------------------- geometry

def test_image_to_bev_against_numpy_chain():
    rng = np.random.default_rng(0)
    k, l2c = synthetic_rig(2, (64, 128), n_cams=3)
    aug = torch.tensor(np.stack([[img_aug_matrix(rng.uniform(0.5, 2), rng.uniform(0, 9, 2), bool(rng.integers(2)),
                                                 rng.uniform(-10, 10), (64, 128)) for _ in range(3)]
                                 for _ in range(2)]), dtype=torch.float32)
    bev_aug = torch.tensor(np.stack([augment_params.as_matrix(np.array([rng.uniform(-3, 3), rng.uniform(0.9, 1.1),
                                                                        1, 0, 0.3, -0.2, 0.1], np.float32))
                                     for _ in range(2)]), dtype=torch.float32)
    uvd = torch.tensor(np.column_stack([rng.uniform(0, 128, 20), rng.uniform(0, 64, 20), rng.uniform(1, 50, 20)]),
                       dtype=torch.float32).reshape(4, 5, 3)
    out = image_to_bev(uvd, k, aug, l2c, bev_aug)
    assert out.shape == (2, 3, 4, 5, 3) and out.dtype == torch.float32
    for b in range(2):
        for c in range(3):
            for p, (u, v, d) in enumerate(uvd.reshape(-1, 3).double().numpy()):
                orig = np.linalg.inv(aug[b, c].double().numpy()) @ [u, v, 1.0]
                cam = d * np.linalg.inv(k[b, c].double().numpy()) @ (orig / orig[2])
                lidar = np.linalg.inv(l2c[b, c].double().numpy()) @ [*cam, 1.0]
                ref = (bev_aug[b].double().numpy() @ lidar)[:3]
                assert np.allclose(out[b, c].reshape(-1, 3)[p].numpy(), ref, atol=1e-3), (b, c, p)


def test_image_to_bev_rejects_bad_shapes():
    k, l2c = synthetic_rig(1, (64, 128), n_cams=2)
    eye3 = torch.eye(3).expand(1, 2, 3, 3)
    with pytest.raises(ValueError, match="bev_aug"):
        image_to_bev(torch.zeros(5, 3), k, eye3, l2c, torch.eye(4).expand(2, 4, 4))
    with pytest.raises(ValueError, match="uvd"):
        image_to_bev(torch.zeros(5, 2), k, eye3, l2c, torch.eye(4)[None])
    with pytest.raises(ValueError, match="img_aug"):
        image_to_bev(torch.zeros(5, 3), k, torch.eye(3).expand(1, 3, 3, 3), l2c, torch.eye(4)[None])


def _cells(xyz: np.ndarray, cfg: LSSConfig) -> np.ndarray:
    """(N, 3) -> (N,) flat cell ``row * nx + col`` in PointPillars' convention, -1 outside point_range."""
    x0, y0, z0, x1, y1, z1 = cfg.point_range
    ny, nx = cfg.grid_size
    inside = ((xyz[:, 0] >= x0) & (xyz[:, 0] < x1) & (xyz[:, 1] >= y0) & (xyz[:, 1] < y1)
              & (xyz[:, 2] >= z0) & (xyz[:, 2] < z1))
    ix = np.floor((xyz[:, 0] - x0) / cfg.cell).astype(np.int64)
    iy = np.floor((xyz[:, 1] - y0) / cfg.cell).astype(np.int64)
    return np.where(inside, iy * nx + ix, -1)


def _boundary_distance(xyz: np.ndarray, cfg: LSSConfig) -> np.ndarray:
    """(N,) distance of each point to the nearest cell boundary in x or y, or range boundary in z."""
    x0, y0, z0, _, _, z1 = cfg.point_range
    fx = np.abs(((xyz[:, 0] - x0) / cfg.cell + 0.5) % 1.0 - 0.5) * cfg.cell
    fy = np.abs(((xyz[:, 1] - y0) / cfg.cell + 0.5) % 1.0 - 0.5) * cfg.cell
    fz = np.minimum(np.abs(xyz[:, 2] - z0), np.abs(xyz[:, 2] - z1))
    return np.minimum(np.minimum(fx, fy), fz)


def test_image_to_bev_matches_store_projections(train_store):
    """The key geometry test: the store's own (uv, depth) pairs, pushed through a random image augmentation and
    back through image_to_bev with the stored view-0 augmentation, land on the stored points of that view."""
    from data_catalog.reader import open_version

    store, vid = train_store
    v = open_version(store, vid)
    sh = v.scene(v.scenes()[0])
    cfg = LSSConfig.matching(PointPillarsConfig())  # +-51.2 m, cell 0.8 m
    rng = np.random.default_rng(0)
    n_checked = 0
    for i in range(len(sh)):
        sw = sh.sweep(i)
        intr, l2c = sw.raw["cam_intrinsic"], sw.raw["cam_lidar2cam"]
        n_cams = intr.shape[0]
        cam = sw.raw["proj_cam"].astype(np.int64)
        assert n_cams == 6 and set(np.unique(cam)) == set(range(6))
        w, h = (int(s) for s in sw.raw["cam_size"][0])
        aug = np.stack([img_aug_matrix(rng.uniform(0.6, 1.8), rng.uniform(0, 40, 2), bool(rng.integers(2)),
                                       rng.uniform(-5.4, 5.4), (h, w)) for _ in range(n_cams)])
        uv1 = np.column_stack([sw.uv.astype(np.float64), np.ones(len(cam))])
        uv_in = np.einsum("pij,pj->pi", aug[cam], uv1)[:, :2]
        uvd = torch.tensor(np.column_stack([uv_in, sw.depth]), dtype=torch.float32)
        view = sw.aug_params[0]
        out = image_to_bev(uvd, torch.from_numpy(intr).float()[None], torch.from_numpy(aug).float()[None],
                           torch.from_numpy(l2c).float()[None],
                           torch.from_numpy(augment_params.as_matrix(view)).float()[None])
        assert out.shape == (1, n_cams, len(cam), 3)
        got = out[0, torch.from_numpy(cam), torch.arange(len(cam))].numpy().astype(np.float64)
        ref = augment_params.apply(sw.xyz[sw.raw["proj_point"]], view).astype(np.float64)
        # Bound of the stored quantisation (uv 1/8 px, depth 1 cm, xyz 1 cm; half a step each): xyz sqrt(3) * 5 mm,
        # depth 5 mm along a ray of length <= 1.2, uv sqrt(2) / 16 px at depth d (1.9 cm at 97 m for the tiny
        # set's 317 px focal); all times the view's scale.
        f = intr[cam, 0, 0].astype(np.float64)
        tol = float(view[1]) * (0.0087 + 0.006 + np.sqrt(2) * 0.5 * sw.uv_scale * sw.depth.astype(np.float64) / f)
        err = np.linalg.norm(got - ref, axis=1)
        assert np.all(err <= tol), f"sweep {i}: max error {err.max():.4f} m, worst ratio {(err / tol).max():.2f}"
        assert np.median(err) < 0.01
        for c in range(n_cams):  # every camera gets it right, not just the average
            assert np.percentile(err[cam == c], 90) < 0.02, c
        # The same BEV cell (and the same in/out decision) away from boundaries the quantisation can cross.
        far = _boundary_distance(ref, cfg) > tol
        assert np.array_equal(_cells(got[far], cfg), _cells(ref[far], cfg))
        assert far.mean() > 0.8 and (_cells(ref[far], cfg) >= 0).sum() > 1000
        n_checked += int(far.sum())
    assert n_checked > 30000


# -------------------------------------------------------------------------------------------------- splat

def _small_lss(**kw) -> LSSConfig:
    base = {"depth_bins": (1.0, 5.0, 1.0), "channels": 6, "point_range": (-2.0, -1.0, -1.0, 2.0, 1.5, 1.0),
            "cell": 0.5, "bev_channels": 4}
    base.update(kw)
    return LSSConfig(**base)


def _random_splat_inputs(seed: int = 0, dtype=torch.float32, b=2, c=3, d=4, h=3, w=5, cc=6):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(b, c, d, h, w, generator=g, dtype=dtype).softmax(2)
    context = torch.randn(b, c, cc, h, w, generator=g, dtype=dtype)
    lo = torch.tensor([-2.6, -1.5, -1.4], dtype=dtype)  # 15-25 % outside the range in each axis
    hi = torch.tensor([2.6, 2.0, 1.4], dtype=dtype)
    xyz = lo + (hi - lo) * torch.rand(b, c, d, h, w, 3, generator=g, dtype=dtype)
    valid = torch.ones(b, c, dtype=torch.bool)
    valid[-1, -1] = False
    return depth, context, xyz, valid


def reference_splat(depth: np.ndarray, context: np.ndarray, xyz: np.ndarray, valid: np.ndarray,
                    cfg: LSSConfig) -> np.ndarray:
    """Point by point: skip invalid cameras and points outside the range, add depth * context to its cell."""
    b, c, d, h, w = depth.shape
    ny, nx = cfg.grid_size
    x0, y0, z0, x1, y1, z1 = cfg.point_range
    out = np.zeros((b, context.shape[2], ny, nx))
    for bi in range(b):
        for ci in range(c):
            if not valid[bi, ci]:
                continue
            for di in range(d):
                for i in range(h):
                    for j in range(w):
                        x, y, z = (float(t) for t in xyz[bi, ci, di, i, j])
                        if not (x0 <= x < x1 and y0 <= y < y1 and z0 <= z < z1):
                            continue
                        col, row = math.floor((x - x0) / cfg.cell), math.floor((y - y0) / cfg.cell)
                        out[bi, :, row, col] += depth[bi, ci, di, i, j] * context[bi, ci, :, i, j]
    return out


def test_splat_matches_reference_loop():
    cfg = _small_lss()
    depth, context, xyz, valid = _random_splat_inputs()
    got = splat(depth, context, xyz, valid, cfg)
    assert got.shape == (2, 6, 5, 8)  # (B, Cc, ny, nx): y covers 2.5 m, x 4 m at 0.5 m
    ref = reference_splat(depth.numpy(), context.numpy(), xyz.numpy(), valid.numpy(), cfg)
    assert np.allclose(got.numpy(), ref, atol=1e-5)
    x, y, z = xyz.unbind(-1)
    outside = (x < -2) | (x >= 2) | (y < -1) | (y >= 1.5) | (z < -1) | (z >= 1)
    assert 0.3 < outside.float().mean() < 0.8  # the test does exercise the dropping
    # An invalid camera contributes nothing; with all cameras valid the map changes.
    all_valid = splat(depth, context, xyz, None, cfg)
    ref_all = reference_splat(depth.numpy(), context.numpy(), xyz.numpy(), np.ones((2, 3), bool), cfg)
    assert np.allclose(all_valid.numpy(), ref_all, atol=1e-5) and not np.allclose(ref_all, ref)
    only_invalid = valid.clone()
    only_invalid[:] = False
    assert torch.count_nonzero(splat(depth, context, xyz, only_invalid, cfg)) == 0


def test_splat_chunking_is_exact(monkeypatch):
    cfg = _small_lss()
    depth, context, xyz, valid = _random_splat_inputs(seed=1, dtype=torch.float64)
    for t in (depth, context):
        t.requires_grad_(True)
    gout = torch.randn(2, 6, 5, 8, dtype=torch.float64)
    one = splat(depth, context, xyz, valid, cfg)
    g_one = torch.autograd.grad((one * gout).sum(), (depth, context))
    monkeypatch.setattr(lss_mod, "SPLAT_CHUNK_ELEMENTS", 13)  # chunks of 2 points
    many = splat(depth, context, xyz, valid, cfg)
    g_many = torch.autograd.grad((many * gout).sum(), (depth, context))
    assert torch.allclose(one, many)
    assert all(torch.allclose(a, b) for a, b in zip(g_one, g_many))


def test_splat_gradcheck():
    cfg = _small_lss()
    depth, context, xyz, valid = _random_splat_inputs(seed=2, dtype=torch.float64, b=1, c=2, d=3, h=2, w=3, cc=2)
    depth.requires_grad_(True)
    context.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda dd, cc: splat(dd, cc, xyz, valid, cfg), (depth, context))
    # No gradient reaches an invalid camera.
    valid[0, 1] = False
    splat(depth, context, xyz, valid, cfg).square().sum().backward()
    assert torch.count_nonzero(context.grad[0, 1]) == 0 and torch.count_nonzero(depth.grad[0, 1]) == 0
    assert torch.count_nonzero(context.grad[0, 0]) > 0 and torch.count_nonzero(depth.grad[0, 0]) > 0


def test_splat_cell_convention_matches_sample_bev():
    """A point splatted at metric (x, y) is read back by train.bev.sample_bev_batched at the same cell's centre:
    row = y, column = x, as PointPillars."""
    cfg = _small_lss(channels=1)
    ny, nx = cfg.grid_size
    pts = torch.tensor([[-1.9, -0.9, 0.0], [1.3, 0.7, 0.5], [0.26, -0.49, -0.9], [1.99, 1.49, 0.99]])
    n = len(pts)
    xyz = pts.reshape(1, 1, n, 1, 1, 3)
    depth = torch.ones(1, 1, n, 1, 1)
    context = torch.ones(1, 1, 1, 1, 1)
    m = splat(depth, context, xyz, None, cfg)  # (1, 1, ny, nx)
    assert m.sum() == n
    centres = torch.stack([cfg.point_range[0] + (torch.floor((pts[:, 0] - cfg.point_range[0]) / cfg.cell) + 0.5)
                           * cfg.cell,
                           cfg.point_range[1] + (torch.floor((pts[:, 1] - cfg.point_range[1]) / cfg.cell) + 0.5)
                           * cfg.cell], dim=1)
    read = bev.sample_bev_batched(m, centres[None], cfg.point_range)[0, :, 0]
    assert torch.allclose(read, torch.ones(n))
    assert m[0, 0, 0, 0] == 1 and m[0, 0, ny - 1, nx - 1] == 1  # (x0, y0) corner is row 0, column 0
    assert m[0, 0, 1, 4] == 1 and m[0, 0, 3, 6] == 1  # (0.26, -0.49): row 1 (y), column 4 (x)


def test_splat_rejects_bad_shapes():
    cfg = _small_lss()
    depth, context, xyz, valid = _random_splat_inputs()
    with pytest.raises(ValueError, match="xyz"):
        splat(depth, context, xyz[..., :2], valid, cfg)
    with pytest.raises(ValueError, match="cam_valid"):
        splat(depth, context, xyz, valid[:, :2], cfg)


# ------------------------------------------------------------------------------------------ view transform

def test_view_transform_gradients_reach_features_and_depth_net():
    cam = CameraConfig(backbone="resnet18", out_indices=(2, 3, 4), image_size=(64, 128), neck_channels=8)
    cfg = LSSConfig(depth_bins=(1.0, 20.0, 1.0), channels=5, point_range=(-20.0, -20.0, -4.0, 20.0, 20.0, 4.0),
                    cell=1.0, bev_channels=6)
    vt = LSSViewTransform(cam, cfg, in_channels=8)
    k, l2c = synthetic_rig(2, cam.image_size)
    aug = torch.eye(3).expand(2, 6, 3, 3)
    bev_aug = torch.eye(4).expand(2, 4, 4)
    feats = torch.randn(2, 6, 8, 8, 16, requires_grad=True)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, 3] = False
    out = vt(feats, k, aug, l2c, bev_aug, valid)
    assert out.shape == (2, 6, 40, 40)
    pooled = vt.lift_splat(feats, k, aug, l2c, bev_aug, valid)
    assert pooled.shape == (2, 5, 40, 40) and (pooled.abs().sum(1) > 0).float().mean() > 0.3
    (out * torch.randn_like(out)).sum().backward()
    assert feats.grad.abs().sum() > 0 and vt.depth_net.weight.grad.abs().sum() > 0
    assert torch.count_nonzero(feats.grad[0, 3]) == 0  # the invalid camera
    assert all(torch.count_nonzero(feats.grad[b, c]) > 0 for b in range(2) for c in range(6) if (b, c) != (0, 3))


def test_view_transform_rejects_wrong_feature_size():
    cam = CameraConfig.small()
    vt = LSSViewTransform(cam, _small_lss(), in_channels=4)
    k, l2c = synthetic_rig(1, cam.image_size, n_cams=2)
    with pytest.raises(ValueError, match="features"):
        vt(torch.zeros(1, 2, 4, 6, 16), k, torch.eye(3).expand(1, 2, 3, 3), l2c, torch.eye(4)[None])


# ------------------------------------------------------------------------------------------- grid matching

def test_check_grid_matches():
    pp = PointPillarsConfig.small()
    check_grid_matches(LSSConfig.matching(pp), pp.point_range, pp.out_cell)
    check_grid_matches(LSSConfig(point_range=(-25.6, -25.6, -3.0, 25.6, 25.6, 5.0), cell=0.8), pp.point_range,
                       pp.out_cell)  # z may differ
    with pytest.raises(ConfigError, match="model.lss.cell") as e:
        check_grid_matches(LSSConfig(point_range=pp.point_range, cell=0.4), pp.point_range, pp.out_cell)
    assert e.value.field == "model.lss.cell"
    with pytest.raises(ConfigError, match="model.lss.point_range") as e:
        check_grid_matches(LSSConfig(cell=0.8), pp.point_range, pp.out_cell)  # +-51.2 m vs +-25.6 m
    assert e.value.field == "model.lss.point_range"
    nus = PointPillarsConfig()
    check_grid_matches(LSSConfig(), nus.point_range, nus.out_cell)  # the defaults agree: +-51.2 m at 0.8 m
