"""Camera and fused fine-tuning (``--modality camera|fusion``; train/models/fuser.py, train/tasks/finetune.py,
train/data/finetune.py): the presets' camera branch, the fuser on a hand-computed case, the stream's camera part
against RAD's CameraStream, a few det and seg steps of each modality on the tiny store scored with the devkit,
and the initialisation of the camera branch from a RAD run (and its refusals)."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from shared.augment_params import apply_inverse, as_matrix
from shared.errors import ConfigError, InputError
from train.checkpoint import latest_checkpoint, load_checkpoint
from train.config import TrainConfig, nuscenes, small, with_overrides

from tests.test_cli_errors import cli, one_line_error

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

#: The tiny store: keyframes only (one sweep), 3 training keyframes, no DataLoader workers in the tests.
FT_SETS = ["model.finetune.lidar_sweeps=1", "model.finetune.fraction_by='samples'", "optim.warmup_steps=1",
           "optim.max_steps=4", "ckpt_every=4", "eval_every=4", "model.head.max_objects=64", "data.num_workers=0"]


def ft_config(train_store, task, modality, *sets):
    store, vid = train_store
    return with_overrides(small(str(store), vid, task, modality=modality), FT_SETS + list(sets))


def test_presets_add_rads_camera_branch(train_store):
    from train.tasks.finetune import camera_config_differences

    rad = small(task="rad")
    for task in ("det", "seg"):
        for modality in ("camera", "fusion"):
            cfg = ft_config(train_store, task, modality)
            assert cfg.finetune.modality == modality and cfg.images.size == (96, 256)
            assert cfg.camera.backbone == "resnet18" and camera_config_differences(cfg, rad) == {}
            assert TrainConfig.from_dict(cfg.to_dict()) == cfg
        lidar = ft_config(train_store, task, "lidar")
        assert "camera" not in lidar.model and not lidar.finetune.uses_camera
    assert ft_config(train_store, "det", "camera").center_head.in_channels == 64  # lss.bev_channels
    assert ft_config(train_store, "det", "fusion").center_head.in_channels == 96  # the LiDAR backbone's
    big = nuscenes(task="det", modality="fusion")
    assert camera_config_differences(big, nuscenes(task="rad")) == {} and big.images.size == (256, 704)
    with pytest.raises(ConfigError, match="needs the camera branch"):
        ft_config(train_store, "det", "lidar", "model.finetune.modality='camera'")
    with pytest.raises(ConfigError, match="modality"):
        ft_config(train_store, "det", "radar")
    with pytest.raises(ConfigError, match="images.size"):
        ft_config(train_store, "seg", "camera", "images.size=(64, 128)")


def test_conv_fuser_concatenates_camera_then_lidar_and_convolves():
    from train.models.fuser import ConvFuser

    f = ConvFuser((1, 2), 1).eval()
    with torch.no_grad():
        f[0].weight.zero_()
        f[0].weight[0, :, 1, 1] = torch.tensor([1.0, -2.0, 3.0])  # centre taps: camera, lidar 0, lidar 1
    cam = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    lidar = torch.stack([torch.ones(2, 2), torch.full((2, 2), 0.5)])[None]
    want = torch.relu(cam[0, 0] - 2.0 * 1.0 + 3.0 * 0.5) / (1 + f[1].eps) ** 0.5  # BN: mean 0, var 1
    got = f([cam, lidar])
    assert got.shape == (1, 1, 2, 2) and torch.allclose(got[0, 0], want)
    with pytest.raises(ValueError, match="channels on one grid"):
        f([cam, lidar[..., :1]])


@pytest.fixture(scope="module")
def det_camera_streams(train_store, synth_nusc):
    from train.data.finetune import FinetuneStream

    store, vid = train_store
    cfg = ft_config(train_store, "det", "camera")
    kw = dict(task="det", finetune=cfg.finetune, head=cfg.center_head, point_range=cfg.data.point_range,
              nusc=synth_nusc, shuffle=False)
    train = FinetuneStream(store, vid, images=cfg.images, **kw)
    ev = FinetuneStream(store, vid, images=dataclasses.replace(cfg.images, augment=False), augment=False, **kw)
    return cfg, train, ev


def test_stream_camera_part_is_rads_and_follows_the_bev_augmentation(det_camera_streams, train_store):
    from train.data.camera import CameraStream
    from train.data.finetune import collate_finetune

    cfg, train, ev = det_camera_streams
    store, vid = train_store
    ref = CameraStream(store, vid, images=dataclasses.replace(cfg.images, augment=False), n_rich=8, n_less=8,
                       point_range=cfg.data.point_range, shuffle=False, tokens={it.token for it in ev.items})
    by_token = {it.token: it for it in ref.items}
    for item in ev.items:
        s, r = ev.load(item), ref.load(by_token[item.token])
        assert s["images"].shape == (6, 3, 96, 256) and s["cam_valid"].all()
        assert torch.equal(s["images"], r["images"])
        for k in ("cam_intrinsic", "img_aug", "lidar2cam"):
            np.testing.assert_array_equal(s[k], r[k])
        np.testing.assert_array_equal(s["bev_aug"], np.eye(4, dtype=np.float32))
    s = train.load(train.items[0], epoch=0)
    assert not np.allclose(s["bev_aug"], np.eye(4))
    np.testing.assert_array_equal(s["bev_aug"], as_matrix(s["aug"]).astype(np.float32))
    orig = apply_inverse(s["points"], s["aug"])[:, :3]  # bev_aug maps the original frame to the points' frame
    moved = orig @ s["bev_aug"][:3, :3].T.astype(np.float64) + s["bev_aug"][:3, 3]
    np.testing.assert_allclose(moved, s["points"][:, :3], atol=1e-3)
    assert not np.array_equal(s["img_aug"], ev.load(train.items[0])["img_aug"])  # image augmentation is on
    assert not np.array_equal(train.load(train.items[0], epoch=1)["img_aug"], s["img_aug"])  # and per epoch
    b = collate_finetune([s, train.load(train.items[1])])
    assert b["images"].shape == (2, 6, 3, 96, 256) and b["bev_aug"].shape == (2, 4, 4)
    assert b["cam_valid"].dtype == torch.bool and b["heatmap"].shape[0] == 2 and b["cameras_masked"] == 0


def test_missing_image_errors_or_masks(train_store, synth_root, tmp_path):
    from train.data.finetune import FinetuneStream

    root, _ = synth_root
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    store, vid = train_store
    streams = {}
    for missing in ("error", "mask"):
        cfg = ft_config(train_store, "seg", "fusion", f"model.finetune.dataroot={str(copy)!r}",
                        f"images.missing={missing!r}")
        streams[missing] = FinetuneStream(store, vid, task="seg", finetune=cfg.finetune, images=cfg.images,
                                          point_range=cfg.data.point_range, shuffle=False)
    s = streams["error"]
    rel = s.image_paths[s.items[0].token][2]
    (copy / rel).unlink()
    with pytest.raises(InputError, match="not found") as exc:
        s.load(s.items[0])
    assert exc.value.path == str(copy.resolve() / rel)
    m = streams["mask"].load(streams["mask"].items[0])
    assert m["cam_valid"].tolist() == [True, True, False, True, True, True] and m["cameras_masked"] == 1
    assert not m["images"][2].any()


def _run(train_store, synth_nusc, tmp_path, task, modality, *sets):
    from train.loop import finetune_task, read_metrics, train

    job = finetune_task(ft_config(train_store, task, modality, *sets), nusc=synth_nusc)
    train(job, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    evals = read_metrics(tmp_path / "eval.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [e["step"] for e in evals] == [4]
    assert all(np.isfinite(r["loss"]) for r in rows)
    return job, rows, evals


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["camera", "fusion"])
def test_det_camera_and_fusion_train_and_score_with_the_devkit(train_store, synth_nusc, tmp_path, modality):
    from train.eval.finetune import evaluate_checkpoint

    job, rows, evals = _run(train_store, synth_nusc, tmp_path, "det", modality, "optim.lr=3e-3")
    assert np.mean([r["loss"] for r in rows[-2:]]) < rows[0]["loss"]
    assert 0.0 <= evals[0]["NDS"] <= 1.0 and 0.0 <= evals[0]["mAP"] <= 1.0
    meta = job.last_submission["meta"]
    assert meta["use_camera"] and meta["use_lidar"] == (modality == "fusion")
    assert set(job.last_submission["results"]) == set(job.eval_stream().sample_tokens)
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert any(k.startswith("camera.backbone.") for k in state["model"])
    assert any(k.startswith("fuser.") for k in state["model"]) == (modality == "fusion")
    result = evaluate_checkpoint(tmp_path, "det")  # the model is rebuilt from the checkpoint's configuration
    assert result["scores"]["NDS"] == pytest.approx(evals[0]["NDS"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["camera", "fusion"])
def test_seg_camera_and_fusion_train_and_report_iou(train_store, synth_nusc, tmp_path, modality):
    _, rows, evals = _run(train_store, synth_nusc, tmp_path, "seg", modality)
    assert np.mean([r["loss"] for r in rows[-2:]]) < rows[0]["loss"]
    assert 0.0 <= evals[0]["mIoU"] <= 1.0 and 0.0 <= evals[0]["IoU/drivable_area"] <= 1.0


def test_param_groups_put_both_branches_in_the_backbone_group(train_store):
    from train.loop import finetune_task

    job = finetune_task(ft_config(train_store, "det", "fusion", "model.finetune.backbone_lr_mult=0.1",
                                  "model.finetune.freeze_backbone_steps=2"))
    model = job.build_model()
    bb, head = job.param_groups(model)
    ids = {id(p) for p in bb["params"]}
    assert bb["lr_mult"] == 0.1 and bb["frozen_steps"] == 2 and head["lr_mult"] == 1.0
    for part, group in (("backbone", ids), ("camera", ids)):
        assert all(id(p) in group for p in getattr(model, part).parameters())
    head_ids = {id(p) for p in head["params"]}
    assert all(id(p) in head_ids for m in (model.fuser, model.head) for p in m.parameters())
    assert len(ids) + len(head_ids) == len(list(model.parameters())) and not ids & head_ids


#: RAD for 1 step on the small preset's camera (resnet18, 96x256).
RAD_SETS = ["data.n_rich=64", "data.n_less=64", "data.num_workers=0", "optim.warmup_steps=1", "optim.max_steps=1",
            "ckpt_every=1"]


@pytest.fixture(scope="module")
def rad_run(train_store, prc_teacher, tmp_path_factory):
    from calico.commands.train import train_config
    from train.loop import pretrain_rad

    store, vid = train_store
    out = tmp_path_factory.mktemp("rad_small")
    pretrain_rad(train_config("small", "rad", store, vid, None, None, RAD_SETS, teacher=prc_teacher), out)
    return out


def test_init_from_rad_loads_the_camera_branch_and_the_teacher(train_store, rad_run, prc_teacher, capsys):
    from train.loop import finetune_task

    rad = load_checkpoint(latest_checkpoint(rad_run))["model"]
    job = finetune_task(ft_config(train_store, "seg", "fusion", f"model.finetune.init={str(rad_run)!r}"))
    model = job.build_model()
    cam = model.camera.state_dict()
    assert cam and all(torch.equal(v, rad["student." + k]) for k, v in cam.items())
    assert all(torch.equal(v, rad["teacher." + k]) for k, v in model.backbone.state_dict().items())
    assert job.init_info["task"] == "rad" and job.init_info["loaded"] == ["backbone", "camera"]
    # a camera-only run takes the camera branch alone
    job = finetune_task(ft_config(train_store, "det", "camera", f"model.finetune.init={str(rad_run)!r}"))
    model = job.build_model()
    assert model.backbone is None and job.init_info["loaded"] == ["camera"]
    assert all(torch.equal(v, rad["student." + k]) for k, v in model.camera.state_dict().items())
    # a PRC run: the LiDAR backbone, the camera random (said), or nothing at all for camera
    capsys.readouterr()
    job = finetune_task(ft_config(train_store, "det", "fusion", f"model.finetune.init={str(prc_teacher)!r}"))
    job.build_model()
    assert job.init_info["loaded"] == ["backbone"] and job.init_info["random"] == ["camera"]
    assert "camera randomly initialised" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="holds none of what camera fine-tuning uses"):
        finetune_task(ft_config(train_store, "det", "camera", f"model.finetune.init={str(prc_teacher)!r}")
                      ).build_model()


def test_init_from_rad_refuses_another_camera_config(train_store, rad_run):
    from train.loop import finetune_task

    init = f"model.finetune.init={str(rad_run)!r}"
    for sets, needle in ((["model.camera.neck_channels=32"], "camera.neck_channels"),
                         (["model.lss.channels=16"], "lss.channels"),
                         (["model.camera.image_size=(64, 128)", "images.size=(64, 128)"], "camera.image_size")):
        with pytest.raises(ConfigError, match="camera branch differs") as exc:
            finetune_task(ft_config(train_store, "det", "fusion", init, *sets)).build_model()
        assert needle in str(exc.value)


@pytest.mark.slow
def test_cli_camera_finetune_and_eval(train_store, tmp_path, capsys):
    import json

    store, _ = train_store
    out = tmp_path / "det"
    common = ["train", "finetune", "--store", store, "--lidar-sweeps", "1", "--fraction-by", "samples",
              "--steps", "1", "--set", "optim.warmup_steps=1", "--set", "data.num_workers=0"]
    code, stdout, err = cli(capsys, *common, "--task", "det", "--modality", "camera", "--out", out)
    assert code == 0, err
    state = load_checkpoint(latest_checkpoint(out))
    assert state["config"]["model"]["finetune"]["modality"] == "camera" and "camera" in state["config"]["model"]
    code, stdout, err = cli(capsys, "eval", "det", "--checkpoint", out)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert 0.0 <= result["scores"]["NDS"] <= 1.0
    sub = json.loads((out / "eval" / "det-mini_val-step00000001" / "submission.json").read_text())
    assert sub["meta"]["use_camera"] and not sub["meta"]["use_lidar"]
    one_line_error(capsys, *common, "--task", "det", "--modality", "radar", "--out", tmp_path / "x",
                   needles=["modality"])
    assert not (tmp_path / "x").exists()
