"""``calico``: one command, with subcommands ``synth``, ``preprocess``, ``catalog``, ``train``, ``eval``, ``experiment``,
``demo``.

Errors print as one line ``error: ...`` on stderr, never wrapped (also when the output is not a terminal), and
exit with status 2: calico's own (:class:`shared.errors.CalicoError`, naming the file or value at fault) and
click's usage errors (a bad option value, a missing argument; the line names the command's ``--help``).
Ctrl-C exits with status 130 (a command says what was kept and how to resume). Anything else is a bug and shows
its traceback.
"""
from __future__ import annotations

import sys

import typer

from calico.commands import demo, eval as eval_cmd, experiment, preprocess, store, synth, train

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
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(experiment.app, name="experiment")
app.command("demo")(demo.demo)

#: Exit status of a run stopped by Ctrl-C (SIGINT), as shells report it (128 + 2).
EXIT_INTERRUPTED = 130


def error_line(message: str) -> str:
    """``error: <message>`` on one line (the message's own line breaks become ``; ``)."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "error: " + "; ".join(parts)


def usage_error_line(exc) -> str:
    """One line for a usage error (typer's copy of click's exceptions): its message and, when it knows its
    command, the command whose ``--help`` to read."""
    line = error_line(exc.format_message())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        line += f" (see: {ctx.command_path} --help)"
    return line


def main(argv: list[str] | None = None) -> None:
    """The ``calico`` entry point: runs :data:`app` on ``argv`` (default ``sys.argv[1:]``) and exits."""
    from shared.errors import CalicoError

    try:
        code = app(args=argv, standalone_mode=False)  # errors come here instead of a boxed, wrapped message
    except CalicoError as exc:
        typer.secho(error_line(str(exc)), fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.TyperException as exc:  # click's usage errors: a bad option value, a missing argument, ...
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group without a subcommand: its help is printed
            sys.exit(exc.exit_code)
        typer.secho(usage_error_line(exc), fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except typer.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
