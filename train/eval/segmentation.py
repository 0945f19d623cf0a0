"""BEV map-segmentation IoU as BEVFusion computes it (``NuScenesDataset.evaluate_map``; METHOD.md section 4).

Per class and per threshold ``t`` in :data:`THRESHOLDS` (0.35..0.65, step 0.05) a cell is predicted positive when
its probability is ``>= t``; true positives, false positives and false negatives are summed over every cell of
every sample of the split (not a mean of per-sample IoUs); ``IoU = TP / (TP + FP + FN)``. A class scores the best
IoU over the thresholds (``iou@max``), and mIoU is the mean of those over the classes.

One deliberate difference: BEVFusion divides by ``TP + FP + FN + 1e-7``, which scores a class with no ground truth
and no prediction anywhere in the split as 0; here its IoU is NaN and it is left out of the mean (with every
class present, as on nuScenes val, the two agree to 1e-7).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from shared.errors import ConfigError

#: BEVFusion's thresholds.
THRESHOLDS: tuple[float, ...] = (0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65)


@dataclass(frozen=True)
class SegCounts:
    """Cell counts (C, T) int64 per class and threshold: true positives, false positives, false negatives."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    thresholds: tuple[float, ...] = THRESHOLDS

    def __add__(self, other: SegCounts) -> SegCounts:
        if self.tp.shape != other.tp.shape or self.thresholds != other.thresholds:
            raise ConfigError("segmentation counts", (self.tp.shape, other.tp.shape),
                              "can only add counts of the same classes and thresholds")
        return SegCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.thresholds)


def zero_counts(num_classes: int, thresholds: Sequence[float] = THRESHOLDS) -> SegCounts:
    """Counts of no samples."""
    z = np.zeros((num_classes, len(thresholds)), dtype=np.int64)
    return SegCounts(z, z.copy(), z.copy(), tuple(float(t) for t in thresholds))


def sample_counts(pred, label, thresholds: Sequence[float] = THRESHOLDS) -> SegCounts:
    """Counts of one sample or a batch: ``pred`` probabilities (C, H, W) or (B, C, H, W), ``label`` 0/1 of the same
    shape (numpy or torch)."""
    p, g = _numpy(pred).astype(np.float64), _numpy(label)
    if p.shape != g.shape or p.ndim not in (3, 4):
        raise ConfigError("pred/label", (p.shape, g.shape), "expected equal shapes (C, H, W) or (B, C, H, W)")
    if p.ndim == 3:
        p, g = p[None], g[None]
    c = p.shape[1]
    p = np.moveaxis(p, 1, 0).reshape(c, -1)
    g = np.moveaxis(g, 1, 0).reshape(c, -1).astype(bool)
    out = zero_counts(c, thresholds)
    for k, t in enumerate(out.thresholds):
        pos = p >= t
        out.tp[:, k] = np.count_nonzero(pos & g, axis=1)
        out.fp[:, k] = np.count_nonzero(pos & ~g, axis=1)
        out.fn[:, k] = np.count_nonzero(~pos & g, axis=1)
    return out


def accumulate(pairs: Iterable[tuple[object, object]], num_classes: int,
               thresholds: Sequence[float] = THRESHOLDS) -> SegCounts:
    """Counts summed over ``(pred, label)`` pairs (each as :func:`sample_counts` takes them)."""
    total = zero_counts(num_classes, thresholds)
    for pred, label in pairs:
        total = total + sample_counts(pred, label, thresholds)
    return total


def iou_table(counts: SegCounts) -> np.ndarray:
    """IoU (C, T) float64; NaN where a class has an empty union at that threshold."""
    union = counts.tp + counts.fp + counts.fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, counts.tp / np.maximum(union, 1), np.nan)


def scores(counts: SegCounts, classes: Sequence[str]) -> dict:
    """The report: per class ``iou@<t>`` for each threshold, ``iou@max`` and the ``best_threshold``; ``mIoU`` the
    mean of ``iou@max`` over the classes with a non-empty union."""
    iou = iou_table(counts)
    if len(classes) != iou.shape[0]:
        raise ConfigError("classes", list(classes), f"expected {iou.shape[0]} class names")
    per_class = {}
    best = np.full(len(classes), np.nan)
    for c, name in enumerate(classes):
        row = iou[c]
        entry = {f"iou@{t:.2f}": float(v) for t, v in zip(counts.thresholds, row, strict=True)}
        if np.isfinite(row).any():
            k = int(np.nanargmax(row))
            best[c] = row[k]
            entry.update({"iou@max": float(row[k]), "best_threshold": counts.thresholds[k]})
        else:
            entry.update({"iou@max": float("nan"), "best_threshold": None})
        per_class[name] = entry
    present = np.isfinite(best)
    miou = float(best[present].mean()) if present.any() else float("nan")
    return {"classes": per_class, "mIoU": miou, "thresholds": list(counts.thresholds),
            "classes_scored": [n for n, ok in zip(classes, present, strict=True) if ok]}


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
