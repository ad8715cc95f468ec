"""The metric families of a policy's evaluation, one function each, fed by one
:class:`~harness.evaluate.context.EvalContext` (definitions: docs/metrics.md).

A family is registered with :func:`family`: its name, when it applies, and the registered
metric keys (:mod:`harness.metrics`) it writes; ``tests/test_evaluate_families.py`` checks that
every such key is in the metric registry, which carries its name, direction and display. So a
new metric is its :func:`harness.metrics.register` entry plus the lines that compute it, in its
family here (or a new family: one decorated function). Families run in registration order;
what several of them read (held-out log-probs, greedy answers, samples) comes from the
context, computed once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..metrics import record_item_mean
from ..results.progress import counted
from .context import EvalContext


@dataclass(frozen=True)
class Family:
    name: str
    compute: Callable[[EvalContext], dict]
    applies: Callable[[EvalContext], bool]
    keys: tuple[str, ...] = ()   # registered metric keys it writes (bookkeeping keys aside)


FAMILIES: list[Family] = []


def family(name: str, applies: Callable[[EvalContext], bool], keys: tuple[str, ...] = ()):
    """Register the decorated ``compute(ctx) -> metrics`` as family ``name``."""
    def deco(fn):
        if any(f.name == name for f in FAMILIES):
            raise ValueError(f"metric family {name!r} is registered twice")
        FAMILIES.append(Family(name, fn, applies, tuple(keys)))
        return fn
    return deco


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else math.nan


def _summed(seqs) -> list[float]:
    return [x.sum().item() for x in seqs]


# --------------------------------------------------------------------------- preference pairs
_DISPLACEMENT = tuple(f"displacement/{side}_{what}" for side in ("chosen", "rejected")
                      for what in ("logp_ref", "logp_policy", "delta"))


def preference_items(pc, pr, rc, rr) -> dict[str, list[float]]:
    """Per held-out pair, from per-token log-probs of the policy (``pc``, ``pr``) and of the
    reference (``rc``, ``rr``) on the chosen and rejected responses: whether the summed
    log-ratio log pi/pi_ref prefers the chosen response (``pref/accuracy``), the same with
    per-token averaged log-ratios (``pref/accuracy_norm``), and the summed log-ratio margin
    (``pref/logratio_margin``: DPO's implicit reward margin at beta = 1, one definition for
    every method). An exact tie counts one half (the policy equal to its reference scores 50%,
    chance, not 0%). The final evaluation and the curves during training both use this."""
    lc = [a - b for a, b in zip(_summed(pc), _summed(rc))]
    lr = [a - b for a, b in zip(_summed(pr), _summed(rr))]

    def win(a: float, b: float) -> float:
        return 1.0 if a > b else (0.5 if a == b else 0.0)

    return {"pref/accuracy": [win(a, b) for a, b in zip(lc, lr)],
            "pref/accuracy_norm": [win(a / max(len(c), 1), b / max(len(r), 1))
                                   for a, b, c, r in zip(lc, lr, pc, pr)],
            "pref/logratio_margin": [a - b for a, b in zip(lc, lr)]}


@family("preference", lambda ctx: ctx.trained and len(ctx.heldout) > 0,
        keys=("pref/accuracy", "pref/accuracy_norm", "pref/logratio_margin") + _DISPLACEMENT)
def preference(ctx: EvalContext) -> dict:
    """Preference accuracy (summed and per-token log-ratio), the log-ratio margin and likelihood
    displacement."""
    lp, td, m = ctx.heldout_logps, ctx.heldout, {}
    items = preference_items(lp.policy_chosen, lp.policy_rejected, lp.ref_chosen, lp.ref_rejected)
    for key, vals in items.items():
        record_item_mean(m, key, vals)
    m["pref/n"] = len(td)
    for side, pol, rf in (("chosen", lp.policy_chosen, lp.ref_chosen), ("rejected", lp.policy_rejected, lp.ref_rejected)):
        a, b = _summed(rf), _summed(pol)
        record_item_mean(m, f"displacement/{side}_logp_ref", a)
        record_item_mean(m, f"displacement/{side}_logp_policy", b)
        record_item_mean(m, f"displacement/{side}_delta", [y - x for x, y in zip(a, b)])
    return m


@family("reward_accuracy", lambda ctx: ctx.trained and ctx.method is not None and len(ctx.heldout) > 0,
        keys=("pref/reward_accuracy",))
def reward_accuracy(ctx: EvalContext) -> dict:
    """Share of held-out pairs where the method's own implicit reward prefers the chosen
    response (its features computed on the held-out pairs; reference log-probs reused)."""
    from ..core.features import Features, prompt_specials
    from ..core.train import PreferenceObjective, StepContext
    from methods.feature_specs import spec_for

    td, method, tok = ctx.heldout, ctx.method, ctx.tok
    given = None
    # the held-out reference log-probs serve unless the method feeds its prompts otherwise
    if spec_for(method, "prompt").special_tokens != "drop" or not prompt_specials(tok):
        lp = ctx.heldout_logps
        given = {"chosen": dict(enumerate(lp.ref_chosen)), "rejected": dict(enumerate(lp.ref_rejected))}
    feats = Features(method, td, ref_model=ctx.ref, cache_dir=None, device=ctx.device, pad_id=tok.pad_token_id,
                     tokenizer=tok, ref_logps=given)
    obj, bs, wins = PreferenceObjective(method, feats), ctx.spec.batch_size, []
    for s in counted(range(0, len(td), bs)):  # batches of the job's stage (progress.json)
        idx = list(range(s, min(s + bs, len(td))))
        step = StepContext(0, 0, tok.pad_token_id, ctx.device, tok)
        # token weights need gradients w.r.t. the embeddings; everything else runs without
        with torch.no_grad() if "token_weights" not in method.needs else torch.enable_grad():
            _, out, _ = obj.forward(ctx.policy, td, idx, step)
        wins.extend((out.chosen_rewards > out.rejected_rewards).float().tolist())
    m: dict = {}
    record_item_mean(m, "pref/reward_accuracy", wins)
    return m


# ------------------------------------------------------------------------------ greedy answers
@family("greedy", lambda ctx: ctx.spec.generation_prompts > 0 and len(ctx.held) > 0,
        keys=("task/accuracy", "task/accuracy_sft", "task/score", "task/score_sft", "task/reward", "task/reward_sft"))
def greedy_answers(ctx: EvalContext) -> dict:
    """Task accuracy and graded score by the oracle (or the judge's reward), mean answer length,
    and the greedy answers of policy and SFT policy in samples.jsonl."""
    g, j, m = ctx.greedy, ctx.judged, {}
    if j is not None:
        name = "task/reward" if ctx.spec.judge != "oracle" else "task/accuracy"
        record_item_mean(m, name, j.scores)
        record_item_mean(m, f"{name}_sft", j.ref_scores)
        m["task/n"] = len(j.scores)
        if j.graded is not None:   # partial credit (the reward of the reward-KL frontier; docs/protocol.md)
            record_item_mean(m, "task/score", j.graded)
            record_item_mean(m, "task/score_sft", j.ref_graded)
    m["gen/mean_length"] = _mean(len(o) for o in g.ids)
    for i, (p, t, b) in enumerate(zip(g.prompts, g.texts, g.ref_texts)):
        rec = {"kind": "greedy", "i": i, "prompt": p.prompt, "output": t, "sft_output": b,
               "answer": p.meta.get("answer")}
        if j is not None:
            rec.update(score=j.scores[i], sft_score=j.ref_scores[i])
        ctx.write_sample(rec)
    return m


@family("winrate", lambda ctx: ctx.spec.winrate and ctx.spec.generation_prompts > 0 and len(ctx.held) > 0
        and ctx.judged is not None, keys=("winrate/vs_sft", "winrate/lc_vs_sft"))
def win_rate(ctx: EvalContext) -> dict:
    """Win rate and length-controlled win rate against the SFT policy's greedy answers."""
    from .winrate import judge_by_oracle, winrate

    j, g = ctx.judged, ctx.greedy
    return winrate(judge_by_oracle(j.scores, j.ref_scores), [len(o) for o in g.ids], [len(o) for o in g.ref_ids])


# ------------------------------------------------------------------------------------ samples
def sequence_kl(policy, ref, prompts, responses, pad: int, bs: int, device) -> list[float]:
    """Per sampled response y ~ policy, sum_t KL(pi(.|x, y_<t) || pi_ref(.|x, y_<t)) over the
    full vocabulary at each of its positions: an estimate of the sequence-level KL(pi || pi_ref)
    that is never negative and has lower variance than the plain Monte-Carlo estimate
    sum_t [log pi(y_t) - log pi_ref(y_t)] (both have the sequence KL as expectation: the exact
    per-position KL is the conditional expectation of the per-token log-ratio given the prefix)."""
    from ..core.batch import collate, response_logits, selected_logits

    out: list[float] = []
    with torch.no_grad():
        for s in counted(range(0, len(prompts), bs)):  # batches of the job's stage (progress.json)
            rows = collate(prompts[s: s + bs], responses[s: s + bs], pad).to(device)
            lp = torch.log_softmax(selected_logits(response_logits(policy, rows), rows).float(), -1)
            lq = torch.log_softmax(selected_logits(response_logits(ref, rows), rows).float(), -1)
            kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)  # clamp: float rounding only
            out.extend((kl * rows.resp_mask).sum(-1).cpu().tolist())
    return out


