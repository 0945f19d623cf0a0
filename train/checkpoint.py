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
