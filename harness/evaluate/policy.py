"""Evaluate one trained policy against its reference (the SFT checkpoint) on held-out data.

:func:`evaluate` runs every metric family that applies (:mod:`harness.evaluate.families`, in
order) on one :class:`~harness.evaluate.context.EvalContext` and returns flat ``metrics.json``
entries (definitions: docs/metrics.md):

* ``pref/*``, ``displacement/*``: preference accuracy (summed and per-token log-ratio, and the
  method's own implicit reward) and likelihood displacement of held-out pairs;
* ``task/*``, ``gen/mean_length``, ``winrate/*``: the greedy answers to held-out prompts,
  scored by the embedded task's oracle (``task/accuracy``; ``task/score`` its graded oracle,
  partial credit, 1 for an exact match) or a reward model, and judged against the SFT policy's
  answers through alpaca-eval's win-rate functions (and the length-controlled win rate);
* ``kl/policy_ref``: KL(policy || reference) over sampled responses: the mean over samples
  y ~ policy of sum_t KL(pi(.|x, y_<t) || pi_ref(.|x, y_<t)), the full-vocabulary KL at each
  position (never negative; :func:`~harness.evaluate.families.sequence_kl`), with its standard
  error. (Results written before 2026-12 hold the plain Monte-Carlo estimate
  sum_t [log pi(y_t) - log pi_ref(y_t)], which can come out negative with few samples.)
* ``pref/logratio_margin``: the mean summed log-ratio margin of held-out pairs (DPO's implicit
  reward margin at beta = 1); also drawn against the training step when ``train.eval_every``
  is set (:mod:`harness.evaluate.curves`);
* ``diversity/*``: Self-BLEU, Distinct-2/4, entropy (and semantic diversity) of several sampled
  responses per prompt;
* ``lm_eval/*``: the suite's lm-eval tasks, in-process.

Every metric that averages evaluation items is written with its item-level standard error
under the key the metric registry (:mod:`harness.metrics`) gives it. ``samples.jsonl`` gets the
greedy answers, then the diversity samples.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results import JsonlWriter
from ..results.progress import current
from ..schema import EvalSpec
from .context import EvalContext
from .families import FAMILIES, preference_items, sequence_kl  # noqa: F401 - the curves and tests use them here


def evaluate(ctx: EvalContext, families=None, by_family: dict | None = None) -> dict[str, Any]:
    """Every family that applies (of those named in ``families``, when given), in order;
    samples.jsonl written afresh; ``by_family`` (when given) gets each family's own metrics. The sampled metrics draw the same samples whichever families
    run (:attr:`EvalContext.sampled` draws the KL and diversity samples together)."""
    ctx.ref = ctx.ref.to(ctx.device).eval()
    ctx.policy.eval()
    path = ctx.out_dir / "samples.jsonl"
    path.unlink(missing_ok=True)  # a re-evaluation starts afresh
    ctx.samples_log = JsonlWriter(path)
    m: dict[str, Any] = {}
    try:
        if getattr(ctx.generator, "one_model_at_a_time", False):
            current().stage("evaluation:generation")
            ctx.generate_policy_first()
        for fam in FAMILIES:
            if (families is None or fam.name in families) and fam.applies(ctx):
                current().stage(f"evaluation:{fam.name}")  # progress.json: batches counted inside
                got = fam.compute(ctx)
                m.update(got)
                if by_family is not None:
                    by_family[fam.name] = got
    finally:
        ctx.samples_log.close()
        ctx.samples_log = None
        ctx.generator.close()
        ctx.policy.train()
    return m


def evaluate_policy(policy, ref, tok, data, method, spec: EvalSpec, out_dir: Path, seed: int,
                    families=None, by_family: dict | None = None, **settings) -> dict[str, Any]:
    """:func:`evaluate` (of ``families``, None: all; ``by_family``: see there) on
    ``EvalContext(policy, ref, tok, data, method, spec, out_dir, seed, **settings)`` (``chat_template``, ``max_length``,
    ``max_prompt_length``, ``trained``, ``cache_dir``, ``ref_id``, ``generator``,
    ``prompt_truncation``)."""
    return evaluate(EvalContext(policy, ref, tok, data, method, spec, Path(out_dir), seed, **settings), families,
                    by_family)
