"""``calico synth``: write a synthetic nuScenes-format dataroot. (Owned by the synth work; placeholder.)"""
from __future__ import annotations

from pathlib import Path

import typer


def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the dataroot into."),
    preset: str = typer.Option("tiny", help="Size preset."),
    scenes: int = typer.Option(None, help="Number of scenes (default: the preset's)."),
    seed: int = typer.Option(0, help="Random seed; the output is deterministic per seed."),
) -> None:
    """Write a small nuScenes-format dataset that nuscenes-devkit loads like the real one."""
    raise NotImplementedError
