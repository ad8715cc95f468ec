"""A cell's life as named steps (issue 17 item 4), loading its SFT checkpoint once (issue 15).

The steps run one by one on a finished run's cell give the metrics the whole job gave; between
them, the state a reader would expect: the policy trains a copy, the reference keeps the SFT
weights and waits on the CPU, and it is freed after evaluation."""
from __future__ import annotations

import contextlib
import io

import pytest

import reliability_helpers as rh
from harness import cell as steps
from harness import models
from harness.cli import main
from harness.results import read_json


def _cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, err.getvalue()


def test_cell_steps_load_the_checkpoint_once_and_give_the_jobs_metrics(tmp_path, monkeypatch):
    loads = []
    real = models.load_saved
    monkeypatch.setattr(models, "load_saved", lambda *a, **kw: loads.append(a) or real(*a, **kw))
    rc, err = _cli("run", rh.SUITES / "crash.yaml", "--results", tmp_path, "--no-report")
    assert rc == 0, err
    assert len(loads) == 1                  # one cell: policy, reference and evaluation from one load
    suite_dir = tmp_path / "crash"
    [folder] = rh.cell_dirs(suite_dir)
    job = read_json(folder / "metrics.json")

    cell = steps.set_up(suite_dir, folder)
    ref = cell.start.reference()
    assert cell.policy is not ref
    steps.train_policy(cell)
    assert models.weights_fingerprint(ref) == cell.stage_info["weights_fingerprint"]  # untouched by training
    assert next(ref.parameters()).device.type == "cpu" and not any(p.requires_grad for p in ref.parameters())
    metrics = steps.identity(cell)
    metrics.update(steps.evaluate_cell(cell))
    with pytest.raises(RuntimeError, match="not kept"):
        cell.start.reference()              # freed once evaluated
    metrics.update(steps.cost(cell))
    metrics.update(steps.training_summary(cell))
    assert metrics["cost/ref_cache_hit"] == 1   # the job filled the cache for the pairs its steps read
    steps.save(cell, metrics)
    assert rh.comparable(read_json(folder / "metrics.json")) == rh.comparable(job)
