"""The generic part of every training stream: the sweeps of one store version, split over ranks and DataLoader
workers, in a reproducible per-epoch order, with an LRU cache of open shards.

:class:`StoreStream` is a ``torch.utils.data.IterableDataset``; a task's stream subclasses it and implements
:meth:`StoreStream.load` (one item -> one per-sweep sample dict). Per epoch:

1. the items, one per stored sweep ``(scene, index)`` (optionally only some tokens, e.g. the keyframes), are
   ordered scene by scene with the scenes in an order shuffled by ``(seed, epoch)``;
2. that list is cut into ``world_size x num_workers`` contiguous, near-equal parts, one per (rank, worker):
   no item is in two parts and every item is in one (:meth:`StoreStream.items_for`); contiguous parts keep a
   worker on few scenes, so it reads each scene's arrays about once (a shard is read whole, per array);
3. each part is shuffled within windows of ``shuffle_scenes`` scenes' items (seeded by seed, epoch, part);
4. each item is loaded by the subclass with a generator it seeds from ``(seed, epoch, item.order)`` (see
   :meth:`StoreStream.rng`), so a sweep's sample does not depend on the worker or rank that reads it.

``global_batch`` (for checking DDP against one process) replaces step 2 by a block split, see the class.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_catalog.reader import Shard, open_version
from shared.errors import ConfigError, InputError


@dataclass(frozen=True)
class Item:
    """One sweep of the version: position ``order`` in the sorted (scene, index) list, and its token."""

    order: int
    scene: str
    index: int
    token: str = ""


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of ``torch.distributed`` when initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def check_range(point_range) -> tuple[float, ...]:
    """Six finite floats (x0, y0, z0, x1, y1, z1) with min < max, else :class:`ConfigError`."""
    r = tuple(float(v) for v in point_range)
    if len(r) != 6 or not all(math.isfinite(v) for v in r) or not all(r[i] < r[i + 3] for i in range(3)):
        raise ConfigError("data.point_range", point_range,
                          "must be six finite numbers (x_min, y_min, z_min, x_max, y_max, z_max) with min < max")
    return r


def check_int(name: str, val, lo: int) -> int:
    if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
        raise ConfigError(name, val, f"must be an integer >= {lo}")
    return int(val)


class StoreStream(IterableDataset):
    """The sweeps of store version ``version`` (id or unique prefix; None: the latest) of ``store``; subclasses
    implement :meth:`load`.

    rank, world_size: this process's share (default: from ``torch.distributed`` when initialised, else 0, 1).
    scenes: only these scenes (default: every committed scene). tokens: only sweeps with these tokens.
    shuffle_scenes: scenes whose sweeps are shuffled together inside a worker's part (bounds open shards).
    verify_checksums: check each shard's files against the SHA-256 of its manifest when first opened in this
        process (sizes are always checked; :func:`data_catalog.reader.check_shard`); ``data.verify_shards``.
    global_batch: when set (this process's batch size B), split so that step k of every rank together reads
        the same W*B sweeps as step k of one process with batch W*B: the epoch's order is cut into blocks of B,
        block q goes to rank q % W and, inside the rank, to worker (q // W) % num_workers (the DataLoader's
        round robin then yields them in order). Each rank then touches every scene (more shard reads); it is
        for checking DDP against one process, the default contiguous split is for real runs.
    """

    def __init__(self, store: str | Path, version: str | None = None, *, seed: int = 0, shuffle: bool = True,
                 shuffle_scenes: int = 4, rank: int | None = None, world_size: int | None = None,
                 scenes: list[str] | None = None, tokens: Iterable[str] | None = None,
                 global_batch: int | None = None, verify_checksums: bool = True):
        super().__init__()
        self.seed = check_int("data.seed", seed, 0)
        self.shuffle_scenes = check_int("data.shuffle_scenes", shuffle_scenes, 1)
        self.store = Path(store)
        self.verify_checksums = bool(verify_checksums)
        self._version = open_version(store, version, verify_checksums=self.verify_checksums)
        #: The id of the store version this stream reads.
        self.store_version: str = self._version.id
        self.shuffle = bool(shuffle)
        self._rank, self._world = rank, world_size
        if global_batch is not None and (isinstance(global_batch, bool) or int(global_batch) < 1):
            raise ConfigError("data.global_batch", global_batch, "must be None or an integer >= 1")
        self.global_batch = None if global_batch is None else int(global_batch)
        names = self._version.scenes() if scenes is None else list(scenes)
        if not names:
            raise InputError(f"store version {self.store_version} has no committed scenes", self._version.path)
        wanted = None if tokens is None else set(tokens)
        items, order = [], 0
        for name in names:
            for i, tok in enumerate(self._version.scene(name).tokens):
                if wanted is None or tok in wanted:
                    items.append(Item(order, name, i, tok))
                    order += 1
        if not items:
            raise InputError(f"store version {self.store_version} has no sweep this stream can use",
                             self._version.path)
        #: The sweeps of the version this stream reads, sorted by (scene, index).
        self.items: list[Item] = items
        self.epoch = 0
        self._open: OrderedDict[str, Shard] = OrderedDict()

    @property
    def version(self):
        """The :class:`data_catalog.reader.StoreVersion` read."""
        return self._version

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

    def rng(self, item: Item, epoch: int) -> np.random.Generator:
        """The generator of ``item``'s sample in ``epoch`` (independent of rank and worker)."""
        return np.random.default_rng([self.seed, int(epoch), int(item.order)])

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
        rank, world = dist_rank_world()
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

    # ------------------------------------------------------------------ reading
    def shard(self, scene: str) -> Shard:
        """The open shard of ``scene`` (an LRU of ``shuffle_scenes + 1`` shards per process: a fresh
        :class:`Shard` per stream, so its array cache is this stream's to drop)."""
        if scene in self._open:
            self._open.move_to_end(scene)
            return self._open[scene]
        shard = Shard(self._version.scene(scene).path, self.verify_checksums)
        self._open[scene] = shard
        while len(self._open) > self.shuffle_scenes + 1:
            self._open.popitem(last=False)
        return shard

    def load(self, item: Item, epoch: int = 0) -> dict:
        """One item's sample (a dict of numpy arrays and plain values); implemented by each task's stream."""
        raise NotImplementedError
