"""The command line works from any folder, including one that has its own ``methods.py`` or
``methods/`` package (common in research repositories).

``python -m harness`` puts the working directory first on ``sys.path``; before the fix, a
user's ``methods.py`` shadowed the project's method registry and every command failed with
``AttributeError: module 'methods' has no attribute 'available'``. These tests run the CLI as
real processes from such folders: the README's tour (``ls``, ``validate``, ``run --dry-run``,
``run`` on local worker processes, a rerun, ``report``), with a plugin that does
``import methods`` as the method contract says.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "suites" / "quickstart.yaml"

PLUGIN = '''
import torch
import methods
from methods import LossOutput, PreferenceMethod, TokenBatch


@methods.register("hinge-here")
class Hinge(PreferenceMethod):
    """A hinge on the summed log-ratio margin (a plugin living in the user's folder)."""
    needs = frozenset({"reference"})
    beta: float = 0.1

    def loss(self, b: TokenBatch) -> LossOutput:
        m_w = ((b.chosen_logps - b.ref_chosen_logps) * b.chosen_mask).sum(-1)
        m_l = ((b.rejected_logps - b.ref_rejected_logps) * b.rejected_mask).sum(-1)
        return LossOutput(losses=torch.relu(1 - self.beta * (m_w - m_l)),
                          chosen_rewards=(self.beta * m_w).detach(),
                          rejected_rewards=(self.beta * m_l).detach())
'''


def _shadow(folder: Path, kind: str) -> Path:
    """A research folder with its own ``methods`` of the given kind."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("module", "both"):
        (folder / "methods.py").write_text("# the user's own code\ndef available():\n    return ['mine']\n")
    if kind in ("package", "both"):
        (folder / "methods").mkdir()
        (folder / "methods" / "__init__.py").write_text("# the user's own package\nMINE = True\n")
    return folder


def harness(cwd: Path, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=timeout)


@pytest.mark.parametrize("kind", ["module", "package", "both"])
def test_ls_methods_from_a_folder_with_its_own_methods(tmp_path, kind):
    folder = _shadow(tmp_path / "research", kind)
    r = harness(folder, "ls", "methods")
    assert r.returncode == 0, r.stderr
    assert "dpo " in r.stdout and "tidpo-official" in r.stdout
    assert "mine" not in r.stdout
    # the user's own module is left alone on disk and is still what *their* code imports
    r2 = subprocess.run([sys.executable, "-c", "import methods; print(methods.__file__)"], cwd=folder,
                        text=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert Path(r2.stdout.strip()).resolve().is_relative_to(folder.resolve())


def test_plugins_importing_methods_get_the_project_registry(tmp_path):
    """`import methods` inside an in-process caller that imported harness first."""
    folder = _shadow(tmp_path / "research", "both")
    (folder / "my_plugin.py").write_text(PLUGIN)
    code = ("import harness, methods; methods.load_plugin('my_plugin.py'); "
            "print(sorted(methods.available()))")
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, text=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "'hinge-here'" in r.stdout and "'dpo'" in r.stdout


def test_a_foreign_methods_imported_first_is_replaced_with_a_warning(tmp_path):
    folder = _shadow(tmp_path / "research", "module")
    code = "import methods as mine; import harness, methods; print(mine is methods, 'dpo' in methods.available())"
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, text=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]
    assert "a different module named 'methods'" in r.stderr and "methods.py" in r.stderr


def _tiny_quickstart(folder: Path) -> Path:
    """The quickstart in miniature (same keys, one task, three rows, a few steps), written
    into the user's folder, with the folder's own plugin."""
    s = yaml.safe_load(QUICKSTART.read_text())
    s["name"] = "quickstart-here"
    s["datasets"] = s["datasets"][:1]
    s["datasets"][0]["task_args"].update(n_sft=64, n_pairs=64, n_heldout=16)
    s["datasets"][0]["heldout_size"] = 16
    s["datasets"][0].pop("dev_size", None)
    s.pop("tuning", None)  # one cell per row here: this tour is about where the CLI runs from
    s["methods"] = [{"name": "sft", "label": "SFT"}, {"name": "dpo", "label": "DPO"},
                    {"name": "hinge-here", "label": "Hinge"}]
    s["plugins"] = ["my_plugin.py"]
    s["seeds"] = [0]
    s["sft"].update(steps=4, batch_size=8, checkpoint_every=0)
    s["train"].update(steps=3, batch_size=4, checkpoint_every=0)
    s["eval"].update(generation_prompts=8, diversity_prompts=2, kl_samples=2)
    path = folder / "quickstart_here.yaml"
    path.write_text(yaml.safe_dump(s, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_readme_tour_from_a_folder_with_both_kinds_of_shadow(tmp_path):
    folder = _shadow(tmp_path / "research", "both")
    (folder / "my_plugin.py").write_text(PLUGIN)
    for args in (["ls", "methods"], ["ls", "tasks"], ["validate", QUICKSTART],
                 ["run", QUICKSTART, "--dry-run"]):
        r = harness(folder, *args)
        assert r.returncode == 0, (args, r.stderr)
    assert "quickstart.yaml: valid" in harness(folder, "validate", QUICKSTART).stdout
    suite = _tiny_quickstart(folder)
    r = harness(folder, "run", suite, "--launcher", "local", "--workers", "2", "--results", "runs")
    assert r.returncode == 0, r.stdout + r.stderr
    cells = [p for p in (folder / "runs" / "quickstart-here").iterdir() if (p / "metrics.json").is_file()]
    assert sorted(p.name.split("-")[0] for p in cells) == ["dpo", "hinge", "sft"]
    again = harness(folder, "run", suite, "--launcher", "local", "--results", "runs")
    assert again.returncode == 0 and "(3 done" in again.stdout
    rep = harness(folder, "report", folder / "runs" / "quickstart-here")
    assert rep.returncode == 0, rep.stderr
    assert (folder / "runs" / "quickstart-here" / "report" / "report.html").is_file()
