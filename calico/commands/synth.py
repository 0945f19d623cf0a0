"""``calico synth``: write a synthetic nuScenes-format dataroot (see docs/synthetic_data.md)."""
from __future__ import annotations

from pathlib import Path

import typer

from calico.commands import checks


def synth(
    out: Path = typer.Option(..., "--out", callback=checks.out_folder,
                             help="Folder to write the dataroot into (must not exist or be empty)."),
    preset: str = typer.Option("tiny", "--preset", help="Size preset: tiny, small (= demo) or mini."),
    scenes: int = typer.Option(None, "--scenes", help="Number of scenes (default: the preset's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the output is deterministic per seed."),
) -> None:
    """Write a small nuScenes-format dataset that nuscenes-devkit loads like the real one."""
    from calico.commands.output import to_stderr
    from shared.compile_notice import announce_compilation
    from shared.synth import generate

    with announce_compilation(to_stderr, "the synthetic world's kernels"):
        root, version = generate(out, preset=preset, scenes=scenes, seed=seed, progress=True)
    typer.echo(f"wrote {version} to {root}")
