"""A cell's config.yaml read back through the typed checker (harness.config.cell).

What ``run`` writes reads back exactly (every key, every type); a hand-edited or
version-skewed file is reported with file, line and key: at the CLI before anything runs
(exit 2, nothing written), in a job as a failed status. Before, ``runner.build`` dropped a
typo such as ``stpes`` silently (the cell trained the default 200 steps) and kept ``'8'`` as a
string.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import pytest

from harness import config
from harness.cli import main
from harness.errors import UserError
from harness.results import read_status
from harness.runner import materialize
from harness.schema import as_config

GOOD = Path(__file__).resolve().parent / "good_suites"


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def written(tmp_path):
    """grid.yaml's plan materialized: (plan, suite folder)."""
    plan = config.expand(config.load_suite(GOOD / "grid.yaml"))
    materialize(plan, tmp_path / plan.suite.name)
    return plan, tmp_path / plan.suite.name


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (old, text)
    path.write_text(text.replace(old, new))


def test_what_run_writes_reads_back_exactly(written):
    plan, suite_dir = written
    for c in plan.cells:
        cfg = config.load_cell_config(suite_dir / c.cell_id)
        # as written: keys added later (smoke, epochs, a tuned or on-policy cell's keys, a data
        # set's dev split and pairs source, eval.backend) are written only when set
        assert as_config(cfg) == {**c.config, "cell_id": c.cell_id, "sft_stage": c.sft_stage_id}
        assert "backend" not in c.config["eval"] and cfg.eval.backend == "hf"
        assert cfg.smoke is False and cfg.train.epochs is None  # unwritten keys read back as defaults
        assert cfg.tuning is None and cfg.onpolicy is None and cfg.onpolicy_stage is None
        assert cfg.dataset.dev_size == 0 and cfg.dataset.pairs == "offline"
        assert isinstance(cfg.train.steps, int) and isinstance(cfg.train.lr, float)
        assert cfg.trains == (c.method != "sft")
    for s in plan.sft_stages:
        assert as_config(config.load_stage_config(suite_dir / "_sft" / s.stage_id)) == s.config


def test_a_smoke_run_reads_back_as_one(tmp_path):
    from harness.smoke import mark_plan, smoke_suite

    plan = config.expand(smoke_suite(config.load_suite(GOOD / "grid.yaml")))
    mark_plan(plan)
    materialize(plan, tmp_path / plan.suite.name)
    assert config.load_cell_config(tmp_path / plan.suite.name / plan.cells[0].cell_id).smoke is True
    stage = plan.sft_stages[0].stage_id
    assert config.load_stage_config(tmp_path / plan.suite.name / "_sft" / stage).smoke is True


def test_a_misspelled_key_is_an_unknown_key_not_a_silent_default(written):
    plan, suite_dir = written
    f = suite_dir / plan.cells[0].cell_id / "config.yaml"
    _edit(f, "  steps: 10\n", "  stpes: 10\n")
    line = f.read_text().splitlines().index("  stpes: 10") + 1
    with pytest.raises(UserError) as e:
        config.load_cell_config(f.parent)
    # one problem: the missing 'steps' is what the typo already says
    assert e.value.problems == [f"{f}:{line}: train.stpes: unknown key 'stpes'. Did you mean 'steps'? Valid "
                                f"keys in train: {', '.join(fl.name for fl in dataclasses.fields(config.cell.TrainSpec))}"]


@pytest.mark.parametrize("old, new, says", [
    ("  steps: 10\n", "  steps: '8'\n", "train.steps: must be an integer, got '8'"),
    ("  steps: 10\n", "  steps: 8.0\n", "train.steps: must be an integer, got 8.0; write 8"),
    ("  reference_cache: true\n  log_every: 1\n  trackers: []\neval:\n", "  log_every: 1\n  trackers: []\neval:\n",
     "train: missing required key 'reference_cache'"),
    ("  trackers: []\neval:\n", "  trackers: []\n  new_key: 1\neval:\n", "train.new_key: unknown key 'new_key'"),
    ("    n_pairs: 200\n", "    n_pairs: -1\n", "dataset.task_args.n_pairs: must be >= 1, got -1"),
    ("    n_pairs: 200\n", "    n_paris: 200\n", "dataset.task_args.n_paris: unknown key 'n_paris'"),
])
def test_edits_are_reported_with_file_line_and_key(written, old, new, says):
    plan, suite_dir = written
    f = suite_dir / plan.cells[0].cell_id / "config.yaml"
    _edit(f, old, new)
    with pytest.raises(UserError) as e:
        config.load_cell_config(f.parent)
    assert any(p.startswith(f"{f}:") and says in p for p in e.value.problems), e.value.problems


def test_run_refuses_an_edited_results_folder_with_exit_2_and_writes_nothing(written):
    plan, suite_dir = written
    f = suite_dir / plan.cells[3].cell_id / "config.yaml"
    _edit(f, "  steps: 10\n", "  steps: '8'\n")
    before = tree(suite_dir)
    rc, out, err = cli("run", GOOD / "grid.yaml", "--results", suite_dir.parent, "--no-report")
    assert rc == 2
    assert f"{f}:" in err and "train.steps: must be an integer, got '8'" in err and "Traceback" not in err
    assert tree(suite_dir) == before


def test_a_job_reports_a_bad_config_as_a_failed_status_naming_file_and_key(written):
    from harness.runner import run_job

    plan, suite_dir = written
    cell = next(c for c in plan.cells if c.method == "dpo")
    f = suite_dir / cell.cell_id / "config.yaml"
    _edit(f, "    beta: 0.1\n", "    beta: -1\n")
    with pytest.raises(UserError):
        run_job(str(suite_dir), "cell", cell.cell_id)
    st = read_status(suite_dir / cell.cell_id)
    assert st["state"] == "failed"
    assert f"{f}: method.hparams.beta: must be > 0, got -1.0" in st["reason"]


def test_null_hyperparameters_read_back_and_build(tmp_path):
    # SimPO's resolved hyperparameters hold gamma: null (the margin is gamma_beta_ratio); the
    # method's own declaration decides what may be null, not the reader
    plan = config.expand(config.load_suite_dict({
        "name": "n", "models": [{"name": "m", "tiny": {}}], "datasets": [{"name": "d", "task": "addition"}],
        "methods": [{"name": "simpo", "hparams": {"gamma": None, "gamma_beta_ratio": 0.5}}]}))
    materialize(plan, tmp_path / "n")
    cfg = config.load_cell_config(tmp_path / "n" / plan.cells[0].cell_id)
    assert cfg.method.hparams["gamma"] is None
    m = config.build_method(cfg, "config.yaml")
    assert (m.gamma, m.gamma_beta_ratio) == (None, 0.5)
    with pytest.raises(UserError, match=r"methods\[0\]\.hparams\.beta: must not be null"):
        config.load_suite_dict({"name": "n", "models": [{"name": "m", "tiny": {}}],
                                "datasets": [{"name": "d", "task": "addition"}],
                                "methods": [{"name": "simpo", "hparams": {"beta": None}}]})
