"""Import boundaries by parsing the source: the top-level modules a package's files import, anywhere in a file
(inside functions too), without importing anything."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) of every absolute ``import`` / ``from ... import`` in the file ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def forbidden_imports(package: str, banned: tuple[str, ...]) -> tuple[int, list[str]]:
    """(number of .py files under ``ROOT/package``, ``["file:line module", ...]`` importing a top-level package in
    ``banned``)."""
    files = sorted((ROOT / package).rglob("*.py"))
    bad = [f"{f.relative_to(ROOT)}:{line} {name}" for f in files for line, name in imports(f)
           if name.split(".")[0] in banned]
    return len(files), bad
