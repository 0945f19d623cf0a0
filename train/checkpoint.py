"""Checkpoints: one ``torch.save`` dict per file, written atomically (temporary file, fsync, ``os.replace``).

Contents: ``model``, ``optimizer``, ``scheduler`` (state dicts), ``step`` (optimizer steps done), ``epoch`` and
``batch_in_epoch`` (where the data stream stands), ``rng`` (torch, numpy, python and, when present, CUDA
states), ``config`` (``TrainConfig.to_dict()``), ``store_version`` (the id of the store version trained on),
``nan_skipped`` (steps skipped for a non-finite loss). Files: ``OUT/checkpoints/step-00000042.pt``; the
latest is the one with the highest step.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
from pathlib import Path

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


def save_checkpoint(out_dir: str | Path, state: dict) -> Path:
    """Write ``state`` (must hold ``step``) to ``OUT/checkpoints/step-XXXXXXXX.pt`` atomically; returns the path."""
    path = checkpoint_path(out_dir, state["step"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``OUT/checkpoints`` (temporary files ignored), or None."""
    d = Path(out_dir) / "checkpoints"
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


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
