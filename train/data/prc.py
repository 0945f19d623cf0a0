"""Streaming a store version into PyTorch for PRC pre-training (METHOD.md section 2).

:class:`PRCStream` is a ``torch.utils.data.IterableDataset`` over the sweeps of one store version. Per epoch:

1-3. the split over ranks and workers and the epoch order of :class:`train.data.stream.StoreStream`;
4. each sweep is read (only ``xyz``, ``flags``, ``region``, ``aug_params`` and ``features`` for the intensity),
   its two views are built from the **stored** augmentation records (:mod:`shared.augment_params`), points
   that are non-finite or outside ``point_range`` in either view are dropped, and N semantic-rich + M
   semantic-less points are sampled with a generator seeded by ``(seed, epoch, item index)``, so a sweep's
   sample does not depend on the worker or rank that reads it.

:func:`collate_prc` concatenates a list of those per-sweep samples into the batch the model takes::

    points      float32 (2, P, 4)   x, y, z, intensity of view 0 and view 1 (point i of both views is one point)
    batch_idx   int64   (P,)        scan of the batch (0..B-1)
    region      int64   (P,)        region id, made unique across the batch; -1 = semantic-less
    sample_idx  int64   (B, N+M)    indices into P: N semantic-rich then M semantic-less points per scan
    sample_valid bool   (B, N+M)    False where the scan has no point of that kind at all
    aug         float32 (B, 2, 7)   the stored augmentation records of the views (shared.augment_params)
    batch_size  int                 B
    tokens      list[str]           sweep tokens
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.augment_params import apply as apply_view
from shared.errors import ConfigError, InputError
from train.data.stream import Item, StoreStream, check_int, check_range

#: Arrays a PRC step needs from a sweep (nothing else is read).
PRC_ARRAYS: tuple[str, ...] = ("xyz", "flags", "region", "features", "aug_params")


def build_views(xyz: np.ndarray, finite: np.ndarray, intensity: np.ndarray, aug: np.ndarray,
                point_range) -> tuple[np.ndarray, np.ndarray]:
    """The views of one sweep (one per row of ``aug``).

    xyz (N, 3) float32 metres, finite (N,) bool, intensity (N,) float32, aug (V, 7) float32 stored records.
    Returns ``views`` (V, K, 4) float32 (x, y, z, intensity; view v = ``apply(point, aug[v])``) and ``keep``
    (N,) bool, the points kept: finite and inside ``point_range`` in every view (K = keep.sum()).
    """
    lo = np.asarray(point_range[:3], np.float32)
    hi = np.asarray(point_range[3:], np.float32)
    pts = np.concatenate([xyz.astype(np.float32), intensity.astype(np.float32)[:, None]], axis=1)
    views = [apply_view(pts, aug[v]) for v in range(len(aug))]
    keep = finite.astype(bool).copy()
    for v in views:
        keep &= np.all((v[:, :3] >= lo) & (v[:, :3] < hi), axis=1)
    return np.stack([v[keep] for v in views]), keep


def sample_points(region: np.ndarray, n_rich: int, n_less: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n_rich + n_less,) int64 into ``region`` (K,): ``n_rich`` points with region >= 0, then
    ``n_less`` with region < 0; without replacement when there are enough, with replacement otherwise.
    ``valid`` (n_rich + n_less,) bool is False for a kind that has no point at all (its indices are 0)."""
    idx = np.zeros(n_rich + n_less, np.int64)
    valid = np.zeros(n_rich + n_less, bool)
    for start, n, pool in ((0, n_rich, np.flatnonzero(region >= 0)), (n_rich, n_less, np.flatnonzero(region < 0))):
        if n == 0 or pool.size == 0:
            continue
        pick = rng.choice(pool.size, size=n, replace=pool.size < n)
        idx[start:start + n] = pool[pick]
        valid[start:start + n] = True
    return idx, valid


