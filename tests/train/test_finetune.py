"""Fine-tuning (train/data/finetune.py, train/tasks/{finetune,detect,segment}.py, train/eval/finetune.py, the CLI):
config validation, the stream's batches, a few steps of det and seg on the tiny store (keyframes only, so one
LiDAR sweep), devkit scores, --init from a PRC run, the CLI end to end and its errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from shared.augment_params import apply_inverse
from shared.errors import ConfigError, InputError
from train.checkpoint import latest_checkpoint, load_checkpoint
from train.config import TrainConfig, small, small_wide, with_overrides
from train.model_config import FinetuneConfig, PointPillarsConfig

from tests.test_cli_errors import cli, one_line_error

#: The tiny store holds keyframes only: one sweep; its one training scene has 3 keyframes, so stride over them.
FT_SETS = ["model.finetune.lidar_sweeps=1", "model.finetune.fraction_by='samples'", "optim.warmup_steps=1",
           "optim.max_steps=6", "ckpt_every=3", "eval_every=3", "model.head.max_objects=64"]


def ft_config(train_store, task, *sets, preset=small):
    store, vid = train_store
    return with_overrides(preset(str(store), vid, task), FT_SETS + list(sets))


def test_config_validation(train_store):
    cfg = ft_config(train_store, "det")
    assert cfg.task == "det" and cfg.finetune.lidar_sweeps == 1
    assert cfg.center_head.grid_size == cfg.backbone.out_size and cfg.center_head.in_channels == 96
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    seg = ft_config(train_store, "seg")
    r = seg.backbone.point_range
    assert seg.finetune.seg_x_range == (r[0], r[3]) and seg.finetune.seg_cell == seg.backbone.out_cell
    wide = small_wide(task="det")
    assert wide.backbone.point_range[3] == 51.2 and wide.center_head.grid_size == (128, 128)
    with pytest.raises(ConfigError, match="task"):
        TrainConfig(task="detect")
    cases = {"model.finetune.fraction=0": "fraction", "model.finetune.fraction=1.5": "fraction",
             "model.finetune.fraction_by='frames'": "fraction_by", "model.finetune.lidar_sweeps=0": "lidar_sweeps",
             "model.finetune.modality='camera'": "needs the camera branch", "model.finetune.modality='radar'": "modality",
             "model.finetune.seg_cell=0.3": "whole number", "model.finetune.freeze_backbone_steps=-1": "freeze",
             "model.head.cell=0.4": "come from model.backbone", "model.finetune.bogus=1": "finetune",
             "model.finetune.augment_draw='fresh'": "augment_draw", "model.finetune.aug_scale=(1.1, 0.9)": "aug_scale",
             "model.finetune.aug_flip_prob=2": "aug_flip_prob",
             "model.finetune.aug_translation_std=(0, -1, 0)": "aug_translation_std"}
    for item, needle in cases.items():
        with pytest.raises(ConfigError, match=needle):
            ft_config(train_store, "det", item)


@pytest.fixture(scope="module")
def det_stream(train_store, synth_nusc):
    from train.data.finetune import FinetuneStream

    cfg = ft_config(train_store, "det")
    store, vid = train_store
    return cfg, FinetuneStream(store, vid, task="det", finetune=cfg.finetune, head=cfg.center_head,
                               point_range=cfg.data.point_range, nusc=synth_nusc)


def test_stream_reads_the_subset_and_keeps_points_in_their_boxes(det_stream, synth_nusc):
    from nuscenes.utils.geometry_utils import points_in_box

    from train.data.boxes import boxes_to_devkit
    from train.data.finetune import collate_finetune
    from train.data.fractions import subset

    cfg, stream = det_stream
    sub = subset(synth_nusc, 1.0, "samples")
    assert stream.subset == sub and {stream.sample_of[it.token] for it in stream.items} == set(sub.sample_tokens)
    half = subset(synth_nusc, 0.5, "samples")
    assert len(half.sample_tokens) == 2 < len(sub.sample_tokens)
    h, w = cfg.center_head.grid_size
    r = cfg.data.point_range
    n_checked = 0
    for item in stream.items:
        s = stream.load(item)
        assert not np.allclose(s["aug"], [0, 1, 0, 0, 0, 0, 0])  # an augmentation is applied
        pts, boxes = s["points"], s["gt_boxes"]
        assert np.all((pts[:, :3] >= np.float32(r[:3])) & (pts[:, :3] < np.float32(r[3:])))
        m = s["mask"]
        assert m.any() and np.all(s["ind"][m] < h * w) and s["heatmap"].shape == (10, h, w)
        assert s["heatmap"].max() == 1.0
        original = apply_inverse(pts, s["aug"])
        kb = stream.boxes[s["token"]]
        for aug_box, box in zip(boxes_to_devkit(boxes), boxes_to_devkit(kb.boxes)):
            inside_aug = points_in_box(aug_box, pts[:, :3].T.astype(np.float64))
            inside = points_in_box(box, original[:, :3].T.astype(np.float64))
            # points on a face may flip from float32 rounding; anything else would be a frame mismatch
            assert (inside_aug != inside).sum() <= max(1, inside.sum() // 100)
            n_checked += int(inside.sum() > 0)
    assert n_checked > 5
    batch = collate_finetune([stream.load(it) for it in stream.items[:2]])
    assert batch["heatmap"].shape == (2, 10, h, w) and batch["batch_idx"].max() == 1
    assert batch["points"].shape[1] == 5 and batch["reg"].shape == (2, 64, 10)


def test_augmentation_is_drawn_per_epoch_within_its_ranges_or_read_from_the_store(det_stream, train_store,
                                                                                    synth_nusc):
    import dataclasses
    import math

    from train.data.finetune import FinetuneStream

    cfg, stream = det_stream
    ft = cfg.finetune
    assert ft.augment_draw == "random"
    recs = {(e, it.order): stream.augmentation(it, e) for e in range(4) for it in stream.items}
    assert all(np.array_equal(r, stream.augmentation(it, e)) for (e, o), r in recs.items()
               for it in stream.items if it.order == o)  # seeded: the same record again
    item = stream.items[0]
    per_epoch = np.stack([recs[(e, item.order)] for e in range(4)])
    assert len({tuple(r) for r in per_epoch}) == 4  # a fresh draw every epoch
    allr = np.stack(list(recs.values()))
    lo, hi = (math.radians(a) for a in ft.aug_rotation_deg)
    assert np.all((allr[:, 0] >= lo - 1e-6) & (allr[:, 0] <= hi + 1e-6))
    assert np.all((allr[:, 1] >= ft.aug_scale[0] - 1e-6) & (allr[:, 1] <= ft.aug_scale[1] + 1e-6))
    assert set(np.unique(allr[:, 2:4])) <= {0.0, 1.0} and allr[:, 2:4].any()  # flips happen
    assert np.all(allr[:, 4:] == 0)  # no translation by default
    s = stream.load(item, epoch=3)
    assert np.array_equal(s["aug"], recs[(3, item.order)])
    store, vid = train_store
    stored = FinetuneStream(store, vid, task="det", finetune=dataclasses.replace(ft, augment_draw="stored"),
                            head=cfg.center_head, point_range=cfg.data.point_range, nusc=synth_nusc)
    record = stored.shard(item.scene).sweep(item.index, ("aug_params",)).aug_params[0]
    assert np.array_equal(stored.augmentation(item, 0), record) and np.array_equal(stored.augmentation(item, 5), record)


def test_seg_stream_raster_matches_the_devkit_raster_without_augmentation(train_store, synth_nusc):
    from train.data.finetune import FinetuneStream, seg_grid
    from train.data.maps import keyframe_raster, load_maps

    cfg = ft_config(train_store, "seg")
    store, vid = train_store
    stream = FinetuneStream(store, vid, task="seg", finetune=cfg.finetune, point_range=cfg.data.point_range,
                            head=cfg.center_head, augment=False, nusc=synth_nusc)
    s = stream.load(stream.items[0])
    grid = seg_grid(cfg.finetune)
    want = keyframe_raster(synth_nusc, load_maps(synth_nusc.dataroot, {stream.poses[s["token"]][0]}), s["token"], grid)
    assert s["seg"].shape == (6, *grid.shape) and np.array_equal(s["seg"], want) and want[0].any()


def test_several_sweeps_refused_on_a_keyframes_store(train_store, synth_nusc):
    from train.data.finetune import FinetuneStream

    cfg = ft_config(train_store, "det", "model.finetune.lidar_sweeps=3")
    store, vid = train_store
    with pytest.raises(InputError, match="--sweeps keyframes"):
        FinetuneStream(store, vid, task="det", finetune=cfg.finetune, head=cfg.center_head,
                       point_range=cfg.data.point_range, nusc=synth_nusc)


def _check_run(out, task, nusc, metric):
    from train.data.fractions import subset
    from train.loop import read_metrics

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert np.mean([r["loss"] for r in rows[-2:]]) < rows[0]["loss"]
    evals = read_metrics(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [3, 6]
    for e in evals:
        assert 0.0 <= e[metric] <= 1.0
    state = load_checkpoint(latest_checkpoint(out))
    assert state["task"] == task
    assert state["subset"]["sample_tokens"] == list(subset(nusc, 1.0, "samples").sample_tokens)
    return rows, evals


@pytest.mark.slow
def test_det_training_lowers_the_loss_and_scores_with_the_devkit(train_store, synth_nusc, tmp_path):
    from train.loop import finetune_task, train

    cfg = ft_config(train_store, "det", "model.finetune.freeze_backbone_steps=2")
    task = finetune_task(cfg, nusc=synth_nusc)
    train(task, tmp_path)
    rows, evals = _check_run(tmp_path, "det", synth_nusc, "NDS")
    assert [r["lr/backbone"] for r in rows[:2]] == [0.0, 0.0] and rows[2]["lr/backbone"] > 0
    assert rows[0]["lr/head"] > 0
    for e in evals:
        assert 0.0 <= e["mAP"] <= 1.0 and 0.0 <= e["car_AP_2.0"] <= 1.0
    sub = task.last_submission
    assert set(sub["results"]) == set(task.eval_stream().sample_tokens) and sub["meta"]["use_lidar"]
    assert all(len(v) <= 500 for v in sub["results"].values())
    other = ft_config(train_store, "det", "model.finetune.freeze_backbone_steps=2", "model.finetune.fraction=0.5",
                      "optim.max_steps=7")
    with pytest.raises(InputError, match="another subset"):
        train(finetune_task(other, nusc=synth_nusc), tmp_path, allow_config_change=True)


@pytest.mark.slow
def test_seg_training_lowers_the_loss_and_reports_iou(train_store, synth_nusc, tmp_path):
    from train.loop import finetune_task, train

    train(finetune_task(ft_config(train_store, "seg"), nusc=synth_nusc), tmp_path)
    _, evals = _check_run(tmp_path, "seg", synth_nusc, "mIoU")
    assert 0.0 <= evals[-1]["IoU/drivable_area"] <= 1.0


def test_seg_head_resamples_onto_another_grid(train_store):
    from train.tasks.segment import SegmentationModel, bev_resample
    from train.data.maps import BevGrid

    cfg = ft_config(train_store, "seg", "model.finetune.seg_x_range=(-20.0, 20.0)",
                    "model.finetune.seg_y_range=(-10.0, 10.0)", "model.finetune.seg_cell=0.5")
    model = SegmentationModel(cfg)
    assert model.resample
    r = cfg.backbone.point_range
    h, w = cfg.backbone.out_size
    # a map whose value is the x of each cell centre resamples to the x of the target cell centres
    xs = r[0] + (torch.arange(w) + 0.5) * cfg.backbone.out_cell
    src = xs.expand(1, 1, h, w).clone()
    grid = BevGrid((-20.0, 20.0), (-10.0, 10.0), 0.5)
    got = bev_resample(src, r, grid)
    assert got.shape == (1, 1, 40, 80)
    assert torch.allclose(got[0, 0, 0], torch.as_tensor(grid.cell_centres()[0], dtype=torch.float32), atol=1e-4)


def test_init_from_prc_loads_the_backbone_and_refuses_another_backbone(train_store, prc_teacher):
    from train.loop import finetune_task

    cfg = ft_config(train_store, "det", f"model.finetune.init={str(prc_teacher)!r}")
    task = finetune_task(cfg)
    model = task.build_model()
    prc = load_checkpoint(latest_checkpoint(prc_teacher))["model"]
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, prc["backbone." + k]), k
    assert task.init_info["task"] == "prc" and task.checkpoint_extra()["init"]["sha256"]
    wide = ft_config(train_store, "det", f"model.finetune.init={str(prc_teacher)!r}", preset=small_wide)
    with pytest.raises(ConfigError, match="backbone differs"):
        finetune_task(wide).build_model()
    from train.eval.finetune import evaluate_checkpoint

    with pytest.raises(InputError, match="not a fine-tuning checkpoint"):
        evaluate_checkpoint(prc_teacher, "det")


def test_finetune_config_fields_documented():
    doc = FinetuneConfig.__doc__
    for f in dataclasses.fields(FinetuneConfig):
        assert f.name in doc, f.name
    assert PointPillarsConfig.small_wide().out_cell == 0.8


@pytest.mark.slow
def test_cli_finetune_and_eval_end_to_end(train_store, tmp_path, capsys):
    store, _ = train_store
    out = tmp_path / "seg"
    common = ["train", "finetune", "--store", store, "--lidar-sweeps", "1", "--fraction", "0.5", "--fraction-by",
              "samples", "--steps", "2", "--set", "optim.warmup_steps=1"]
    code, stdout, err = cli(capsys, *common, "--task", "seg", "--out", out)
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["step"] == 2
    state = load_checkpoint(latest_checkpoint(out))
    assert len(state["subset"]["sample_tokens"]) == 2
    code, stdout, err = cli(capsys, "eval", "seg", "--checkpoint", out)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    folder = out / "eval" / "seg-mini_val-step00000002"
    assert result["out"] == str(folder) and 0 <= result["scores"]["mIoU"] <= 1
    assert {"seg_metrics.json", "scores.json", "table.md"} <= {p.name for p in folder.iterdir()}
    one_line_error(capsys, "eval", "det", "--checkpoint", out, needles=["calico eval seg"])
    one_line_error(capsys, *common, "--task", "detect", "--out", tmp_path / "x", needles=["--task"])
    one_line_error(capsys, *common, "--task", "det", "--modality", "radar", "--out", tmp_path / "x",
                   needles=["modality"])
    one_line_error(capsys, *common, "--task", "det", "--init", tmp_path / "nope", "--out", tmp_path / "x",
                   needles=["checkpoint not found"])
    one_line_error(capsys, "train", "finetune", "--store", store, "--task", "det", "--steps", "1",
                   "--out", tmp_path / "y", needles=["--sweeps keyframes", "--lidar-sweeps 1"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before anything is written