@family("kl", lambda ctx: ctx.spec.kl_samples > 0 and len(ctx.held) > 0, keys=("kl/policy_ref",))
def kl(ctx: EvalContext) -> dict:
    """KL(policy || reference) over sampled responses (empty ones left out): the mean of
    :func:`sequence_kl`, never negative, with its standard error over samples."""
    keep = [(p, y) for p, y in ctx.sampled.kl if y]
    if not keep:
        return {}
    ps, ys = [p for p, _ in keep], [y for _, y in keep]
    m: dict = {}
    record_item_mean(m, "kl/policy_ref", sequence_kl(ctx.policy, ctx.ref, ps, ys, ctx.pad, ctx.spec.batch_size,
                                                     ctx.device))
    return m


@family("diversity", lambda ctx: ctx.spec.diversity_prompts > 0 and len(ctx.held) > 0,
        keys=("diversity/self_bleu", "diversity/distinct_2", "diversity/distinct_4", "diversity/entropy",
              "diversity/semantic"))
def diversity(ctx: EvalContext) -> dict:
    """Self-BLEU, Distinct-2/4, entropy (and semantic diversity) of each prompt's samples, over
    the tokenizer's tokens; the samples in samples.jsonl."""
    from .diversity import diversity_metrics

    groups = ctx.sampled.groups
    specials = (ctx.eos, ctx.pad)
    m = diversity_metrics([[[t for t in y if t not in specials] for y in g] for g in groups])
    texts = [[ctx.decode(y) for y in g] for g in groups]
    if ctx.spec.semantic_diversity != "off":
        from . import semantic

        if semantic.available():
            m["diversity/semantic"] = semantic.semantic_diversity(texts)
        elif ctx.spec.semantic_diversity == "on":
            semantic.semantic_diversity(texts)  # raises the install hint
    for i, (p, ts) in enumerate(zip(ctx.held, texts)):
        ctx.write_sample({"kind": "sample", "i": i, "prompt": p.prompt, "outputs": ts})
    return m


