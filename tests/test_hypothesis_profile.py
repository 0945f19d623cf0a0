"""Hypothesis is derandomized when env CI is set (.ci/run sets it): tests/conftest.py loads the "ci" profile."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SHOW = "import tests.conftest; from hypothesis import settings; print(settings().derandomize, settings().database)"


@pytest.mark.parametrize("ci, want", [("1", "True None"), (None, "False")])
def test_ci_profile_is_derandomized(ci, want):
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    out = subprocess.run([sys.executable, "-c", _SHOW], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(want)


def test_ci_script_sets_ci():
    assert 'export CI="${CI:-1}"' in (REPO / ".ci" / "run").read_text()
