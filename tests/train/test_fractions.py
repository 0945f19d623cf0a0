"""Label fractions (train/data/fractions.py): the stride over scenes or keyframes, its determinism and nesting,
validation, and that the annotations of a subset are read without touching any other annotation."""
from __future__ import annotations

import math
import random

import pytest

from shared.errors import ConfigError, InputError
from train.data.fractions import (FRACTIONS, Subset, annotations_of, keyframe_rows, select, split_scenes,
                                  stride_positions, subset, subset_tokens)


@pytest.fixture(scope="module")
def nusc(synth_root):
    from shared.nuscenes_io import open_nuscenes

    root, version = synth_root
    return open_nuscenes(root, version)


@pytest.fixture(scope="module")
def train_names():
    """The devkit's 700 nuScenes training scenes."""
    from nuscenes.utils.splits import create_splits_scenes

    return create_splits_scenes()["train"]


@pytest.mark.parametrize("fraction,stride", [(0.05, 20), (0.1, 10), (0.2, 5), (0.5, 2), (1.0, 1)])
def test_the_paper_fractions_are_the_prototype_stride_over_sorted_scenes(train_names, fraction, stride):
    """``sorted(train)[::int(1 / fraction)]``: 35, 70, 140, 350, 700 of nuScenes' 700 training scenes."""
    got = select(train_names, fraction)
    assert got == tuple(sorted(train_names)[::stride])
    assert len(got) == math.ceil(len(train_names) * fraction)


def test_same_fraction_same_subset_whatever_the_input_order(train_names):
    shuffled = list(train_names)
    random.Random(1).shuffle(shuffled)
    for f in FRACTIONS:
        assert select(shuffled, f) == select(train_names, f)


def test_nesting_follows_the_strides(train_names):
    sets = {f: set(select(train_names, f)) for f in FRACTIONS}
    assert sets[0.05] < sets[0.1] < sets[0.2] < sets[1.0]
    assert sets[0.05] < sets[0.1] < sets[0.5] < sets[1.0]
    assert not sets[0.2] <= sets[0.5]  # stride 5 is not a multiple of stride 2 (documented)


@pytest.mark.parametrize("n", [1, 2, 7, 19, 20, 21, 700])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5, 2 / 3, 1.0])
def test_stride_positions_count_and_spread(n, fraction):
    """ceil(n * f) distinct increasing positions in range, the first 0, consecutive ones 1/f apart (+-1)."""
    pos = stride_positions(n, fraction)
    assert len(pos) == math.ceil(n * fraction - 1e-9) >= 1 and pos[0] == 0
    assert all(0 <= p < n for p in pos) and list(pos) == sorted(set(pos))
    assert all(abs((b - a) - 1 / fraction) < 1 for a, b in zip(pos, pos[1:]))


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), "0.1", True, None])
def test_a_bad_fraction_is_a_config_error_naming_it(bad):
    with pytest.raises(ConfigError) as exc:
        select(["scene-0001"], bad)
    assert "fraction" in str(exc.value) and repr(bad) in str(exc.value)


def test_bad_by_and_empty_inputs():
    with pytest.raises(ConfigError, match="fraction_by"):
        select(["scene-0001"], 0.5, by="frames")
    with pytest.raises(InputError, match="no training scenes"):
        select([], 0.5)
    with pytest.raises(InputError, match="repeat"):
        select(["scene-0001", "scene-0001"], 0.5)


def test_subsets_of_the_generated_dataset(nusc):
    """tiny: one training scene (mini_train's scene-0061) of 3 keyframes, one val scene. By scenes even 5 %
    keeps that one scene (never empty); by samples 5 % is its first keyframe, 100 % all three; nothing of the
    val scene is ever selected."""
    train = split_scenes(nusc, "mini_train")
    assert train == ["scene-0061"] and split_scenes(nusc, "mini_val") == ["scene-0103"]
    rows = keyframe_rows(nusc, train)
    assert len(rows) == 3 and [r[1] for r in rows] == sorted(r[1] for r in rows)
    all_train = tuple(r[2] for r in rows)
    assert subset_tokens(nusc, 0.05) == subset_tokens(nusc, 1.0) == all_train
    s5 = subset(nusc, 0.05, by="samples")
    assert s5.sample_tokens == all_train[:1] and s5.scenes == ("scene-0061",) and s5.split == "mini_train"
    assert subset(nusc, 1.0, by="samples").sample_tokens == all_train
    assert subset(nusc, 0.5, by="samples").sample_tokens == (all_train[0], all_train[2])
    assert Subset.from_dict(s5.to_dict()) == s5
    with pytest.raises(InputError, match="no scene of split 'test'"):
        subset(nusc, 0.5, split="test")


class RecordingTable(list):
    """A table (list of records) that records every position read and refuses to be iterated whole."""

    def __init__(self, rows):
        super().__init__(rows)
        self.read: set[int] = set()

    def __getitem__(self, i):
        self.read.add(i)
        return super().__getitem__(i)

    def __iter__(self):
        raise AssertionError("the whole annotation table was iterated")


def test_annotations_of_a_subset_read_nothing_outside_it(nusc, monkeypatch):
    """Of the annotation table, only the records of the subset's samples are read (every one of them), though
    the dataset has annotations outside the subset."""
    tokens = subset_tokens(nusc, 0.05, by="samples")
    inside = {a for t in tokens for a in nusc.get("sample", t)["anns"]}
    assert inside and len(inside) < len(nusc.sample_annotation)  # there is something outside to not read
    table = RecordingTable(nusc.sample_annotation)
    monkeypatch.setattr(nusc, "sample_annotation", table)
    anns = annotations_of(nusc, tokens)
    read_tokens = {list.__getitem__(table, i)["token"] for i in table.read}
    assert read_tokens == inside == {a["token"] for a in anns}
    assert all(a["sample_token"] in tokens for a in anns)
