"""The fine-tuning stream: the keyframes of a label fraction (or of the validation split) with their LiDAR points
and the targets of 3-D detection (``task="det"``) or BEV map segmentation (``task="seg"``), METHOD.md section 4.

:class:`FinetuneStream` is a :class:`train.data.stream.StoreStream` over the **keyframe** LIDAR_TOP sweeps of a
store version whose sample is in the given set: the training subset of :func:`train.data.fractions.subset`
(``fraction``, ``fraction_by``), or the sample tokens passed (evaluation: a devkit split). Its constructor, in the
main process only, resolves the nuScenes dataroot and checks it against the version
(:func:`train.data.camera.version_dataroot`), then reads from the devkit **only the subset's samples**: their
boxes (:func:`train.data.boxes.keyframe_boxes`, det), their location and LiDAR pose (seg: the map expansion of
each location is loaded once, :func:`train.data.maps.load_maps`) and their poses (to put detections into the
global frame), and drops the devkit. A subset keyframe missing from the store version is an :class:`InputError`,
as is ``lidar_sweeps > 1`` on a store built with ``--sweeps keyframes`` (checked on the first keyframe).

Per item (:meth:`FinetuneStream.load`): the keyframe and its previous sweeps (``lidar_sweeps``,
:func:`train.data.multisweep.load_multisweep`, (N, 5) x, y, z, intensity, time lag); with ``augment`` one similarity
record (:mod:`shared.augment_params`; :meth:`FinetuneStream.augmentation`: drawn afresh per keyframe and epoch, or
the store's view-0 record, ``finetune.augment_draw``) moves the points (:func:`shared.augment_params.apply`),
the boxes (:func:`train.data.boxes.augment_boxes`) and the map raster (rasterised in the augmented frame,
:func:`train.data.maps.rasterise`) alike; points outside ``point_range`` are dropped (after the augmentation);
then the CenterPoint targets (:func:`train.data.det_targets.center_targets`) or the (6, H, W) raster. The random
draw is seeded by (seed, epoch, keyframe), so a run is reproducible and resumes to the same samples.

Camera and fused inputs (``images`` given, ``modality`` camera / fusion): the constructor also maps each keyframe
to its six image paths (:func:`train.data.camera.keyframe_image_paths`, from the same devkit, then dropped), and
each item adds the camera part of :func:`train.data.camera.load_cameras` (read from the stream's dataroot, so
``images.dataroot`` is not used): the images drawn through ``images``' augmentation (BEVFusion's resize, crop,
flip, rotation, as RAD; the evaluation stream passes ``augment=False``: fit width, centred, bottom-aligned), with
the generator :meth:`StoreStream.rng` of (seed, epoch, item), so they differ between epochs; missing images
follow ``images.missing`` (``error``: an InputError naming the file; ``mask``: the camera is zeros and
``cam_valid`` False). ``bev_aug`` is ``as_matrix`` of the record applied to the points, boxes and raster (the
identity without augmentation), so LSS lifts the images into the same augmented LiDAR frame.

:func:`collate_finetune` batches them::

    points      float32 (P, 5)          x, y, z, intensity, time lag; all scans concatenated
    batch_idx   int64   (P,)            scan of each point
    batch_size  int                     B
    tokens      list[str]               sample tokens
    aug         float32 (B, 7)          the record applied (identity record when ``augment`` is off)
    det: heatmap (B, C, H, W) float32, ind (B, K) int64, mask (B, K) bool, cat (B, K) int64, reg (B, K, 10)
         float32, reg_weight (B, K, 10) float32 (:class:`train.data.det_targets.CenterTargets`), gt_boxes /
         gt_labels: lists of the (M, 9) / (M,) numpy boxes in the batch's frame
    seg: seg      float32 (B, 6, H, W)   0/1 raster of :data:`train.data.maps.MAP_CLASSES`
    camera / fusion (:func:`train.data.camera.collate_cameras`; C = 6 cameras, (h, w) = ``images.size``):
         images float32 (B, C, 3, h, w), cam_intrinsic (B, C, 3, 3), img_aug (B, C, 3, 3), lidar2cam
         (B, C, 4, 4), cam_valid bool (B, C), bev_aug float32 (B, 4, 4), cameras_masked int
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_catalog.reader import open_version
from shared.augment_params import apply as apply_aug
from shared.augment_params import as_matrix, records_from_draws
from shared.errors import ConfigError, InputError
from train.data.boxes import augment_boxes, keyframe_boxes
from train.config import ImageConfig
from train.data.camera import collate_cameras, keyframe_image_paths, load_cameras, version_dataroot
from train.data.det_targets import CenterHeadConfig, center_targets
from train.data.fractions import Subset, subset
from train.data.maps import BevGrid, keyframe_pose, load_maps, rasterise
from train.data.multisweep import MultiSweepConfig, load_multisweep, sweep_chain
from train.data.stream import Item, StoreStream, check_range
from train.model_config import FinetuneConfig

#: The identity augmentation record (angle 0, scale 1, no flips, no translation).
IDENTITY_AUG = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)
_LIDAR = "LIDAR_TOP"


def seg_grid(cfg: FinetuneConfig) -> BevGrid:
    """The segmentation grid of a fine-tuning configuration."""
    return BevGrid(x_range=cfg.seg_x_range, y_range=cfg.seg_y_range, cell=cfg.seg_cell)


class FinetuneStream(StoreStream):
    """Keyframes of store version ``version`` of ``store`` as fine-tuning samples (module docstring).

    task: ``det`` or ``seg``; finetune: the :class:`FinetuneConfig`; head: the detection head's grid (det);
    point_range: the backbone's; sample_tokens: the keyframes to read (None: the training subset of
    ``finetune.fraction`` / ``fraction_by``); augment: apply the stored view-0 record (evaluation: False);
    images: the camera settings when the modality reads the images (None: LiDAR only); nusc: an already opened
    devkit of the dataroot (not kept); corruption: a :class:`train.eval.robustness.apply.EvalCorruption` applied to
    every keyframe's points (first) and images (after decoding), for the robustness evaluation (None: clean). The
    other arguments: :class:`StoreStream`.
    """

    def __init__(self, store: str | Path, version: str | None = None, *, task: str, finetune: FinetuneConfig,
                 head: CenterHeadConfig | None = None, point_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
                 sample_tokens=None, augment: bool = True, images: ImageConfig | None = None, nusc=None,
                 corruption=None, **kw):
        if task not in ("det", "seg"):
            raise ConfigError("task", task, "the fine-tuning stream serves det or seg")
        if task == "det" and head is None:
            raise ConfigError("head", None, "detection needs the head's grid (CenterHeadConfig)")
        if images is not None and not isinstance(images, ImageConfig):
            raise ConfigError("images", images, "must be a train.config.ImageConfig")
        self.task, self.cfg, self.head, self.images = task, finetune, head, images
        self.corruption = corruption
        self.point_range = check_range(point_range)
        self.augment = bool(augment)
        self.sweeps = MultiSweepConfig(n_sweeps=finetune.lidar_sweeps)
        self.grid = seg_grid(finetune)
        v = open_version(store, version, verify_checksums=kw.get("verify_checksums", True))
        self.dataroot, nusc = version_dataroot(v, finetune.dataroot, nusc, "model.finetune.dataroot")
        #: The training subset (None when ``sample_tokens`` were given).
        self.subset: Subset | None = None
        if sample_tokens is None:
            self.subset = subset(nusc, finetune.fraction, finetune.fraction_by)
            sample_tokens = self.subset.sample_tokens
        self.sample_tokens: tuple[str, ...] = tuple(sample_tokens)
        lidar = {nusc.get("sample", t)["data"][_LIDAR]: t for t in self.sample_tokens}
        self.boxes = {t: keyframe_boxes(nusc, t) for t in self.sample_tokens} if task == "det" else {}
        poses = {t: keyframe_pose(nusc, t) for t in self.sample_tokens}
        #: sample token -> (location, lidar2global (4, 4)).
        self.poses: dict[str, tuple[str, np.ndarray]] = poses
        self.maps = load_maps(self.dataroot, {loc for loc, _ in poses.values()}) if task == "seg" else {}
        cams = keyframe_image_paths(nusc, lidar) if images is not None else {}
        del nusc
        super().__init__(store, v.id, tokens=set(lidar), **kw)
        found = {it.token for it in self.items}
        missing = sorted(set(lidar) - found)
        if missing:
            raise InputError(f"{len(missing)} keyframe(s) of the fine-tuning set are not in store version "
                             f"{self.store_version}, e.g. sample {lidar[missing[0]]} (LiDAR sweep {missing[0]}); "
                             "preprocess them (`calico preprocess run ... --retry-failed`) or use another version",
                             self.version.path)
        #: LiDAR sweep token -> sample token.
        self.sample_of: dict[str, str] = lidar
        #: LiDAR sweep token -> image path per camera (relative to the dataroot; None: no such camera), in the
        #: order of the shard's ``channels`` (empty without ``images``).
        self.image_paths: dict[str, tuple[str | None, ...]] = {
            it.token: tuple(cams.get(it.token, {}).get(ch) for ch in self.version.scene(it.scene).channels)
            for it in self.items} if images is not None else {}
        first = self.items[0]  # a store without the previous sweeps fails here, before a run writes anything
        sweep_chain(self.version, self.version.scene(first.scene), first.index, self.sweeps.n_sweeps)

    def augmentation(self, item: Item, epoch: int) -> np.ndarray:
        """The (7,) float32 record applied to ``item`` in ``epoch`` (``finetune.augment_draw``): a fresh draw from
        the configured ranges, seeded by (seed, epoch, item), or the store's view-0 record."""
        c = self.cfg
        if c.augment_draw == "stored":
            return np.asarray(self.shard(item.scene).sweep(item.index, ("aug_params",)).aug_params[0], np.float32)
        rng = self.rng(item, epoch)
        rot = (math.radians(c.aug_rotation_deg[0]), math.radians(c.aug_rotation_deg[1]))
        return records_from_draws(rng.random((1, 4)), rng.standard_normal((1, 3)), rot, c.aug_scale,
                                  c.aug_flip_prob, c.aug_flip_prob, c.aug_translation_std)[0]

    def load(self, item: Item, epoch: int = 0) -> dict[str, Any]:
        """One keyframe's sample: ``points`` (N, 5) float32, ``aug`` (7,), ``token`` (sample token), and the det
        targets (:class:`CenterTargets` fields, ``gt_boxes``, ``gt_labels``) or the ``seg`` raster (6, H, W);
        with ``images``, the keys of :func:`train.data.camera.load_cameras` and ``bev_aug`` (4, 4) float32."""
        token = self.sample_of[item.token]
        pts = load_multisweep(self.version, item.scene, item.index, self.sweeps)
        if self.corruption is not None and self.corruption.lidar:
            pts = self.corruption.points(pts, token)
        aug = IDENTITY_AUG
        if self.augment:
            aug = self.augmentation(item, epoch)
            pts = apply_aug(pts, aug)
        r = self.point_range
        keep = np.all((pts[:, :3] >= np.float32(r[:3])) & (pts[:, :3] < np.float32(r[3:])), axis=1)
        out: dict[str, Any] = {"points": np.ascontiguousarray(pts[keep], np.float32), "aug": aug, "token": token,
                               "item": item.order}
        if self.task == "det":
            kb = self.boxes[token]
            boxes = augment_boxes(kb.boxes, aug) if self.augment else kb.boxes
            t = center_targets(boxes, kb.labels, self.head, kb.velocity_valid)
            out.update(heatmap=t.heatmap, ind=t.ind, mask=t.mask, cat=t.cat, reg=t.reg, reg_weight=t.reg_weight,
                       gt_boxes=boxes, gt_labels=kb.labels)
        else:
            loc, l2g = self.poses[token]
            out["seg"] = rasterise(self.maps[loc], l2g, self.grid, aug if self.augment else None)
        if self.images is not None:
            # the images draw from their own stream: self.rng(item, epoch) is the point augmentation's
            rng = np.random.default_rng([self.seed, int(epoch), int(item.order), 1]) if self.images.augment else None
            c = self.corruption
            transform = (lambda img, ch: c.image(img, token, ch)) if c is not None and c.camera else None
            out.update(load_cameras(self.shard(item.scene), item.index, self.image_paths[item.token], self.dataroot,
                                    self.images, rng, item.token, image_transform=transform))
            out["bev_aug"] = as_matrix(aug).astype(np.float32)  # the record the points, boxes, raster went through
        return out


