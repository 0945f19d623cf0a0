"""Label fractions for fine-tuning: which training scenes (or keyframes) a run with ``fraction`` of the labels uses.

A deterministic stride (METHOD.md section 4 and the prototype's ``train_scenes[::int(1 / fraction)]``): the
training scenes sorted by name (``by="scenes"``, the default) or the training keyframes in (scene name, time)
order (``by="samples"``, for small generated sets), positions ``floor(i / fraction)`` for i = 0, 1, ... (exact
rational arithmetic): ``items[::20]`` at 5 %, ``[::10]`` at 10 %, ``[::5]`` at 20 %, ``[::2]`` at 50 %, all at
100 %, i.e. ``ceil(n * fraction)`` items (nuScenes' 700 training scenes: 35, 70, 140, 350, 700), always including
the first one, so never empty. Other fractions in (0, 1] take the same rule (0.3: positions 0, 3, 6, 10, 13, ...).

Same fraction and dataset, same subset: nothing is random, and the order does not depend on the tables' order.
Nesting follows from the strides: a subset is contained in another when its stride is a multiple of the other's,
so 5 % < 10 % < 20 % and 5 % < 10 % < 50 % (and every one < 100 %), but 20 % is not inside 50 % (20 % holds
positions 5, 15, ...). We keep the plain stride anyway: it is the protocol the paper's numbers come from.

The train/val split is the devkit's (``nuscenes.utils.splits.create_splits_scenes``): ``train``/``val`` for
``v1.0-trainval``, ``mini_train``/``mini_val`` for ``v1.0-mini``; generated datasets (``calico synth``) use
those same scene names by construction (``shared/synth/tables.py::scene_names``), so one rule serves both. The
split's scenes that the dataroot lacks are left out; none at all is an :class:`InputError`.

:func:`subset` gives the :class:`Subset` (JSON-able with ``to_dict``, for runs and checkpoints);
:func:`annotations_of` reads the annotations of given samples only: anything built from labels (class
statistics, a ground-truth database for object pasting) must be built from it, on the subset's tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

from shared.errors import ConfigError, InputError

#: The label fractions of the paper's tables.
FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)
#: What the stride runs over.
BY: tuple[str, ...] = ("scenes", "samples")
#: nuScenes version -> (train split, val split) of the devkit.
SPLITS: dict[str, tuple[str, str]] = {"v1.0-trainval": ("train", "val"), "v1.0-mini": ("mini_train", "mini_val")}


def check_fraction(fraction) -> float:
    """``fraction`` as a float in (0, 1]; :class:`ConfigError` naming the value otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction <= 1:
        raise ConfigError("fraction", fraction, f"must be a number in (0, 1] (the paper's: "
                          f"{', '.join(str(f) for f in FRACTIONS)})")
    return float(fraction)


def check_by(by) -> str:
    if by not in BY:
        raise ConfigError("fraction_by", by, f"must be one of {', '.join(BY)}")
    return by