class PRCStream(StoreStream):
    """The sweeps of store version ``version`` (id or unique prefix; None: the latest) of ``store``, as
    per-sweep PRC samples (dicts, see :meth:`load`); batch them with :func:`collate_prc`. The split over ranks
    and workers, the epoch order and the other arguments: :class:`train.data.stream.StoreStream`."""

    def __init__(self, store: str | Path, version: str | None = None, *, n_rich: int = 1024, n_less: int = 1024,
                 point_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), **kw):
        self.n_rich = check_int("data.n_rich", n_rich, 0)
        self.n_less = check_int("data.n_less", n_less, 0)
        if self.n_rich + self.n_less == 0:
            raise ConfigError("data.n_rich", n_rich, "n_rich + n_less must be > 0")
        self.point_range = check_range(point_range)
        super().__init__(store, version, **kw)

    def load(self, item: Item, epoch: int = 0) -> dict:
        """One sweep's PRC sample: ``points`` (2, K, 4) float32, ``region`` (K,) int64, ``sample_idx``
        (N+M,) int64 into K, ``sample_valid`` (N+M,) bool, ``aug`` (2, 7), ``token`` str, ``item`` int."""
        return load_points(self.shard(item.scene), item.index, self.point_range, self.n_rich, self.n_less,
                           self.rng(item, epoch), views=2, where=self.version.path) | {"item": item.order}


def load_points(shard, index: int, point_range, n_rich: int, n_less: int, rng: np.random.Generator,
                views: int = 2, where=None) -> dict:
    """The point part of a training sample of sweep ``index`` of ``shard`` (shared by the PRC and RAD streams).

    Returns ``points`` (views, K, 4) float32 (x, y, z, intensity in each view's frame), ``region`` (K,) int64,
    ``sample_idx`` (N+M,) int64 into K, ``sample_valid`` (N+M,) bool, ``aug`` (views, 7) float32 (the stored
    records of the views), ``token`` str.
    """
    sw = shard.sweep(index, arrays=PRC_ARRAYS)
    feats = sw.raw["features"]
    intensity = feats[:, 0].astype(np.float32) if feats.shape[1] else np.zeros(len(sw), np.float32)
    aug = np.asarray(sw.aug_params)
    if aug.shape[0] < views:
        raise InputError(f"sweep {sw.token} has {aug.shape[0]} augmentation view(s), {views} are needed", where)
    pts, keep = build_views(sw.xyz, sw.finite, intensity, aug[:views], point_range)
    region = sw.region[keep].astype(np.int64)
    idx, valid = sample_points(region, n_rich, n_less, rng)
    return {"points": pts, "region": region, "sample_idx": idx, "sample_valid": valid,
            "aug": aug[:views].astype(np.float32), "token": sw.token}


def collate_prc(samples: list[dict]) -> dict:
    """Batch per-sweep samples (from :meth:`PRCStream.load`) into the model's input (module docstring)."""
    if not samples:
        raise ValueError("collate_prc needs at least one sample")
    points, batch_idx, regions, sidx = [], [], [], []
    offset_pts, offset_reg = 0, 0
    for b, s in enumerate(samples):
        k = s["region"].shape[0]
        points.append(s["points"])
        batch_idx.append(np.full(k, b, np.int64))
        reg = s["region"].astype(np.int64)
        regions.append(np.where(reg >= 0, reg + offset_reg, -1))
        offset_reg += int(reg.max()) + 1 if k and reg.max() >= 0 else 0
        sidx.append(s["sample_idx"] + offset_pts if k else np.zeros_like(s["sample_idx"]))  # invalid: 0
        offset_pts += k
    return {
        "points": torch.from_numpy(np.concatenate(points, axis=1).astype(np.float32)),
        "batch_idx": torch.from_numpy(np.concatenate(batch_idx)),
        "region": torch.from_numpy(np.concatenate(regions)),
        "sample_idx": torch.from_numpy(np.stack(sidx).astype(np.int64)),
        "sample_valid": torch.from_numpy(np.stack([s["sample_valid"] for s in samples])),
        "aug": torch.from_numpy(np.stack([s["aug"] for s in samples]).astype(np.float32)),
        "batch_size": len(samples),
        "tokens": [s["token"] for s in samples],
    }
