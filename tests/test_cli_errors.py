"""Bad paths and options given to the CLI: one line ``error: ...`` on stderr (never wrapped, never a traceback),
exit status 2, and nothing created. Through ``calico.cli.main``, the entry point itself, in this process; a few
through a real ``python -m calico`` whose output is not a terminal."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import typer

from calico.cli import app, error_line, main
from calico.commands import checks


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def one_line_error(capsys, *args, needles=()) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# Every path option of every command
# ---------------------------------------------------------------------------------------------------------------


def _commands(cmd, words=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*words, name))
    else:
        yield words, cmd


def _is_path(annotation) -> bool:
    return annotation is Path or Path in typing.get_args(annotation)


#: (command words, option, check callback) of every Path parameter of the CLI.
PATH_PARAMS = [(words, p.opts[0], getattr(p.callback, "__wrapped__", p.callback))  # typer wraps callbacks
               for words, cmd in _commands(typer.main.get_command(app))
               for p in cmd.params if _is_path(p.type_descriptor.annotation)]

#: Path parameters checked in the command's body instead (tests: test_sweep_... below, tests/test_cli.py).
CHECKED_IN_THE_BODY = {(("preprocess", "sweep"), "file"), (("preprocess", "sweep"), "--save")}

#: Per check: (the bad path, the start of what the message says).
CASES = {
    checks.folder: [("afile", "must be a folder, but this is a file"), ("missing", "folder not found")],
    checks.out_folder: [("afile", "must be a folder, but this is a file"),
                        ("afile/sub", "cannot be created here: {tmp}/afile is a file")],
    checks.file: [("adir", "must be a file, but this is a folder"), ("missing", "file not found")],
    checks.file_or_folder: [("missing", "file or folder not found")],
}


def test_every_path_parameter_is_checked():
    """A new command or option taking a path gets a check (or this test fails)."""
    commands = {words for words, _ in _commands(typer.main.get_command(app))}
    assert {("synth",), ("demo",), ("preprocess", "run"), ("train", "pretrain-prc"), ("catalog", "list")} <= commands
    unchecked = [(w, o) for w, o, cb in PATH_PARAMS if cb not in CASES and (w, o) not in CHECKED_IN_THE_BODY]
    assert unchecked == []
    stores = {w for w, o, cb in PATH_PARAMS if o == "--store"}
    assert stores >= {w for w in commands if w[0] == "catalog"} | {("preprocess", "run"), ("preprocess", "verify")}


@pytest.mark.parametrize("words,option,bad,says", [
    (w, o, bad, says) for w, o, cb in PATH_PARAMS if cb in CASES for bad, says in CASES[cb]],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v))
def test_a_bad_path_is_one_line_and_creates_nothing(capsys, tmp_path, words, option, bad, says):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    before = sorted(tmp_path.rglob("*"))
    path = tmp_path / bad
    positional = not option.startswith("-")  # an argument (`calico experiment report DIR`): named in capitals
    line = one_line_error(capsys, *words, *([] if positional else [option]), path,
                          needles=(f"error: {path}: ", option.upper() if positional else option))
    assert says.format(tmp=tmp_path) in line
    assert sorted(tmp_path.rglob("*")) == before


def test_preprocess_run_creates_a_missing_store_folder_only(capsys, synth_root, tmp_path):
    """The --store of `preprocess run` may be missing (it is created), but not when the run's inputs are bad."""
    root, version = synth_root
    store = tmp_path / "new" / "store"
    one_line_error(capsys, "preprocess", "run", "--store", store, "--dataroot", root, "--version", version,
                   "--scenes", "scene-0061,nope", "--workers", "0", needles=("no scene named nope",))
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------------------------
# preprocess run, sweep
# ---------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_preprocess_run_scheduler_errors_create_nothing(capsys, synth_root, tmp_path):
    from distributed import LocalCluster

    root, version = synth_root
    store = tmp_path / "store"
    run = ["preprocess", "run", "--store", store, "--dataroot", root, "--version", version, "--no-progress"]
    one_line_error(capsys, *run, "--scheduler", "foo:bar", needles=("--scheduler='foo:bar'",
                                                                     "not a Dask scheduler address"))
    one_line_error(capsys, *run, "--scheduler", "tcp://127.0.0.1:8786", "--connect-timeout", "0",
                   needles=("--connect-timeout=0.0", "> 0"))
    addr = f"tcp://127.0.0.1:{_free_port()}"
    one_line_error(capsys, *run, "--scheduler", addr, "--connect-timeout", "0.5",
                   needles=(addr, "no Dask scheduler answered within 0.5 s"))
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as c:
        one_line_error(capsys, *run, "--scheduler", c.scheduler_address, "--connect-timeout", "0.5",
                       needles=("no worker joined this scheduler within 0.5 s",))
    assert not store.exists()


