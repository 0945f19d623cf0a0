"""``calico demo``: the main job end to end on the embedded default (generated) dataset."""
from __future__ import annotations

from pathlib import Path

import typer


def demo(
    workdir: Path = typer.Option(Path("out/demo"), help="Folder for the generated data and outputs."),
) -> None:
    """Generate a small synthetic nuScenes dataset and run the pipeline on it end to end."""
    raise NotImplementedError
