"""Camera branch: timm backbones + FPN neck shapes (ResNet NCHW, Swin-T NHWC), configuration errors, and the whole
CameraBEV (backbone + LSS) forward/backward, including an invalid camera."""
from __future__ import annotations

import pytest
import torch

from shared.errors import ConfigError
from tests.train.test_lss import img_aug_matrix, synthetic_rig
from train.model_config import CameraConfig, LSSConfig, PointPillarsConfig
from train.models.camera import CameraBackbone
from train.models.lss import CameraBEV, check_grid_matches


def test_small_backbone_neck_shape():
    cfg = CameraConfig.small()
    m = CameraBackbone(cfg).eval()
    assert not m.channels_last and m.reductions == [8, 16, 32]
    with torch.no_grad():
        out = m(torch.randn(2, 3, 96, 256))
    assert out.shape == (2, 64, 12, 32) and m.out_channels == 64 and m.out_size == (12, 32)


def test_other_cnn_and_levels_coarser_than_the_stride():
    cfg = CameraConfig(backbone="mobilenetv3_small_050", out_indices=(2, 3, 4), image_size=(64, 96), neck_channels=16)
    with torch.no_grad():
        assert CameraBackbone(cfg).eval()(torch.randn(1, 3, 64, 96)).shape == (1, 16, 8, 12)
    # Only stride-16 and -32 levels: the merged map is upsampled to stride 8.
    cfg = CameraConfig(backbone="resnet18", out_indices=(3, 4), image_size=(64, 96), neck_channels=16)
    with torch.no_grad():
        assert CameraBackbone(cfg).eval()(torch.randn(1, 3, 64, 96)).shape == (1, 16, 8, 12)


def test_config_errors():
    with pytest.raises(ConfigError, match="model.camera.out_indices"):  # a stride-4 level under a stride-8 output
        CameraBackbone(CameraConfig(backbone="resnet18", out_indices=(1, 2, 3), image_size=(64, 96)))
    with pytest.raises(ConfigError, match="model.camera.backbone"):
        CameraBackbone(CameraConfig(backbone="no_such_model_xyz"))
    m = CameraBackbone(CameraConfig.small())
    with pytest.raises(ValueError, match="image_size"):
        m(torch.zeros(1, 3, 96, 240))


def test_swin_t_nuscenes_shape():
    """Swin-T at 256x704 (channels-last features in timm 1.0) gives the 256-channel stride-8 map."""
    m = CameraBackbone(CameraConfig()).eval()
    assert m.channels_last and m.reductions == [8, 16, 32]
    with torch.no_grad():
        out = m(torch.randn(1, 3, 256, 704))
    assert out.shape == (1, 256, 32, 88)


def _small_batch(b: int, cam: CameraConfig, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, w = cam.image_size
    orig = (2 * h, 2 * w)  # "stored" images twice the network input, resized by 0.5
    k, l2c = synthetic_rig(b, orig)
    aug = torch.tensor(img_aug_matrix(0.5), dtype=torch.float32).expand(b, 6, 3, 3)
    return {"images": torch.randn(b, 6, 3, h, w, generator=g), "cam_intrinsic": k, "img_aug": aug,
            "lidar2cam": l2c, "bev_aug": torch.eye(4).expand(b, 4, 4), "cam_valid": torch.ones(b, 6, dtype=torch.bool)}


def _small_model() -> CameraBEV:
    pp = PointPillarsConfig.small()
    lss = LSSConfig.matching(pp, channels=16, bev_channels=32)
    check_grid_matches(lss, pp.point_range, pp.out_cell)
    return CameraBEV(CameraConfig.small(), lss)


def test_camera_bev_forward_backward():
    torch.manual_seed(0)
    model = _small_model().train()
    assert model.out_channels == 32 and model.grid_size == (64, 64)
    batch = _small_batch(2, model.cam)
    out = model(batch)
    assert out.shape == (2, 32, 64, 64) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    first_conv = model.backbone.body.conv1.weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert model.view_transform.depth_net.weight.grad.abs().sum() > 0
    assert model.backbone.neck.lateral[0].weight.grad.abs().sum() > 0


def test_camera_bev_invalid_camera_contributes_nothing():
    torch.manual_seed(0)
    model = _small_model().eval()  # eval: BatchNorm does not mix the cameras, so the backbone runs once
    batch = _small_batch(1, model.cam)
    batch["cam_valid"][0, 2] = False
    geometry = [batch[k] for k in ("cam_intrinsic", "img_aug", "lidar2cam", "bev_aug")]
    vt = model.view_transform
    with torch.no_grad():
        feats = model.backbone(batch["images"].flatten(0, 1)).unflatten(0, (1, 6))
        pooled = vt.lift_splat(feats, *geometry, batch["cam_valid"])
        other = feats.clone()
        other[0, 2] = 5 * torch.randn_like(other[0, 2])  # whatever the invalid camera sees
        assert torch.equal(vt(feats, *geometry, batch["cam_valid"]), vt(other, *geometry, batch["cam_valid"]))
        assert not torch.equal(vt(feats, *geometry, batch["cam_valid"]), vt(other, *geometry, None))
    assert pooled.shape == (1, 16, 64, 64) and (pooled.abs().sum(1) > 0).float().mean() > 0.2  # the rig covers it


def test_camera_bev_rejects_wrong_image_size():
    model = _small_model()
    batch = _small_batch(1, model.cam)
    batch["images"] = torch.zeros(1, 6, 3, 128, 256)
    with pytest.raises(ValueError, match="image_size"):
        model(batch)
