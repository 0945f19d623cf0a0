"""Evaluation of pre-training: do the pre-trained point features (PRC: the LiDAR backbone's; RAD: the camera
branch's BEV) separate regions and object classes better than a randomly initialised network?

Read top to bottom:

1. :func:`collect_points`: per stored sweep (no augmentation: the stored points as they are, finite and inside the
   backbone's ``point_range``) up to ``points_per_sweep`` points are sampled, half from points inside annotated
   boxes, the rest from region points (``region >= 0``), then from other non-ground points, with a generator
   seeded by ``(seed, sweep order)``. Each gets two labels:
   * its **region id** (per sweep; -1 semantic-less);
   * its **object class** (keyframes only, :func:`class_labels`): the nuScenes detection class
     (``category_to_detection_name``) of the annotated box it lies in (devkit ``points_in_box``, boxes in the
     LiDAR frame from ``nusc.get_sample_data``), ``background`` for other non-ground points, -1 (ignored) for
     ground points outside boxes, points of boxes without a detection class and non-keyframe sweeps.
2. :func:`point_features`: one backbone pass per sweep (``model.eval()``), BEV features read bilinearly at the
   sampled points (:func:`train.bev.sample_bev_batched`), optionally through the projection head. For a RAD
   run, :func:`camera_features`: the camera branch on the keyframe's six images (no augmentation, BEV in the
   LiDAR frame), read at the same points; only keyframes (they have images) are probed.
3. :func:`scores`: scenes are split (sorted by name: the first ``max(1, n // 2)`` train, the others test);
   * ``class_acc`` / ``class_bacc``: a linear probe (``StandardScaler`` + ``LogisticRegression``) fitted on the
     train scenes' points, accuracy / balanced accuracy on the test scenes' points; ``object_bacc``: the same
     predictions read as object (any detection class) vs background, balanced accuracy;
   * ``region_nn``: on the test scenes, no fitting: for each region point, is its nearest other region point of
     the same sweep in feature space (cosine) in the same region? (mean over points). ``region_nn_far``: the
     same with neighbours closer than ``nn_exclude_m`` (2 m) in xy left out (BEV features are smooth in space,
     so the plain score is high even for random weights: mostly the spatially nearest point answers).
   ``chance_*`` give the references: the majority class of the train scenes, and the mean over points of the
   fraction of the other points of the sweep that share its region (a random neighbour's hit rate).
4. :func:`compare`: both for a backbone with the checkpoint's config initialised as the run initialised it
   (``torch.manual_seed(data.seed)`` then ``PRCModel(cfg.prc)``: the pre-trained run's step-0 weights) and for
   the checkpoint's weights. Labels and samples are shared by both.

The dataroot (for the annotations) is the store version's ``dataset.dataroot`` unless given.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_catalog.reader import StoreVersion, open_version
from shared.errors import ConfigError, InputError

from train.bev import in_range, sample_bev_batched
from train.checkpoint import load_checkpoint, resolve_checkpoint
from train.config import TrainConfig

#: Class names of the labels: index 0 is background, then nuScenes' detection classes.
CLASSES: tuple[str, ...] = ("background", "car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian",
                            "motorcycle", "bicycle", "traffic_cone", "barrier")

SCORE_KEYS: tuple[str, ...] = ("class_acc", "class_bacc", "object_bacc", "region_nn", "region_nn_far")


@dataclass(frozen=True)
class ProbeConfig:
    """points_per_sweep: points sampled per sweep (fewer when the sweep has fewer usable points); seed: sampling
    and the random backbone's seed (None: the checkpoint's ``data.seed``); use_head: read features through the
    projection head (L2-normalised) instead of the BEV features; max_iter, C: the logistic regression's;
    nn_exclude_m: ``region_nn_far`` ignores neighbours closer than this in xy (metres, >= 0); verify_shards: check
    the store's shards against their manifests' SHA-256 when opened (False: sizes only; ``--no-verify-shards``)."""

    points_per_sweep: int = 512
    seed: int = 0
    use_head: bool = False
    max_iter: int = 500
    C: float = 1.0
    nn_exclude_m: float = 2.0
    verify_shards: bool = True

    def __post_init__(self):
        for name, lo in (("points_per_sweep", 2), ("seed", 0), ("max_iter", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"probe.{name}", v, f"must be an integer >= {lo}")
        if not (isinstance(self.C, (int, float)) and np.isfinite(self.C) and self.C > 0):
            raise ConfigError("probe.C", self.C, "must be a finite number > 0")
        if not (isinstance(self.nn_exclude_m, (int, float)) and np.isfinite(self.nn_exclude_m)
                and self.nn_exclude_m >= 0):
            raise ConfigError("probe.nn_exclude_m", self.nn_exclude_m, "must be a finite number >= 0")


@dataclass(frozen=True)
class SweepPoints:
    """The sampled points of one sweep: ``points`` (P, 4) float32 all usable points (x, y, z, intensity; the
    backbone's input), ``idx`` (K,) int64 sampled indices into them, ``region`` (K,) int64, ``cls`` (K,) int64
    index into :data:`CLASSES` (-1 ignored), ``scene``, ``token``."""

    scene: str
    token: str
    points: np.ndarray
    idx: np.ndarray
    region: np.ndarray
    cls: np.ndarray


# ---------------------------------------------------------------------------------------------------- labels
def class_labels(nusc, token: str, xyz: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """Object class of each point of LIDAR_TOP sample_data ``token``.

    xyz (N, 3) float LiDAR-frame points, ground (N,) bool. Returns (N,) int64 indices into :data:`CLASSES`:
    the detection class of the box a point lies in (devkit ``points_in_box``; a point in several boxes gets the
    last one's), 0 (background) for non-ground points in no box, -1 for ground points in no box, for points of
    boxes whose category has no detection class, and for every point of a non-keyframe sweep.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils.geometry_utils import points_in_box

    n = xyz.shape[0]
    if not nusc.get("sample_data", token)["is_key_frame"]:
        return np.full(n, -1, np.int64)
    labels = np.where(np.asarray(ground, bool), -1, 0).astype(np.int64)
    _, boxes, _ = nusc.get_sample_data(token)  # boxes in the sensor (LiDAR) frame
    pts = np.ascontiguousarray(np.asarray(xyz, np.float64).T)
    for box in boxes:
        inside = points_in_box(box, pts)
        name = category_to_detection_name(box.name)
        labels[inside] = CLASSES.index(name) if name in CLASSES else -1
    return labels


def _sample(cls: np.ndarray, region: np.ndarray, ground: np.ndarray, k: int, rng: np.random.Generator
            ) -> np.ndarray:
    """Up to ``k`` indices (sorted, int64): half from points in boxes (cls >= 1), then region points, then other
    non-ground points."""
    chosen = np.zeros(cls.shape[0], bool)
    out = []
    for pool, quota in ((cls >= 1, k // 2), (region >= 0, k), (~ground, k)):
        cand = np.flatnonzero(pool & ~chosen)
        take = min(quota, k - len(out), cand.size)
        if take > 0:
            pick = rng.choice(cand, size=take, replace=False)
            chosen[pick] = True
            out.extend(pick.tolist())
    return np.sort(np.asarray(out, np.int64))


def collect_points(version: StoreVersion, nusc, point_range, cfg: ProbeConfig = ProbeConfig(),
                   scenes: list[str] | None = None) -> list[SweepPoints]:
    """Sample and label the points of every sweep of ``scenes`` (default: all committed) of ``version``."""
    lo = np.asarray(point_range[:3], np.float32)
    hi = np.asarray(point_range[3:], np.float32)
    out, order = [], 0
    for name in scenes if scenes is not None else version.scenes():
        shard = version.scene(name)
        for i in range(len(shard)):
            sw = shard.sweep(i, arrays=("xyz", "flags", "region", "features"))
            xyz = sw.xyz
            feats = sw.raw["features"]
            inten = feats[:, 0].astype(np.float32) if feats.shape[1] else np.zeros(len(sw), np.float32)
            keep = sw.finite & np.all((xyz >= lo) & (xyz < hi), axis=1)
            xyz, inten = xyz[keep], inten[keep]
            ground = sw.ground[keep]
            region = sw.region[keep].astype(np.int64)
            cls = class_labels(nusc, sw.token, xyz, ground)
            idx = _sample(cls, region, ground, cfg.points_per_sweep, np.random.default_rng([cfg.seed, order]))
            out.append(SweepPoints(name, sw.token, np.concatenate([xyz, inten[:, None]], 1).astype(np.float32),
                                   idx, region[idx], cls[idx]))
            order += 1
    return out


# ---------------------------------------------------------------------------------------------------- features
@torch.no_grad()
def _features_at_points(model, sweeps: list[SweepPoints], bev_of, head, point_range) -> list[np.ndarray]:
    """(K, C) float32 per sweep: ``bev_of(sweep)`` (1, C, H, W) read bilinearly at the sweep's sampled points,
    through ``head`` when given; ``model`` in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in sweeps:
            xy = torch.from_numpy(s.points[s.idx][:, :2])
            assert bool(in_range(xy, point_range).all()), "sampled points must lie inside the map"
            f = sample_bev_batched(bev_of(s), xy[None], point_range)[0]
            if head is not None:
                f = head(f)
            out.append(f.float().numpy())
    finally:
        model.train(was_training)
    return out


def point_features(model, sweeps: list[SweepPoints], use_head: bool = False) -> list[np.ndarray]:
    """Features (K, C) float32 of each sweep's sampled points: ``model.backbone`` (a PRCModel's) in eval mode on
    the sweep's points, BEV read bilinearly at their xy; with ``use_head`` through ``model.head``."""
    def bev_of(s: SweepPoints) -> torch.Tensor:
        pts = torch.from_numpy(s.points)
        return model.backbone(pts, torch.zeros(pts.shape[0], dtype=torch.long), 1)  # (1, C, H, W)

    return _features_at_points(model, sweeps, bev_of, model.head if use_head else None,
                               model.cfg.backbone.point_range)


def camera_features(model, sweeps: list[SweepPoints], stream, use_head: bool = False) -> list[np.ndarray]:
    """Features (K, C) float32 of each sweep's sampled points from a ``RADModel``'s camera branch: the sweep's six
    images through ``stream`` (a :class:`train.data.camera.CameraStream` without augmentation), lifted to BEV in
    the LiDAR frame (``bev_aug`` = identity, as the sampled points are unaugmented), read bilinearly at the
    points; with ``use_head`` through ``model.student_head``."""
    from train.data.camera import collate_rad

    items = {it.token: it for it in stream.items}

    def bev_of(s: SweepPoints) -> torch.Tensor:
        batch = collate_rad([stream.load(items[s.token], 0)])
        batch["bev_aug"] = torch.eye(4, dtype=torch.float32)[None]
        return model.student(batch)  # (1, C, H, W)

    return _features_at_points(model, sweeps, bev_of, model.student_head if use_head else None, model.point_range)


# ---------------------------------------------------------------------------------------------------- scores
def split_scenes(scenes: list[str]) -> tuple[list[str], list[str]]:
    """(train, test): sorted names, the first ``max(1, n // 2)`` train. Needs at least two scenes."""
    names = sorted(set(scenes))
    if len(names) < 2:
        raise InputError(f"the probe needs at least two scenes (train and held-out), got {names}", None)
    n_train = max(1, len(names) // 2)
    return names[:n_train], names[n_train:]


def region_nn(feats: np.ndarray, region: np.ndarray, xy: np.ndarray | None = None, exclude_m: float = 0.0
              ) -> tuple[int, int, float]:
    """Nearest-neighbour region retrieval within one sweep.

    feats (K, C) float, region (K,) int, xy (K, 2) float metres (needed when ``exclude_m`` > 0). Candidates of a
    point: the other region points (region >= 0) of the sweep, farther than ``exclude_m`` metres in xy from it
    (BEV features are spatially smooth: this keeps plain spatial proximity from answering). Over the region
    points with at least one candidate, returns (hits, count, chance_sum): hits = points whose candidate of
    highest cosine similarity is in the same region; chance_sum = sum over points of the fraction of their
    candidates that share their region.
    """
    sel = np.flatnonzero(region >= 0)
    if sel.size < 2:
        return 0, 0, 0.0
    f = feats[sel].astype(np.float64)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    cand = ~np.eye(sel.size, dtype=bool)
    if exclude_m > 0:
        p = np.asarray(xy, np.float64)[sel]
        cand &= ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1) > exclude_m ** 2
    sim[~cand] = -np.inf
    has = cand.any(1)
    r = region[sel]
    same = r[:, None] == r[None, :]
    hits = int((r[np.argmax(sim, axis=1)] == r)[has].sum())
    chance = (same & cand).sum(1)[has] / cand.sum(1)[has]
    return hits, int(has.sum()), float(chance.sum())


def scores(features: list[np.ndarray], sweeps: list[SweepPoints], train: list[str], test: list[str],
           cfg: ProbeConfig = ProbeConfig()) -> dict:
    """Linear-probe class accuracy / balanced accuracy (fit on ``train`` scenes, scored on ``test``) and region
    nearest-neighbour accuracy (``test`` scenes); see the module docstring. Values in [0, 1] (NaN when the test
    scenes have no labelled point of the kind). Also ``n_train``, ``n_test`` (class-labelled points), ``n_region_nn``
    / ``n_region_nn_far`` (region points scored), ``chance_class_acc``, ``chance_region_nn``,
    ``chance_region_nn_far``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def stack(names):
        xs = [f[s.cls >= 0] for f, s in zip(features, sweeps) if s.scene in names]
        ys = [s.cls[s.cls >= 0] for s in sweeps if s.scene in names]
        c = features[0].shape[1] if features else 0
        return (np.concatenate(xs) if xs else np.zeros((0, c), np.float32),
                np.concatenate(ys) if ys else np.zeros(0, np.int64))

    x_tr, y_tr = stack(set(train))
    x_te, y_te = stack(set(test))
    out = {"n_train": int(y_tr.size), "n_test": int(y_te.size)}
    if y_tr.size == 0:
        raise InputError(f"no class-labelled points in the train scenes {train} (keyframes with annotations?)", None)
    classes, counts = np.unique(y_tr, return_counts=True)
    majority = classes[np.argmax(counts)]
    if y_te.size == 0:
        out.update(class_acc=float("nan"), class_bacc=float("nan"), object_bacc=float("nan"),
                   chance_class_acc=float("nan"))
    else:
        if classes.size == 1:  # nothing to fit: the only class seen
            pred = np.full(y_te.size, majority)
        else:
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=cfg.max_iter, C=cfg.C))
            with warnings.catch_warnings():  # convergence on tiny data; not an error of the probe
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(x_tr, y_tr)
            pred = clf.predict(x_te)
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected across scenes
            warnings.simplefilter("ignore", UserWarning)
            bacc = float(balanced_accuracy_score(y_te, pred))
            obj = float(balanced_accuracy_score(y_te >= 1, pred >= 1)) if np.unique(y_te >= 1).size == 2 \
                else float(np.mean((y_te >= 1) == (pred >= 1)))
        out.update(class_acc=float(accuracy_score(y_te, pred)), class_bacc=bacc, object_bacc=obj,
                   chance_class_acc=float(np.mean(y_te == majority)))
    for key, excl in (("region_nn", 0.0), ("region_nn_far", cfg.nn_exclude_m)):
        hits = count = 0
        chance = 0.0
        for f, s in zip(features, sweeps):
            if s.scene in test:
                h, c, ch = region_nn(f, s.region, s.points[s.idx, :2], excl)
                hits, count, chance = hits + h, count + c, chance + ch
        out[key] = hits / count if count else float("nan")
        out["chance_" + key] = chance / count if count else float("nan")
        out["n_" + key] = count
    return out


# ---------------------------------------------------------------------------------------------------- compare
def load_model(checkpoint: str | Path, random_init: bool = False, seed: int | None = None):
    """(model, TrainConfig, checkpoint dict) from a checkpoint file or a run folder (its latest checkpoint): a
    ``PRCModel`` for a PRC run, a ``RADModel`` for a RAD run (its camera branch is what the probe scores).

    ``random_init``: the checkpoint's configuration with fresh weights made after ``torch.manual_seed(seed)``
    (default seed: the config's ``data.seed``, as the training loop does, so: the run's initial weights).
    The global torch RNG is left as it was.
    """
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.data.seed if seed is None else int(seed))
        if cfg.task == "rad":
            from train.tasks.rad import RADModel

            model = RADModel(cfg)
        else:
            from train.tasks.prc import PRCModel

            model = PRCModel(cfg.prc)
    if not random_init:
        model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, state


def open_annotations(version: StoreVersion, dataroot: str | Path | None = None, nus_version: str | None = None):
    """devkit ``NuScenes`` of the dataset the store version was made from (``dataset.dataroot`` / ``.version``
    of its version.json unless given)."""
    from shared.nuscenes_io import open_nuscenes

    ds = version.info.get("dataset", {}) or {}
    root = dataroot if dataroot is not None else ds.get("dataroot")
    if root is None:
        raise InputError("the store version does not record its dataroot; pass --dataroot", version.path)
    return open_nuscenes(root, nus_version or ds.get("version") or "v1.0-trainval", validate=False)


def compare(checkpoint: str | Path, store: str | Path, version: str | None = None,
            dataroot: str | Path | None = None, cfg: ProbeConfig = ProbeConfig(), nusc=None) -> dict:
    """Probe a randomly initialised backbone and the checkpoint's on the same sampled, labelled points.

    Returns {"random": scores, "pretrained": scores, "train_scenes", "test_scenes", "store_version",
    "checkpoint", "checkpoint_step", "checkpoint_store_version", "use_head", "points_per_sweep"}; scores as
    :func:`scores` (keys :data:`SCORE_KEYS` plus counts and chance levels).
    """
    sv = open_version(store, version, verify_checksums=cfg.verify_shards)
    pre, tcfg, state = load_model(checkpoint)
    rnd, _, _ = load_model(checkpoint, random_init=True)
    if nusc is None:
        nusc = open_annotations(sv, dataroot)
    train, test = split_scenes(sv.scenes())
    sweeps = collect_points(sv, nusc, tcfg.prc.backbone.point_range, cfg)
    if tcfg.task == "rad":  # the camera branch: keyframes only, images without augmentation
        from train.data.camera import CameraStream

        images = dataclasses.replace(tcfg.images, augment=False,
                                     dataroot=str(dataroot) if dataroot is not None else tcfg.images.dataroot)
        stream = CameraStream(store, sv.id, images=images, n_rich=1, n_less=1,
                              point_range=tcfg.backbone.point_range, shuffle=False, nusc=nusc,
                              verify_checksums=cfg.verify_shards)
        keyframes = {it.token for it in stream.items}
        sweeps = [s for s in sweeps if s.token in keyframes]

        def features(model):
            return camera_features(model, sweeps, stream, cfg.use_head)
    else:
        def features(model):
            return point_features(model, sweeps, cfg.use_head)
    out = {"train_scenes": train, "test_scenes": test, "store_version": sv.id, "checkpoint": str(checkpoint),
           "checkpoint_step": int(state["step"]), "checkpoint_store_version": state.get("store_version"),
           "task": tcfg.task, "use_head": cfg.use_head, "points_per_sweep": cfg.points_per_sweep,
           "nn_exclude_m": cfg.nn_exclude_m}
    for name, model in (("random", rnd), ("pretrained", pre)):
        out[name] = scores(features(model), sweeps, train, test, cfg)
    return out


def format_table(result: dict) -> str:
    """A small text table: rows = scores, columns = random, pre-trained, chance."""
    rows = [("linear probe accuracy (classes)", "class_acc", "chance_class_acc"),
            ("linear probe balanced accuracy", "class_bacc", None),
            ("  object vs background, balanced", "object_bacc", None),
            ("region nearest-neighbour accuracy", "region_nn", "chance_region_nn"),
            (f"  same, neighbours > {result.get('nn_exclude_m', 0):g} m away", "region_nn_far",
             "chance_region_nn_far")]
    r, p = result["random"], result["pretrained"]
    lines = [(f"store version {result['store_version']}, {result.get('task', 'prc').upper()} checkpoint step "
              f"{result['checkpoint_step']}{' (camera branch)' if result.get('task') == 'rad' else ''}, "
              f"train scenes {', '.join(result['train_scenes'])}, held-out {', '.join(result['test_scenes'])}"),
             f"points: {p['n_train']} train / {p['n_test']} held-out class-labelled, {p['n_region_nn']} region points",
             f"{'score':36s} {'random':>8s} {'pre-trained':>12s} {'chance':>8s}"]
    for label, key, chance in rows:
        ch = f"{r[chance]:8.3f}" if chance else f"{'-':>8s}"
        lines.append(f"{label:36s} {r[key]:8.3f} {p[key]:12.3f} {ch}")
    return "\n".join(lines)
