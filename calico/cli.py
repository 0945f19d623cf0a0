"""``calico``: one command, with subcommands ``synth``, ``preprocess``, ``catalog``, ``train``, ``demo``.

Errors of calico's own (:class:`shared.errors.CalicoError`) print as one line naming the file or value at
fault and exit with status 2; anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import sys

import typer

from calico.commands import demo, preprocess, store, synth, train

app = typer.Typer(
    name="calico",
    help="Self-supervised Camera-LiDAR BEV pre-training (CALICO): synthetic data, preprocessing, training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("synth")(synth.synth)
app.add_typer(preprocess.app, name="preprocess")
app.add_typer(store.catalog_app, name="catalog")
app.add_typer(train.app, name="train")
app.command("demo")(demo.demo)


def main() -> None:
    from shared.errors import CalicoError

    try:
        app()
    except CalicoError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