# ------------------------------------------------------------------------------------ lm-eval
@family("lm_eval", lambda ctx: bool(ctx.spec.lm_eval_tasks))
def lm_eval(ctx: EvalContext) -> dict:
    """The suite's lm-eval tasks (``lm_eval/<task>/<metric>``), in-process."""
    from .lmeval import run_lm_eval

    spec, include = ctx.spec, None
    if any(t.startswith("embedded") for t in spec.lm_eval_tasks):
        include = write_embedded_tasks(ctx.data, spec.lm_eval_limit, ctx.out_dir / "lm_eval_tasks")
    model = ctx.generator.lm_eval_model(ctx.policy, ctx.tok) if hasattr(ctx.generator, "lm_eval_model") else ctx.policy
    return run_lm_eval(model, ctx.tok, list(spec.lm_eval_tasks), include_path=include, limit=spec.lm_eval_limit,
                       batch_size=spec.batch_size, device=str(ctx.device), seed=ctx.seed,
                       allow_code_execution=spec.allow_code_execution)


def write_embedded_tasks(data, limit: int | None, out_dir):
    """The local lm-eval tasks ``embedded_gen`` / ``embedded_mc`` from the first ``limit`` (100)
    held-out pairs of ``data``, written into ``out_dir`` (returned)."""
    from .lmeval import write_local_tasks

    rows = data.heldout[: limit or 100]
    text = [p.prompt if isinstance(p.prompt, str) else str(p.prompt) for p in rows]
    gen = [{"prompt": t, "answer": p.meta.get("answer", p.chosen)} for t, p in zip(text, rows)]
    mc = [{"question": t, "choices": [p.chosen, p.rejected], "gold": 0} for t, p in zip(text, rows)]
    write_local_tasks(out_dir, gen, mc)
    return out_dir
