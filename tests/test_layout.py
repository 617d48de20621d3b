"""DESIGN.md's layout: stdout is data, so only spkid/streams.py and the CLI touch stdin/stdout or print."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spkid"
STDIO_ALLOWED = {PACKAGE / "streams.py", PACKAGE / "cli"}
STDIO = {"stdin", "stdout", "__stdin__", "__stdout__"}


def _stdio_uses(source: str) -> list[str]:
    """`sys.stdin`/`sys.stdout` (attribute or `from sys import`) and `print(...)` calls, as `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr in STDIO
                and isinstance(node.value, ast.Name) and node.value.id == "sys"):
            found.append(f"{node.lineno}: sys.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            found += [f"{node.lineno}: from sys import {a.name}" for a in node.names if a.name in STDIO]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(f"{node.lineno}: print()")
    return sorted(found, key=lambda u: int(u.split(":")[0]))


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if not any(p == a or a in p.parents for a in STDIO_ALLOWED))


def test_the_scan_sees_stdio():
    assert _stdio_uses("import sys\nsys.stdout.write('x')\nprint(1)\nfrom sys import stdin\n") == [
        "2: sys.stdout", "3: print()", "4: from sys import stdin"]
    assert _stdio_uses("import sys, logging\nlogging.info('print(x) sys.stdout')\nsys.stderr.write('')\n") == []


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_streams_and_cli_touch_stdio(path: Path):
    uses = _stdio_uses(path.read_text(encoding="utf-8"))
    assert not uses, f"{path.relative_to(PACKAGE.parent)} touches stdin/stdout (only spkid/streams.py and " \
                     f"spkid/cli/ may): {uses}"


def test_streams_is_the_stdio_module():
    assert _stdio_uses((PACKAGE / "streams.py").read_text(encoding="utf-8"))
