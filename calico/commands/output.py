"""Where the commands print: a rich Console that does not wrap lines mid-sentence when the output is not a
terminal (a pipe, a file, a CI log), where rich would otherwise wrap at 80 columns."""
from __future__ import annotations


def console(stderr: bool = False):
    """A rich Console; not on a terminal: lines are never wrapped (soft wrap) and tables get 200 columns."""
    from rich.console import Console

    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=200, soft_wrap=True)


def to_stderr(line: str) -> None:
    """Print one line on stderr (progress and notices, apart from a command's output on stdout)."""
    import typer

    typer.echo(line, err=True)
