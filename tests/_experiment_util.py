"""Helpers shared by the experiment tests: a tiny real experiment folder, built quickly on the session's tiny store
(``tiny_store`` of tests/conftest.py) through the CLI itself."""
from __future__ import annotations

from pathlib import Path

#: Overrides that keep the tiny runs quick (the ones tests/test_experiment.py uses).
QUICK = ("optim.warmup_steps=1", "prc:data.n_rich=64", "prc:data.n_less=64", "ft:model.head.max_objects=64")


def label_efficiency_args(store: Path, version: str, out: Path, inits: str = "scratch", task: str = "det",
                          steps: int = 2, pretrain_steps: int = 2, seeds: str = "0") -> list[str]:
    """``calico experiment label-efficiency`` arguments (after ``calico``) of a one-fraction grid on ``store``."""
    args = ["experiment", "label-efficiency", "--out", str(out), "--store", str(store), "--store-version", version,
            "--inits", inits, "--task", task, "--fractions", "1", "--fraction-by", "samples", "--seeds", seeds,
            "--pretrain-steps", str(pretrain_steps), "--steps", str(steps)]
    return args + [a for s in QUICK for a in ("--set", s)]


def build_tiny_experiment(store: Path, version: str, out: Path, **kw) -> Path:
    """Run the grid of :func:`label_efficiency_args` in this process (``calico.cli.main``); ``out`` when it
    finished with exit status 0, else AssertionError."""
    from calico.cli import main

    try:
        main(label_efficiency_args(store, version, out, **kw))
    except SystemExit as exc:
        assert exc.code in (0, None), f"label-efficiency exited {exc.code}"
    return out


__all__ = ["QUICK", "build_tiny_experiment", "label_efficiency_args"]
