"""Checkpoints: one ``torch.save`` dict per file, written atomically (temporary file, fsync, ``os.replace``).

Contents: ``model``, ``optimizer``, ``scheduler`` (state dicts), ``step`` (optimizer steps done), ``epoch`` and
``batch_in_epoch`` (where the data stream stands), ``rng`` (torch, numpy, python and, when present, CUDA
states), ``config`` (``TrainConfig.to_dict()``), ``store_version`` (the id of the store version trained on),
``nan_skipped`` (steps skipped for a non-finite loss). Files: ``OUT/checkpoints/step-00000042.pt``; the
latest is the one with the highest step.

Pruning (:func:`prune_checkpoints`, after every checkpoint): the ``keep_last`` latest are kept, and with
``keep_best`` the best one (lowest :func:`checkpoint_scores`: the mean logged training loss of the ``window``
steps up to it, or the task's evaluation metric when it names one), and never one the caller protects (the
checkpoint a run resumed from, the one just written).
"""
from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
from pathlib import Path

from collections.abc import Callable
from typing import BinaryIO

import numpy as np
import torch

from shared.errors import InputError

_NAME = re.compile(r"^step-(\d+)\.pt$")


def rng_state() -> dict:
    """The random states of torch (CPU and CUDA), numpy's legacy global generator and Python's ``random``."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{int(step):08d}.pt"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically: a temporary file in the same
    folder (``.tmp-*``), flushed and fsynced, then ``os.replace``d; nothing is left behind on an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(out_dir: str | Path, state: dict) -> Path:
    """Write ``state`` (must hold ``step``) to ``OUT/checkpoints/step-XXXXXXXX.pt`` atomically; returns the path."""
    return atomic_write(checkpoint_path(out_dir, state["step"]), lambda f: torch.save(state, f))


def checkpoint_steps(out_dir: str | Path) -> dict[int, Path]:
    """{step: path} of the checkpoints in ``OUT/checkpoints`` (temporary files ignored)."""
    d = Path(out_dir) / "checkpoints"
    if not d.is_dir():
        return {}
    return {int(m.group(1)): p for p in d.iterdir() if (m := _NAME.match(p.name))}


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``OUT/checkpoints`` (temporary files ignored), or None."""
    found = checkpoint_steps(out_dir)
    return found[max(found)] if found else None


def checkpoint_scores(steps, metrics: list[dict], window: int, evals: list[dict] = (),
                      metric: tuple[str, str] | None = None) -> dict[int, float]:
    """{step: score} of the checkpoints at ``steps`` (lower is better; steps without a score are left out).

    Without ``metric``: the mean ``loss`` of the ``metrics`` rows (metrics.jsonl) with a step in
    (step - window, step]. With ``metric = (key, "min" | "max")``: the ``key`` of the latest ``evals`` row
    (eval.jsonl) at or before the step (negated for "max").
    """
    out = {}
    for s in steps:
        if metric is not None:
            key, mode = metric
            rows = [r for r in evals if r["step"] <= s and isinstance(r.get(key), (int, float))]
            if rows:
                v = float(max(rows, key=lambda r: r["step"])[key])
                out[s] = -v if mode == "max" else v
            continue
        losses = [float(r["loss"]) for r in metrics if s - window < r["step"] <= s and "loss" in r]
        if losses:
            out[s] = sum(losses) / len(losses)
    return out


def checkpoints_to_prune(steps, keep_last: int, scores: dict[int, float] | None, protect=()) -> list[int]:
    """The steps of ``steps`` to delete: all but the ``keep_last`` highest, the best-scored one (``scores``:
    lowest wins, the later step on a tie; None: no best is kept) and ``protect``."""
    steps = sorted(steps)
    keep = set(steps[-keep_last:]) | set(protect)
    if scores:
        keep.add(min(scores, key=lambda s: (scores[s], -s)))
    return [s for s in steps if s not in keep]


def prune_checkpoints(out_dir: str | Path, keep_last: int, scores: dict[int, float] | None,
                      protect=()) -> list[Path]:
    """Delete the checkpoints of ``OUT`` that :func:`checkpoints_to_prune` names (``protect``: steps never
    deleted); returns their paths."""
    found = checkpoint_steps(out_dir)
    gone = [found[s] for s in checkpoints_to_prune(found, keep_last, scores, protect)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint (on the CPU); an unreadable file is an :class:`InputError` naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:  # truncated or not one
        raise InputError(f"cannot read checkpoint: {exc}", path) from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's latest checkpoint; :class:`InputError` naming the path otherwise."""
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise InputError("no checkpoint in this run folder (expected checkpoints/step-*.pt)", p)
        return found
    if not p.is_file():
        raise InputError("checkpoint not found", p)
    return p


def load_backbone(module: torch.nn.Module, checkpoint: str | Path, prefix: str = "backbone.",
                  expected: dict | None = None, section: str = "backbone") -> dict:
    """Load the weights under ``prefix`` of a training checkpoint (file or run folder) into ``module``.

    For a RAD teacher and for fine-tuning initialisation. ``expected``: the configuration ``module`` was built
    with (the fields of ``model.<section>``, e.g. ``dataclasses.asdict(PointPillarsConfig)``); a checkpoint whose
    ``config.model.<section>`` differs is refused with a :class:`ConfigError` naming the differing fields, as is
    one without weights under ``prefix`` (:class:`InputError`). The load is strict (every parameter and buffer of
    ``module``, nothing else under ``prefix``).

    Returns ``{"path", "sha256", "step", "store_version", "task", "config"}`` of the checkpoint (its identity, to be
    recorded by whoever loaded it).
    """
    from data_catalog.version import diff_specs, sha256_file
    from shared.errors import ConfigError
    from train.config import plain

    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    config = state.get("config") or {}
    got = plain((config.get("model") or {}).get(section))
    if got is None:
        raise InputError(f"checkpoint has no model.{section} configuration", path)
    if expected is not None:
        diff = diff_specs(plain(expected), got)
        if diff:
            fields = ", ".join(f"{section}.{k} (checkpoint {b!r}, expected {a!r})" for k, (a, b) in diff.items())
            raise ConfigError(f"model.{section}", str(path), f"the checkpoint's {section} differs: {fields}")
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not weights:
        raise InputError(f"checkpoint has no weights under {prefix!r}", path)
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise InputError(f"checkpoint weights under {prefix!r} do not fit: {exc}", path) from None
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "step": int(state.get("step", 0)),
            "store_version": state.get("store_version"), "task": config.get("task", "prc"), "config": config}