def test_preprocess_run_help_states_the_connection_timeout(capsys):
    code, out, _ = cli(capsys, "preprocess", "run", "--help")
    assert code == 0 and "--connect-timeout" in out and "10" in out


@pytest.mark.parametrize("points,says", [
    (np.zeros((0, 4)), "no point to preprocess: the file is empty"),
    (np.full((50, 4), np.nan), "no point to preprocess: all 50 points have a non-finite x, y or z"),
    (np.c_[np.full(20, np.inf), np.zeros((20, 3))], "all 20 points have a non-finite x, y or z"),
])
def test_sweep_of_a_file_without_a_finite_point_is_an_error(capsys, tmp_path, points, says):
    """`preprocess sweep` asks for one file: one that holds nothing to preprocess is an error (in a store run
    such a sweep is an empty sweep, counted)."""
    f = tmp_path / "scan.bin"
    points.astype("<f4").tofile(f)
    one_line_error(capsys, "preprocess", "sweep", f, "--backend", "cpu", "--no-warmup", needles=(f, says))


def test_sweep_of_a_folder_or_a_missing_file(capsys, tmp_path):
    one_line_error(capsys, "preprocess", "sweep", tmp_path, needles=(tmp_path, "point file must be a file"))
    one_line_error(capsys, "preprocess", "sweep", tmp_path / "x.bin", needles=("x.bin", "not found"))


# ---------------------------------------------------------------------------------------------------------------
# Usage errors, the line itself, Ctrl-C
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,says", [
    (["preprocess", "run", "--store", "s", "--workers", "abc"], "Invalid value for '--workers'"),
    (["preprocess", "run", "--store", "s", "--nope"], "No such option: --nope"),
    (["catalog", "list"], "Missing option '--store'"),
    (["preprocess", "sweep"], "Missing argument 'file'"),
    (["nope"], "No such command 'nope'"),
])
def test_usage_errors_are_one_line_naming_the_help(capsys, args, says):
    line = one_line_error(capsys, *args, needles=(says, "--help)"))
    assert line.endswith("--help)")


def test_error_line_keeps_a_message_on_one_line():
    assert error_line("a\n  b\n\nc") == "error: a; b; c"


def test_ctrl_c_exits_130_without_a_traceback(capsys, monkeypatch, tmp_path):
    import shared.synth

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(shared.synth, "generate", interrupted)
    code, out, err = cli(capsys, "synth", "--out", tmp_path / "x")
    assert code == 130 and "Traceback" not in err


def test_the_real_cli_prints_long_errors_unwrapped(tmp_path):
    """Output not a terminal, no COLUMNS: the line is longer than 80 columns and still one line."""
    (tmp_path / "afile").write_text("x")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    for args, says in [(["preprocess", "run", "--store", "s", "--workers", "abc"], "Invalid value for '--workers'"),
                       (["catalog", "list", "--store", tmp_path / "afile" / "deeper" / "still-deeper"],
                        "folder not found")]:
        r = subprocess.run([sys.executable, "-m", "calico", *map(str, args)], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and len(lines[0]) > 80 and says in lines[0], r.stderr
