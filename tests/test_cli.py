"""The command line as a user types it: help texts, `ls`, `validate`, `run --dry-run`, and
the exit codes (0 success, 1 some cells failed, 2 invalid input or arguments).

Most calls go through ``harness.cli.main`` in this process; the ones where the process
itself matters (``--help`` and argument errors of ``python -m harness``) run as real
subprocesses, in parallel. Nothing here trains a model: exit codes 0 and 1 of ``run`` come
from results folders whose cells are already done or failed.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.results import read_status, write_status

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
GOOD = TESTS / "good_suites"
SUBCOMMANDS = ("run", "validate", "report", "ls")
# the built-in methods and what their papers say they need (REFERENCE.md)
BUILTIN_NEEDS = {
    "dpo": "reference", "ipo": "reference", "simpo": "-", "sft-continued": "-",
    "tdpo1": "reference, token_kl", "tdpo2": "reference, token_kl",
    "tidpo": "anchor, reference, token_weights", "tidpo-official": "anchor, reference, token_kl, token_weights",
}


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help and usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------- processes
def test_python_m_harness_help_and_argument_errors():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    calls = {"help": ["--help"], "unknown": ["frobnicate"], "none": [], "bad_option": ["ls", "--frob", "methods"]}
    procs = {k: subprocess.Popen([sys.executable, "-m", "harness", *a], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k, a in calls.items()}
    res = {k: (p.communicate(timeout=120), p.returncode) for k, p in procs.items()}
    (out, err), rc = res["help"]
    assert rc == 0 and err == ""
    assert out.startswith("usage: python -m harness")
    for sub in SUBCOMMANDS:
        assert f"    {sub} " in out  # each subcommand listed with its one-line help
    assert "python -m harness run SUITE --retry-failed" in out  # the examples
    (out, err), rc = res["unknown"]
    assert rc == 2 and "invalid choice: 'frobnicate'" in err and "Traceback" not in err
    (out, err), rc = res["none"]
    assert rc == 2 and "the following arguments are required: cmd" in err
    (out, err), rc = res["bad_option"]
    assert rc == 2 and "unrecognized arguments: --frob" in err


@pytest.mark.parametrize("sub, options", [
    ("run", ["--launcher", "--workers", "--results", "--dry-run", "--retry-failed", "--smoke", "--plugin",
             "--no-report", "--set", "--only"]),
    ("validate", ["--results", "--plugin", "--smoke", "--set", "--only"]),
    ("report", ["--out", "--baseline", "results_dir"]),
    ("ls", ["{methods,tasks,launchers}", "--plugin"]),
])
def test_each_subcommand_has_help(sub, options):
    rc, out, err = cli(sub, "--help")
    assert rc == 0 and out.startswith(f"usage: python -m harness {sub}")
    for opt in options:
        assert opt in out, f"{opt} missing from `{sub} --help`:\n{out}"


# ---------------------------------------------------------------------------- ls
def test_ls_methods_lists_every_method_with_needs_and_defaults():
    import methods

    rc, out, err = cli("ls", "methods")
    assert rc == 0
    blocks = {b.split()[0]: b for b in out.strip().split("\n\n")}
    assert set(blocks) == set(methods.available()) and set(BUILTIN_NEEDS) <= set(blocks)
    for name, needs in BUILTIN_NEEDS.items():
        head, summary, defaults = blocks[name].splitlines()
        assert head == f"{name:16s} needs: {needs}"
        assert summary.strip() and defaults.strip().startswith("defaults: ")
    # DPO's defaults as in the paper and TRL: beta 0.1, no label smoothing
    assert "defaults: beta=0.1 in (0, inf), label_smoothing=0.0 in [0, 0.5)" in blocks["dpo"]
    assert "(no hyperparameters)" in blocks["sft-continued"]


def test_ls_methods_with_a_plugin_and_with_a_missing_one(tmp_path):
    rc, out, err = cli("ls", "methods", "--plugin", tmp_path / "nope.py")
    assert rc == 2 and err.startswith(f"error: --plugin {tmp_path / 'nope.py'}: plugin file") and "not found" in err


def test_ls_tasks_and_launchers():
    rc, out, err = cli("ls", "tasks")
    assert rc == 0
    assert out.startswith("addition: ") and "\nreverse: " in out
    assert "digits=2 in [1, 4]" in out  # each task's arguments with defaults and ranges
    rc, out, err = cli("ls", "launchers")
    assert rc == 0 and [ln.split()[0] for ln in out.splitlines()] == ["inline", "local", "slurm"]


# -------------------------------------------------------------- validate, dry run
@pytest.mark.parametrize("args", [["validate"], ["run", "--dry-run"]])
def test_validate_and_dry_run_print_the_plan_and_write_nothing(args, tmp_path, monkeypatch):
    inputs, cwd = tmp_path / "in", tmp_path / "cwd"
    inputs.mkdir()
    cwd.mkdir()
    (inputs / "pairs.jsonl").write_text("".join(
        f'{{"prompt": "{i}+{i}=", "chosen": "{2 * i}", "rejected": "{2 * i + 1}"}}\n' for i in range(10)))
    # the good suite with a local data file, held-out slice small enough for 10 rows
    text = (GOOD / "local_data.yaml").read_text().replace("    format: pairs\n",
                                                          "    format: pairs\n    heldout_size: 2\n")
    (inputs / "suite.yaml").write_text(text)
    before = tree(inputs)
    monkeypatch.chdir(cwd)  # the default --results is results/ here
    rc, out, err = cli(*args, inputs / "suite.yaml")
    assert rc == 0, err
    # 1 model x 1 data set x 2 methods x 3 seeds, SFT per seed (the suite file's own count)
    assert "Suite 'local_data': 6 cells = 1 model x 1 data set x 2 method variants x 3 seeds; 3 SFT stages" in out
    assert "Status: 6 new" in out
    assert out.count("simpo ") == 3 and out.count("TDPO-2 ") == 3
    assert tree(cwd) == [] and tree(inputs) == before


def test_dry_run_shows_the_state_of_existing_results(tmp_path):
    results = tmp_path / "results"
    rc, out, err = cli("validate", GOOD / "no_sft.yaml", "--results", results)
    ids = [ln.split()[-1] for ln in out.splitlines() if ln.strip().startswith("tidpo ")]
    assert len(ids) == 2
    write_status(results / "no_sft" / ids[0], "done")
    before = tree(tmp_path)
    rc, out, err = cli("run", GOOD / "no_sft.yaml", "--results", results, "--dry-run")
    assert rc == 0 and "Status: 1 done, 1 new" in out
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------- exit codes
def _cell_ids(results: Path) -> list[str]:
    rc, out, err = cli("validate", GOOD / "no_sft.yaml", "--results", results)
    return [ln.split()[-1] for ln in out.splitlines() if ln.strip().startswith("tidpo ")]


def _done(cell: Path) -> None:
    """What a finished cell holds that the run checks: a done status and its metrics."""
    cell.mkdir(parents=True, exist_ok=True)
    (cell / "metrics.json").write_text('{"eval/accuracy": 0.5}')
    write_status(cell, "done")


def test_run_exit_0_when_every_cell_is_done(tmp_path):
    results = tmp_path / "results"
    for cid in _cell_ids(results):
        _done(results / "no_sft" / cid)
    rc, out, err = cli("run", GOOD / "no_sft.yaml", "--results", results, "--no-report")
    assert rc == 0, err
    assert "2 cells (2 done, 0 failed and skipped), 0 SFT stages and 0 cells to run" in out


def test_run_exit_1_when_failed_cells_are_left(tmp_path):
    results = tmp_path / "results"
    ids = _cell_ids(results)
    _done(results / "no_sft" / ids[0])
    write_status(results / "no_sft" / ids[1], "failed", reason="NumericalFault: non-finite loss at step 7", step=7)
    rc, out, err = cli("run", GOOD / "no_sft.yaml", "--results", results, "--no-report")
    assert rc == 1
    assert "2 cells (1 done, 1 failed and skipped - rerun with --retry-failed)" in out
    st = read_status(results / "no_sft" / ids[1])
    assert st["state"] == "failed" and st["step"] == 7  # left as it was, for the user to read


@pytest.mark.parametrize("args, says", [
    (["validate", "no/such/suite.yaml"], "error: no/such/suite.yaml: suite file not found"),
    (["run", "no/such/suite.yaml"], "error: no/such/suite.yaml: suite file not found"),
    (["report", "no/such/results"], "error: no/such/results: no such results folder"),
    (["run"], "the following arguments are required: suite"),
    (["run", "x.yaml", "--launcher", "cloud"], "argument --launcher: invalid choice: 'cloud'"),
    (["run", "x.yaml", "--workers", "two"], "argument --workers: invalid int value: 'two'"),
    (["ls", "everything"], "argument what: invalid choice: 'everything'"),
])
def test_invalid_input_and_arguments_exit_2(args, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(*args)
    assert rc == 2
    assert says in err and "Traceback" not in err
    assert tree(tmp_path) == []
