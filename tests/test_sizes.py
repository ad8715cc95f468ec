"""The size rule of the design (issue 17, STYLE.md: "each part small enough to read whole"),
checked on the source of ``harness/`` and ``methods/``:

* no module over 500 lines;
* no function or method over 60 lines (from ``def`` to its last line), unless its docstring
  gives the reason with the marker ``Long because:`` (for a function that truly reads best
  whole; prefer splitting it into named steps).

A failure names each offender as ``file:line name (N lines)``.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("harness", "methods")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
MARKER = "Long because:"


def oversized(root: Path = ROOT, folders=FOLDERS) -> tuple[list[str], list[str]]:
    """(modules over the limit, functions over the limit without the marker), as messages."""
    modules, functions = [], []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            src = path.read_text()
            rel = path.relative_to(root)
            n = len(src.splitlines())
            if n > MAX_MODULE_LINES:
                modules.append(f"{rel}: {n} lines (limit {MAX_MODULE_LINES}); split it along a seam, "
                               f"one job per module")
            for node in ast.walk(ast.parse(src, str(path))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and MARKER not in (ast.get_docstring(node) or ""):
                    functions.append(f"{rel}:{node.lineno} {node.name} ({length} lines, limit "
                                     f"{MAX_FUNCTION_LINES}); split it into named steps, or say "
                                     f"why not in its docstring with {MARKER!r}")
    return modules, functions


def test_no_module_is_over_the_limit():
    modules, _ = oversized()
    assert not modules, "modules over the size limit:\n" + "\n".join(modules)


def test_no_function_is_over_the_limit_without_a_reason():
    _, functions = oversized()
    assert not functions, "functions over the size limit:\n" + "\n".join(functions)


def _function(name: str, lines: int, doc: str = "", indent: str = "", kind: str = "def") -> str:
    body = [f'{indent}    """{doc}"""'] if doc else []
    body += [f"{indent}    x = {i}" for i in range(lines - 1 - len(body))]
    return "\n".join([f"{indent}{kind} {name}():"] + body) + "\n"


def test_the_checker_measures_what_the_rule_says(tmp_path):
    # a claim about the checker itself: 60 lines pass, 61 fail; methods, nested and async
    # functions count; the marker excuses; a module is measured in lines
    pkg = tmp_path / "harness"
    pkg.mkdir()
    (pkg / "ok.py").write_text(_function("fits", 60) + _function("excused", 80, "Long because: a table."))
    (pkg / "bad.py").write_text(
        _function("too_long", 61)
        + "class C:\n" + _function("method", 61, indent="    ")
        + "def outer():\n" + _function("inner", 61, indent="    ")
        + _function("coro", 61, kind="async def")
        + _function("unexcused", 61, "Long, but no marker."))
    (pkg / "big.py").write_text("x = 1\n" * 501)
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "m.py").write_text("x = 1\n" * 500)
    modules, functions = oversized(tmp_path)
    assert len(modules) == 1 and modules[0].startswith("harness/big.py: 501 lines"), modules
    found = {tuple(f.split(" (")[0].split(" ")) + (int(f.split(" (")[1].split(" ")[0]),) for f in functions}
    # by hand: too_long 1-61; class C at 62, its method 63-123; outer 124-185 (62 lines, holding
    # inner 125-185); coro 186-246; unexcused 247-307
    assert found == {("harness/bad.py:1", "too_long", 61), ("harness/bad.py:63", "method", 61),
                     ("harness/bad.py:124", "outer", 62), ("harness/bad.py:125", "inner", 61),
                     ("harness/bad.py:186", "coro", 61), ("harness/bad.py:247", "unexcused", 61)}, functions
