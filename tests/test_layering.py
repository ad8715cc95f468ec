"""The import layering the design promises, checked on the source (every import, including the
ones inside functions) and on what a command really loads.

* ``methods/`` imports nothing from ``harness`` (a method is pure loss math);
* ``harness/core`` imports no ``launch``, ``report`` or ``evaluate`` (training needs none);
* ``harness/report`` imports no ``core`` or ``launch`` (a report needs no training code);
* the modules of ``harness/config`` import only those listed before them (no circles);
* ``report``, and ``validate`` of a suite without plugins, load no torch.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_ORDER = ["check", "source", "overrides", "ids", "variants", "space", "suite", "plan", "only", "cell", "describe",
                "docs"]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, absolute, wherever the import statement stands."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from . import x` names a module
    return out


def _offenders(folder: str, banned: tuple[str, ...], root: Path = ROOT) -> list[str]:
    bad = []
    for f in sorted((root / folder).rglob("*.py")):
        for mod in sorted(imports_of(f, root)):
            if any(mod == b or mod.startswith(b + ".") for b in banned):
                bad.append(f"{f.relative_to(root)} imports {mod}")
    return bad


def test_the_import_reader_sees_relative_and_lazy_imports(tmp_path):
    # a claim about the checker itself: the arrow this test once had to catch
    # (core/anchors.py importing evaluate.generation inside a function) is found
    core = tmp_path / "harness" / "core"
    core.mkdir(parents=True)
    (core / "__init__.py").write_text("")
    (core / "anchors.py").write_text("import torch\n\ndef f():\n    from ..evaluate.generation import room_for\n")
    assert "harness.evaluate.generation" in imports_of(core / "anchors.py", tmp_path)
    assert _offenders("harness/core", ("harness.evaluate",), tmp_path) == [
        "harness/core/anchors.py imports harness.evaluate.generation",
        "harness/core/anchors.py imports harness.evaluate.generation.room_for"]


def test_methods_import_nothing_from_harness():
    assert _offenders("methods", ("harness",)) == []


def test_core_imports_no_launch_report_or_evaluate():
    assert _offenders("harness/core", ("harness.launch", "harness.report", "harness.evaluate")) == []


def test_report_imports_no_core_or_launch():
    assert _offenders("harness/report", ("harness.core", "harness.launch", "torch")) == []


def test_config_modules_import_only_the_ones_before_them():
    listed = set(CONFIG_ORDER)
    on_disk = {p.stem for p in (ROOT / "harness" / "config").glob("*.py")} - {"__init__", "__main__"}
    assert on_disk == listed, "list a new module of harness/config in CONFIG_ORDER (and its __init__ docstring)"
    for i, name in enumerate(CONFIG_ORDER):
        below = {f"harness.config.{m}" for m in CONFIG_ORDER[:i]}
        mods = {m for m in imports_of(ROOT / "harness" / "config" / f"{name}.py") if m.startswith("harness.config")}
        # `from .check import X` also yields harness.config.check.X: compare module prefixes
        used = {".".join(m.split(".")[:3]) for m in mods}
        assert used <= below, f"harness/config/{name}.py imports {sorted(used - below)}, listed after it"


def _loaded_after(argv: list[str], tmp_path: Path) -> tuple[int, list[str], str]:
    code = ("import sys\nfrom harness.cli import main\nrc = main(sys.argv[1:])\n"
            "heavy = [m for m in ('torch', 'transformers', 'accelerate', 'datasets', 'lm_eval') if m in sys.modules]\n"
            "print('LOADED', ','.join(heavy))\nsys.exit(rc)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    loaded = out.stdout.rsplit("LOADED", 1)[-1].strip()
    return out.returncode, [m for m in loaded.split(",") if m], out.stderr


@pytest.mark.parametrize("suite", ["suites/quickstart.yaml", "suites/paper_table1.yaml"])
def test_validate_of_a_plugin_free_suite_loads_no_torch(suite, tmp_path):
    rc, heavy, err = _loaded_after(["validate", str(ROOT / suite)], tmp_path)
    if "paper_table1" in suite:
        # its hub data set cannot load offline (test.sh sets the offline flags): validate says
        # so, exit 2, and still without importing datasets or torch
        assert rc == 2 and "cannot load hub data set 'Anthropic/hh-rlhf'" in err, err
    else:
        assert rc == 0, err
    assert heavy == []


def test_report_loads_no_torch(tmp_path):
    rc, heavy, err = _loaded_after(["report", str(ROOT / "results" / "quickstart"), "--out",
                                    str(tmp_path / "report")], tmp_path)
    assert rc == 0, err
    assert heavy == []