def stride_positions(n: int, fraction: float) -> tuple[int, ...]:
    """Positions ``floor(i / fraction) < n``, i = 0, 1, ... (``fraction`` taken as the nearest rational with a
    denominator up to 10^6, so 0.05 is exactly 1/20): ``ceil(n * fraction)`` positions, the first 0."""
    f = Fraction(check_fraction(fraction)).limit_denominator(10 ** 6)
    count = -(-n * f.numerator // f.denominator)  # ceil(n * f)
    return tuple(i * f.denominator // f.numerator for i in range(count))


def select(items: Sequence, fraction: float, by: str = "scenes") -> tuple:
    """The ``fraction`` subset of ``items`` by the stride (module docstring), in sorted order.

    ``by="scenes"``: ``items`` are scene names, sorted by name; ``by="samples"``: ``items`` are keyframe rows
    ``(scene name, timestamp, sample token)`` (:func:`keyframe_rows`), sorted so (scene name, time). Empty or
    repeated items are an :class:`InputError`."""
    check_by(by)
    rows = sorted(items)
    if not rows:
        raise InputError(f"no training {by} to take a fraction of")
    if len(set(rows)) != len(rows):
        raise InputError(f"the training {by} to take a fraction of repeat an item")
    return tuple(rows[p] for p in stride_positions(len(rows), fraction))


def split_names(version: str) -> tuple[str, str]:
    """(train split, val split) of the devkit for the nuScenes ``version``; :class:`InputError` for a version
    without a labelled training split (``v1.0-test``)."""
    if version not in SPLITS:
        raise InputError(f"no devkit train/val split for nuScenes version {version!r} (known: "
                         f"{', '.join(SPLITS)})")
    return SPLITS[version]


def split_scenes(nusc, split: str) -> list[str]:
    """Names of the scenes of the devkit's split ``split`` that ``nusc`` (a loaded ``NuScenes``) holds, sorted;
    :class:`InputError` when the split is unknown or none of its scenes is in the dataroot."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes(verbose=False)
    if split not in splits:
        raise InputError(f"unknown split {split!r}; devkit splits: {', '.join(sorted(splits))}", nusc.dataroot)
    wanted = set(splits[split])
    names = sorted(s["name"] for s in nusc.scene if s["name"] in wanted)
    if not names:
        raise InputError(f"no scene of split {split!r} in {nusc.version}", nusc.dataroot)
    return names


def keyframe_rows(nusc, scenes: Sequence[str]) -> list[tuple[str, int, str]]:
    """``(scene name, timestamp, sample token)`` of every keyframe of ``scenes``, sorted (scene name, time)."""
    by_token = {s["token"]: s["name"] for s in nusc.scene if s["name"] in set(scenes)}
    return sorted((by_token[s["scene_token"]], int(s["timestamp"]), s["token"]) for s in nusc.sample
                  if s["scene_token"] in by_token)


@dataclass(frozen=True)
class Subset:
    """The training data of a fine-tuning run: ``fraction`` of split ``split`` by ``by``; ``scenes`` the scenes
    holding its keyframes (sorted), ``sample_tokens`` its keyframes in (scene name, time) order."""

    fraction: float
    by: str
    split: str
    scenes: tuple[str, ...]
    sample_tokens: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "by": self.by, "split": self.split, "scenes": list(self.scenes),
                "sample_tokens": list(self.sample_tokens)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Subset:
        return cls(fraction=float(d["fraction"]), by=str(d["by"]), split=str(d["split"]),
                   scenes=tuple(d["scenes"]), sample_tokens=tuple(d["sample_tokens"]))


def subset(nusc, fraction: float, by: str = "scenes", split: str | None = None) -> Subset:
    """The ``fraction`` subset of the training split (``split``; None: the devkit's train split of
    ``nusc.version``) of the dataroot ``nusc``, by scenes or by keyframes."""
    fraction, by = check_fraction(fraction), check_by(by)
    split = split or split_names(nusc.version)[0]
    scenes = split_scenes(nusc, split)
    if by == "scenes":
        scenes = list(select(scenes, fraction, by))
        rows = keyframe_rows(nusc, scenes)
    else:
        rows = list(select(keyframe_rows(nusc, scenes), fraction, by))
    return Subset(fraction=fraction, by=by, split=split, scenes=tuple(sorted({r[0] for r in rows})),
                  sample_tokens=tuple(r[2] for r in rows))


def subset_tokens(nusc, fraction: float, by: str = "scenes", split: str | None = None) -> tuple[str, ...]:
    """The sample tokens of :func:`subset` (what runs and checkpoints record)."""
    return subset(nusc, fraction, by, split).sample_tokens


def annotations_of(nusc, sample_tokens: Sequence[str]) -> tuple[dict, ...]:
    """The ``sample_annotation`` records of the samples ``sample_tokens``, in that order, each sample's in the
    devkit's order; reads no other annotation (through ``nusc.get``, one record per token of each sample's
    ``anns``): class statistics and ground-truth databases of a fractional run are built from this alone."""
    return tuple(nusc.get("sample_annotation", a) for t in sample_tokens for a in nusc.get("sample", t)["anns"])
