"""Path checks of the commands' options, as typer callbacks: ``typer.Option(..., callback=checks.folder)``.

They run while the command line is parsed, so a bad path fails before the command does anything (nothing is
created): one line naming the path and the option, exit status 2 (:class:`shared.errors.InputError`, printed by
``calico/cli.py``). Each returns the value unchanged.

* :func:`folder`: a folder that must exist (``--store`` of the commands that read a store, ``--dataroot``);
* :func:`out_folder`: a folder that is created if missing (``--out``, ``--workdir``, the ``--store`` that
  ``preprocess run`` writes): not a file, and no parent of it a file;
* :func:`file`: a file that must exist (a point file, ``--calib``);
* :func:`file_or_folder`: either, existing (a checkpoint file or a run folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _name(param: typer.CallbackParam) -> str:
    return param.opts[0] if param.opts and param.opts[0].startswith("-") else (param.name or "path").upper()


def folder(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """An existing folder."""
    from shared.paths import check_folder

    if value is not None and not ctx.resilient_parsing:
        check_folder(value, _name(param), must_exist=True)
    return value


def out_folder(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """A folder that may not exist yet but can be created."""
    from shared.paths import check_folder

    if value is not None and not ctx.resilient_parsing:
        check_folder(value, _name(param), must_exist=False)
    return value


def file(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """An existing file."""
    from shared.paths import check_file

    if value is not None and not ctx.resilient_parsing:
        check_file(value, _name(param))
    return value


def file_or_folder(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """An existing file or folder."""
    from shared.errors import InputError
    from shared.paths import absolute

    if value is not None and not ctx.resilient_parsing and not absolute(value).exists():
        raise InputError(f"{_name(param)}: file or folder not found", absolute(value))
    return value
