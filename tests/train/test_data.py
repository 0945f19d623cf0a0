"""The PRC stream: item split over ranks and workers, reproducible batches, views from the stored records,
the batch format, the store-version check, and train/ never importing preprocess/."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_catalog.reader import open_version
from shared.augment_params import apply, apply_inverse
from shared.errors import InputError
from train.data import PRCStream, collate_prc, sample_points

REPO = Path(__file__).resolve().parents[2]
RANGE = (-25.6, -25.6, -5.0, 25.6, 25.6, 3.0)


def _stream(train_store, **kw):
    store, vid = train_store
    kw.setdefault("n_rich", 64)
    kw.setdefault("n_less", 32)
    kw.setdefault("point_range", RANGE)
    return PRCStream(store, vid, **kw)


@pytest.mark.parametrize("shuffle_scenes, global_batch", [(1, None), (4, None), (4, 1), (4, 2)])
def test_items_split_over_ranks_and_workers_exactly_once(train_store, shuffle_scenes, global_batch):
    s = _stream(train_store, shuffle_scenes=shuffle_scenes, global_batch=global_batch)
    everything = sorted(it.order for it in s.items)
    assert everything == list(range(6))
    for world in (1, 2, 3, 4):
        for workers in (1, 2, 3):
            for epoch in (0, 1, 5):
                got = [it.order for r in range(world) for w in range(workers)
                       for it in s.items_for(r, world, w, workers, epoch)]
                assert sorted(got) == everything, (world, workers, epoch)


def test_global_batch_split_gives_ranks_the_single_process_batches(train_store):
    one = _stream(train_store, global_batch=2)
    one.set_epoch(2)
    single = [b["tokens"] for b in DataLoader(one, batch_size=2, collate_fn=collate_prc)]
    per_rank = []
    for rank in range(2):
        s = _stream(train_store, global_batch=1, rank=rank, world_size=2)
        s.set_epoch(2)
        per_rank.append([b["tokens"] for b in DataLoader(s, batch_size=1, collate_fn=collate_prc, num_workers=2)])
    assert len(single) == 3 and len(per_rank[0]) == len(per_rank[1]) == 3
    assert [sorted(a + b) for a, b in zip(*per_rank)] == [sorted(t) for t in single]


def test_dataloader_workers_and_ranks_read_every_sweep_once(train_store):
    store, vid = train_store
    tokens = Counter()
    for rank in range(2):
        s = _stream(train_store, rank=rank, world_size=2)
        s.set_epoch(3)
        for batch in DataLoader(s, batch_size=2, collate_fn=collate_prc, num_workers=2):
            tokens.update(batch["tokens"])
    v = open_version(store, vid)
    expected = Counter(t for name in v.scenes() for t in v.scene(name).tokens)
    assert tokens == expected and len(expected) == 6


def test_epochs_reshuffle_and_seeds_reproduce(train_store):
    s = _stream(train_store)
    orders = {e: [it.order for it in s.items_for(0, 1, 0, 1, e)] for e in range(6)}
    assert len({tuple(o) for o in orders.values()}) > 1  # the order changes across epochs

    def batches(seed, epoch):
        st = _stream(train_store, seed=seed)
        st.set_epoch(epoch)
        return list(DataLoader(st, batch_size=3, collate_fn=collate_prc))

    a, b, c = batches(0, 1), batches(0, 1), batches(1, 1)
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"]
        for k in ("points", "batch_idx", "region", "sample_idx", "sample_valid"):
            assert torch.equal(x[k], y[k]), k
    # another seed: another sample of points (the same sweep gets other indices)
    first = {t: (bt, i) for bt in a for i, t in enumerate(bt["tokens"])}
    other = {t: (bt, i) for bt in c for i, t in enumerate(bt["tokens"])}
    t0 = next(iter(first))

    def picked(entry):
        bt, i = entry
        return bt["points"][0][bt["sample_idx"][i]]

    assert not torch.equal(picked(first[t0]), picked(other[t0]))


def test_views_are_the_stored_augmentations_of_the_same_points(train_store):
    store, vid = train_store
    s = _stream(train_store, shuffle=False)
    v = open_version(store, vid)
    for item in s.items[:3]:
        sample = s.load(item)
        sw = v.scene(item.scene).sweep(item.index)
        xyz, rec = sw.xyz, sw.aug_params
        pts = np.concatenate([xyz, sw.features[:, :1].astype(np.float32)], axis=1)
        v0, v1 = apply(pts, rec[0]), apply(pts, rec[1])
        inside = sw.finite.copy()
        for view in (v0, v1):
            inside &= np.all((view[:, :3] >= RANGE[:3]) & (view[:, :3] < RANGE[3:]), axis=1)
        assert 0 < inside.sum() < len(sw)  # the range drops some points of this sweep, keeps most
        np.testing.assert_array_equal(sample["points"][0], v0[inside])
        np.testing.assert_array_equal(sample["points"][1], v1[inside])
        np.testing.assert_array_equal(sample["region"], sw.region[inside])
        # point i of both views is one point: undoing each view's record gives the same stored point
        back0 = apply_inverse(sample["points"][0], rec[0])[:, :3]
        back1 = apply_inverse(sample["points"][1], rec[1])[:, :3]
        np.testing.assert_allclose(back0, back1, atol=1e-3)
        np.testing.assert_allclose(back0, xyz[inside], atol=1e-3)
        assert sample["token"] == sw.token


def test_collate_builds_the_batch_format(train_store):
    s = _stream(train_store, shuffle=False)
    samples = [s.load(it) for it in s.items[:3]]
    b = collate_prc(samples)
    k = [len(x["region"]) for x in samples]
    assert b["points"].shape == (2, sum(k), 4) and b["points"].dtype == torch.float32
    assert b["batch_idx"].dtype == torch.int64 and b["batch_idx"].tolist() == [i for i, n in enumerate(k) for _ in range(n)]
    assert b["sample_idx"].shape == (3, 96) and b["sample_idx"].dtype == torch.int64
    assert b["sample_valid"].dtype == torch.bool and bool(b["sample_valid"].all())
    assert b["batch_size"] == 3 and b["tokens"] == [x["token"] for x in samples]
    region, bidx = b["region"], b["batch_idx"]
    seen = set()
    for i in range(3):  # regions of different scans never share an id; -1 stays -1
        ids = set(region[(bidx == i) & (region >= 0)].tolist())
        assert ids and not (ids & seen)
        seen |= ids
        raw = samples[i]["region"]
        assert torch.equal(region[bidx == i] < 0, torch.from_numpy(raw < 0))
        rich, less = b["sample_idx"][i, :64], b["sample_idx"][i, 64:]
        assert bool((bidx[b["sample_idx"][i]] == i).all())
        assert bool((region[rich] >= 0).all()) and bool((region[less] == -1).all())
    # relabelled, the regions keep their partition within a scan
    for i in range(3):
        raw = samples[i]["region"]
        got = region[bidx == i].numpy()
        pairs = {(a, c) for a, c in zip(raw[raw >= 0], got[raw >= 0])}
        assert len(pairs) == len({a for a, _ in pairs}) == len({c for _, c in pairs})


def test_sampling_with_replacement_and_validity():
    rng = np.random.default_rng(0)
    region = np.array([-1, 3, -1, 3, 5, -1], np.int16)
    idx, valid = sample_points(region, 8, 2, rng)
    assert valid.all()
    assert set(idx[:8].tolist()) <= {1, 3, 4} and set(idx[8:].tolist()) <= {0, 2, 5}
    assert len(set(idx[8:].tolist())) == 2  # enough points: no repeats
    idx, valid = sample_points(np.full(5, -1, np.int16), 4, 3, rng)
    assert not valid[:4].any() and valid[4:].all() and (idx[:4] == 0).all()


def test_check_version_refuses_another_store_version(train_store):
    s = _stream(train_store)
    s.check_version(s.store_version)
    with pytest.raises(InputError) as exc:
        s.check_version("0123456789abcdef")
    assert "0123456789abcdef" in str(exc.value) and s.store_version in str(exc.value)


def test_bad_point_range_is_a_config_error(train_store):
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="data.point_range"):
        _stream(train_store, point_range=(0, 0, 0, -1, 1, 1))


def test_train_never_imports_preprocess():
    code = (
        "import importlib, pkgutil, sys, train\n"
        "mods = [m.name for m in pkgutil.walk_packages(train.__path__, 'train.')]\n"
        "for m in mods + ['calico.commands.train']: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'preprocess' or m.startswith('preprocess.'))\n"
        "assert 'train.data' in sys.modules and 'train.loop' in sys.modules, mods\n"
        "print(bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
