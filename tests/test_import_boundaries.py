"""The wings' import rules, checked on the source (tests/_imports.py parses every file, imports inside functions
included): train/ never imports preprocess/; data_catalog/ imports none of preprocess/, train/, calico/; shared/
imports none of preprocess/, train/, data_catalog/, calico/. Only calico/ (the CLI) imports every wing."""
from __future__ import annotations

import pytest

from tests._imports import forbidden_imports

RULES = [("train", ("preprocess",), 20), ("data_catalog", ("preprocess", "train", "calico"), 6),
         ("shared", ("preprocess", "train", "data_catalog", "calico"), 10)]


@pytest.mark.parametrize("package, banned, at_least", RULES, ids=[r[0] for r in RULES])
def test_package_never_imports(package, banned, at_least):
    n_files, bad = forbidden_imports(package, banned)
    assert n_files >= at_least  # the walk saw the package
    assert bad == []


def test_the_walker_sees_imports_inside_functions(tmp_path, monkeypatch):
    import tests._imports as imp

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("import os\nfrom . import x\n\ndef f():\n    from preprocess.run import run\n"
                                           "    import train.loop as t\n")
    monkeypatch.setattr(imp, "ROOT", tmp_path)
    assert imp.forbidden_imports("pkg", ("preprocess", "train")) == (1, ["pkg/m.py:5 preprocess.run",
                                                                        "pkg/m.py:6 train.loop"])