_DET_KEYS = {"heatmap": torch.float32, "ind": torch.int64, "mask": torch.bool, "cat": torch.int64,
             "reg": torch.float32, "reg_weight": torch.float32}


def collate_finetune(samples: list[dict]) -> dict:
    """Batch per-keyframe samples of :meth:`FinetuneStream.load` (module docstring)."""
    if not samples:
        raise ValueError("collate_finetune needs at least one sample")
    out = {"points": torch.from_numpy(np.concatenate([s["points"] for s in samples]).astype(np.float32)),
           "batch_idx": torch.from_numpy(np.concatenate([np.full(len(s["points"]), b, np.int64)
                                                         for b, s in enumerate(samples)])),
           "batch_size": len(samples), "tokens": [s["token"] for s in samples],
           "aug": torch.from_numpy(np.stack([s["aug"] for s in samples]).astype(np.float32))}
    if "heatmap" in samples[0]:
        for k, dtype in _DET_KEYS.items():
            out[k] = torch.from_numpy(np.stack([s[k] for s in samples])).to(dtype)
        out["gt_boxes"] = [s["gt_boxes"] for s in samples]
        out["gt_labels"] = [s["gt_labels"] for s in samples]
    if "seg" in samples[0]:
        out["seg"] = torch.from_numpy(np.stack([s["seg"] for s in samples])).float()
    if "images" in samples[0]:
        out.update(collate_cameras(samples))
    return out
