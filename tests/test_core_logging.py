"""What the training loop logs: count/* from the step's features, logps/* selected with the mask
(not multiplied by it), TI-DPO's mean token weights and margin scale, and their run means in
metrics.json (train/*)."""
from __future__ import annotations

import json
import math

import torch

import methods
from core_helpers import run_dpo
from harness.core.train import PreferenceObjective, StepContext, log_means
from harness.results import read_jsonl

torch.set_num_threads(1)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_count_metrics_are_logged_per_step(tmp_path):
    run_dpo(tmp_path / "run", steps=2, method="tidpo", batch_size=4)
    log = read_jsonl(tmp_path / "run" / "train_log.jsonl")
    assert len(log) == 2
    for rec in log:
        # one micro-batch: one reference forward over the anchor rows, one attribution taken
        # from the training forward (the tiny model has no dropout), the sampled anchor tokens
        assert rec["count/ref_forward"] == 1
        assert rec["count/importance_from_forward"] == 1
        assert rec["count/anchor_tokens"] >= 4
        assert "count/ref_cache_hit" not in rec  # a flag of the run, not a per-step count
    # DPO with a warm cache counts nothing per step
    run_dpo(tmp_path / "dpo", steps=1, batch_size=4)
    assert not [k for k in read_jsonl(tmp_path / "dpo" / "train_log.jsonl")[0] if k.startswith("count/")]


class _Fixed:
    """A method stand-in returning a fixed output (the objective's logging is under test)."""

    needs = frozenset()

    def __init__(self, out):
        self.out = out


def test_logged_logps_select_real_tokens(monkeypatch):
    """A non-finite value in a padded slot must not reach logps/* (dpo.py's torch.where rule);
    a product with the mask would give inf * 0 = nan."""
    from methods import LossOutput, TokenBatch

    g = float("-inf")
    batch = TokenBatch(chosen_logps=_t([[-1.0, -2.0, g], [-0.5, g, g]]), rejected_logps=_t([[-3.0, g], [-1.0, -1.0]]),
                       chosen_mask=_t([[1, 1, 0], [1, 0, 0]]), rejected_mask=_t([[1, 0], [1, 1]]))
    out = LossOutput(losses=torch.tensor([0.5, 0.7]), chosen_rewards=torch.zeros(2), rejected_rewards=torch.zeros(2))
    obj = PreferenceObjective(_Fixed(out), features=type("F", (), {"counters": {}})())
    monkeypatch.setattr(obj, "forward", lambda *a: (batch, out, 10))
    _, m, _ = obj.step(None, None, [0, 1], StepContext(0, 0, 0, "cpu"))
    assert m["logps/chosen"] == (-3.0 + -0.5) / 2  # rows sum to -3 and -0.5
    assert m["logps/rejected"] == (-3.0 + -2.0) / 2


def test_tidpo_logs_mean_weights_and_margin_scale():
    """Two pairs by hand. r = logps - ref; chosen weights 0.5 on both tokens of row 0, 0.2 and
    0.4 on row 1's; rejected 1.0 / 0.1."""
    from methods import TokenBatch

    g = 9.0  # garbage in padded slots
    b = TokenBatch(
        chosen_logps=_t([[-1.0, -1.0], [-0.5, -0.5]]), ref_chosen_logps=_t([[-2.0, -2.0], [-1.0, -1.5]]),
        rejected_logps=_t([[-3.0, g], [-1.0, g]]), ref_rejected_logps=_t([[-2.0, g], [-2.0, g]]),
        chosen_mask=_t([[1, 1], [1, 1]]), rejected_mask=_t([[1, 0], [1, 0]]),
        chosen_weights=_t([[0.5, 0.5], [0.2, 0.4]]), rejected_weights=_t([[1.0, g], [0.1, g]]),
        anchor_logps=_t([[-1.0]]).expand(2, 1).contiguous(), ref_anchor_logps=_t([[-1.0], [-1.0]]),
        anchor_mask=_t([[1], [1]]))
    m = methods.get("tidpo").loss(b).metrics
    # r(y_w) = [1, 1], [0.5, 1.0]; r(y_l) = [-1], [1]
    assert math.isclose(m["weights/chosen_mean"], (0.5 + 0.3) / 2, rel_tol=1e-6)
    assert math.isclose(m["weights/rejected_mean"], (1.0 + 0.1) / 2, rel_tol=1e-6)
    # weighted: row 0 = 1.0 - (-1.0) = 2.0; row 1 = (0.1 + 0.4) - 0.1 = 0.4
    # unweighted: row 0 = 2 - (-1) = 3; row 1 = 1.5 - 1 = 0.5
    assert math.isclose(m["margin/weighted"], 1.2, rel_tol=1e-6)
    assert math.isclose(m["margin/unweighted"], 1.75, rel_tol=1e-6)
    assert math.isclose(m["margin/scale"], 2.4 / 3.5, rel_tol=1e-6)
    # policy = reference: no margin to scale, the key is left out (never NaN in the log)
    b.chosen_logps, b.rejected_logps = b.ref_chosen_logps.clone(), b.ref_rejected_logps.clone()
    assert "margin/scale" not in methods.get("tidpo-official").loss(_with_kl(b)).metrics


def _with_kl(b):
    b.chosen_kl = torch.zeros_like(b.chosen_logps)
    b.rejected_kl = torch.zeros_like(b.rejected_logps)
    return b


def test_log_means_average_the_logged_steps(tmp_path):
    p = tmp_path / "log.jsonl"
    recs = [{"step": 1, "weights/chosen_mean": 0.2}, {"step": 2, "weights/chosen_mean": 0.4, "margin/scale": 0.5},
            {"step": 3, "loss": 1.0}]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert log_means(p, ("weights/chosen_mean", "margin/scale", "weights/rejected_mean")) == {
        "train/weights_chosen_mean": 0.3, "train/margin_scale": 0.5}
    assert log_means(tmp_path / "missing.jsonl", ("loss",)) == {}
