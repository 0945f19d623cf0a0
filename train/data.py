"""Streaming a store version into PyTorch for PRC pre-training (METHOD.md section 2).

:class:`PRCStream` is a ``torch.utils.data.IterableDataset`` over the sweeps of one store version. Per epoch:

1. the items, one per stored sweep ``(scene, index)``, are ordered scene by scene with the scenes in an order
   shuffled by ``(seed, epoch)``;
2. that list is cut into ``world_size x num_workers`` contiguous, near-equal parts, one per (rank, worker):
   no item is in two parts and every item is in one (:meth:`PRCStream.items_for`); contiguous parts keep a
   worker on few scenes, so it reads each scene's arrays about once (a shard is read whole, per array);
3. each part is shuffled within windows of ``shuffle_scenes`` scenes' items (seeded by seed, epoch, part);
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
    batch_size  int                 B
    tokens      list[str]           sweep tokens
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_catalog.reader import open_version
from shared.augment_params import apply as apply_view
from shared.errors import ConfigError, InputError

#: Arrays a PRC step needs from a sweep (nothing else is read).
PRC_ARRAYS: tuple[str, ...] = ("xyz", "flags", "region", "features", "aug_params")


@dataclass(frozen=True)
class Item:
    """One sweep of the version: position ``order`` in the sorted (scene, index) list."""

    order: int
    scene: str
    index: int


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _check_range(point_range) -> tuple[float, ...]:
    r = tuple(float(v) for v in point_range)
    if len(r) != 6 or not all(math.isfinite(v) for v in r) or not all(r[i] < r[i + 3] for i in range(3)):
        raise ConfigError("data.point_range", point_range,
                          "must be six finite numbers (x_min, y_min, z_min, x_max, y_max, z_max) with min < max")
    return r


def build_views(xyz: np.ndarray, finite: np.ndarray, intensity: np.ndarray, aug: np.ndarray,
                point_range) -> tuple[np.ndarray, np.ndarray]:
    """The two views of one sweep.

    xyz (N, 3) float32 metres, finite (N,) bool, intensity (N,) float32, aug (V>=2, 7) float32 stored records.
    Returns ``views`` (2, K, 4) float32 (x, y, z, intensity; view v = ``apply(point, aug[v])``) and ``keep``
    (N,) bool, the points kept: finite and inside ``point_range`` in both views (K = keep.sum()).
    """
    lo = np.asarray(point_range[:3], np.float32)
    hi = np.asarray(point_range[3:], np.float32)
    pts = np.concatenate([xyz.astype(np.float32), intensity.astype(np.float32)[:, None]], axis=1)
    views = [apply_view(pts, aug[v]) for v in range(2)]
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


class PRCStream(IterableDataset):
    """The sweeps of store version ``version`` (id or unique prefix; None: the latest) of ``store``, as
    per-sweep PRC samples (dicts, see :meth:`load`); batch them with :func:`collate_prc`.

    rank, world_size: this process's share (default: from ``torch.distributed`` when initialised, else 0, 1).
    shuffle_scenes: scenes whose sweeps are shuffled together inside a worker's part (bounds open shards).
    global_batch: when set (this process's batch size B), split so that step k of every rank together reads
        the same W*B sweeps as step k of one process with batch W*B: the epoch's order is cut into blocks of B,
        block q goes to rank q % W and, inside the rank, to worker (q // W) % num_workers (the DataLoader's
        round robin then yields them in order). Each rank then touches every scene (more shard reads); it is
        for checking DDP against one process, the default contiguous split is for real runs.
    """

    def __init__(self, store: str | Path, version: str | None = None, *, n_rich: int = 1024, n_less: int = 1024,
                 seed: int = 0, point_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), shuffle: bool = True,
                 shuffle_scenes: int = 4, rank: int | None = None, world_size: int | None = None,
                 scenes: list[str] | None = None, global_batch: int | None = None):
        super().__init__()
        for name, val, lo in (("data.n_rich", n_rich, 0), ("data.n_less", n_less, 0), ("data.seed", seed, 0),
                              ("data.shuffle_scenes", shuffle_scenes, 1)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
                raise ConfigError(name, val, f"must be an integer >= {lo}")
        if n_rich + n_less == 0:
            raise ConfigError("data.n_rich", n_rich, "n_rich + n_less must be > 0")
        self.store = Path(store)
        self._version = open_version(store, version)
        #: The id of the store version this stream reads.
        self.store_version: str = self._version.id
        self.n_rich, self.n_less, self.seed = int(n_rich), int(n_less), int(seed)
        self.point_range = _check_range(point_range)
        self.shuffle, self.shuffle_scenes = bool(shuffle), int(shuffle_scenes)
        self._rank, self._world = rank, world_size
        if global_batch is not None and (isinstance(global_batch, bool) or int(global_batch) < 1):
            raise ConfigError("data.global_batch", global_batch, "must be None or an integer >= 1")
        self.global_batch = None if global_batch is None else int(global_batch)
        names = self._version.scenes() if scenes is None else list(scenes)
        if not names:
            raise InputError(f"store version {self.store_version} has no committed scenes", self._version.path)
        items, order = [], 0
        for name in names:
            for i in range(len(self._version.scene(name))):
                items.append(Item(order, name, i))
                order += 1
        #: Every sweep of the version, sorted by (scene, index).
        self.items: list[Item] = items
        self.epoch = 0
        self._open: OrderedDict[str, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call before iterating; DataLoader workers see it at their start)."""
        self.epoch = int(epoch)

    def check_version(self, expected: str) -> None:
        """Raise :class:`InputError` naming both ids when this stream's store version is not ``expected``."""
        if expected != self.store_version:
            raise InputError(f"store version mismatch: the checkpoint was trained on version {expected}, "
                             f"this store version is {self.store_version}", self.store)

    # ------------------------------------------------------------------ split and order
    def epoch_order(self, epoch: int) -> list[Item]:
        """All items of ``epoch``, scenes in a shuffled order (seed, epoch), each scene's sweeps together."""
        by_scene: dict[str, list[Item]] = {}
        for it in self.items:
            by_scene.setdefault(it.scene, []).append(it)
        scenes = list(by_scene)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, 0])
            scenes = [scenes[i] for i in rng.permutation(len(scenes))]
        return [it for s in scenes for it in by_scene[s]]

    def items_for(self, rank: int, world_size: int, worker: int, num_workers: int, epoch: int) -> list[Item]:
        """The items (rank, worker) reads in ``epoch``, in reading order. Over all ranks and workers: each
        item exactly once."""
        if not (0 <= rank < world_size and 0 <= worker < num_workers):
            raise ValueError(f"bad share rank={rank}/{world_size} worker={worker}/{num_workers}")
        order = self.epoch_order(epoch)
        if self.global_batch is not None:
            b = self.global_batch
            if self.shuffle:
                order = [order[i] for i in np.random.default_rng([self.seed, epoch, 2]).permutation(len(order))]
            blocks = [order[i:i + b] for i in range(0, len(order), b)]
            return [it for q, blk in enumerate(blocks)
                    if q % world_size == rank and (q // world_size) % num_workers == worker for it in blk]
        parts = world_size * num_workers
        part = rank * num_workers + worker
        a, b = (len(order) * part) // parts, (len(order) * (part + 1)) // parts
        mine = order[a:b]
        if not self.shuffle:
            return mine
        rng = np.random.default_rng([self.seed, epoch, 1, part])
        out, window, seen = [], [], []
        for it in mine:  # windows of `shuffle_scenes` consecutive scenes, shuffled inside
            if it.scene not in seen:
                if len(seen) == self.shuffle_scenes:
                    out += [window[i] for i in rng.permutation(len(window))]
                    window, seen = [], []
                seen.append(it.scene)
            window.append(it)
        out += [window[i] for i in rng.permutation(len(window))]
        return out

    def _share(self) -> tuple[int, int, int, int]:
        rank, world = _dist_rank_world()
        if self._rank is not None:
            rank = self._rank
        if self._world is not None:
            world = self._world
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, worker, workers

    def __iter__(self):
        rank, world, worker, workers = self._share()
        for it in self.items_for(rank, world, worker, workers, self.epoch):
            yield self.load(it, self.epoch)

    # ------------------------------------------------------------------ one sweep
    def _shard(self, scene: str):
        if scene in self._open:
            self._open.move_to_end(scene)
            return self._open[scene]
        from data_catalog.reader import Shard

        shard = Shard(self._version.scene(scene).path)  # a fresh one: its cache is ours to drop
        self._open[scene] = shard
        while len(self._open) > self.shuffle_scenes + 1:
            self._open.popitem(last=False)
        return shard

    def load(self, item: Item, epoch: int = 0) -> dict:
        """One sweep's PRC sample: ``points`` (2, K, 4) float32, ``region`` (K,) int64, ``sample_idx``
        (N+M,) int64 into K, ``sample_valid`` (N+M,) bool, ``token`` str, ``item`` int (its order)."""
        sw = self._shard(item.scene).sweep(item.index, arrays=PRC_ARRAYS)
        feats = sw.raw["features"]
        intensity = feats[:, 0].astype(np.float32) if feats.shape[1] else np.zeros(len(sw), np.float32)
        aug = np.asarray(sw.aug_params)
        if aug.shape[0] < 2:
            raise InputError(f"sweep {sw.token} has {aug.shape[0]} augmentation view(s), PRC needs 2",
                             self._version.path)
        views, keep = build_views(sw.xyz, sw.finite, intensity, aug, self.point_range)
        region = sw.region[keep].astype(np.int64)
        rng = np.random.default_rng([self.seed, int(epoch), int(item.order)])
        idx, valid = sample_points(region, self.n_rich, self.n_less, rng)
        return {"points": views, "region": region, "sample_idx": idx, "sample_valid": valid,
                "token": sw.token, "item": item.order}


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
        "batch_size": len(samples),
        "tokens": [s["token"] for s in samples],
    }
