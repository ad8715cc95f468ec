"""Evaluate one trained policy against its reference (the SFT checkpoint) on held-out data.

Returns flat ``metrics.json`` entries (see docs/metrics.md for the definitions):

* ``pref/accuracy``: share of held-out pairs whose summed policy-vs-reference log-ratio is
  higher for the chosen response; ``pref/accuracy_norm`` the same with per-token averaged
  log-ratios; ``pref/reward_accuracy`` the share where the method's own implicit reward
  prefers the chosen response (its features computed on the held-out pairs).
* ``displacement/*``: mean summed log-probability of held-out chosen and rejected responses
  under the reference and under the policy, and their change (likelihood displacement).
* ``task/accuracy``: the embedded task's oracle (exact match) on greedy answers to held-out
  prompts; ``task/score`` its graded oracle (partial credit, 1 for an exact match);
  ``winrate/*``: those answers judged against the SFT policy's greedy answers by the oracle,
  through alpaca-eval's win-rate functions (and the length-controlled win rate).
* ``kl/policy_ref``: KL(policy || reference) over sampled responses: the mean over samples
  y ~ policy of sum_t KL(pi(.|x, y_<t) || pi_ref(.|x, y_<t)), the full-vocabulary KL at each
  position of the sample (never negative; see :func:`sequence_kl`), with its standard error
  over samples. (Results written before 2026-12 hold the plain Monte-Carlo estimate
  sum_t [log pi(y_t) - log pi_ref(y_t)], which can come out negative with few samples.)
* ``pref/logratio_margin``: the mean summed log-ratio margin of held-out pairs (DPO's implicit
  reward margin at beta = 1), comparable across methods; also drawn against the training step
  when ``train.eval_every`` is set (:mod:`harness.evaluate.curves`).
* ``diversity/*``: Self-BLEU, Distinct-2/4, entropy (and semantic diversity) of several
  sampled responses per prompt, over the tokenizer's tokens.
* ``lm_eval/*``: the suite's lm-eval tasks, in-process.

Every metric that averages evaluation items (pairs, prompts, samples) is written with its
item-level standard error under the key the metric registry (:mod:`harness.metrics`) gives
it, through :func:`harness.metrics.record_item_mean`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..core.batch import sequence_logps
from ..metrics import record_item_mean
from ..data.tokenize import encode_prompt, tokenize
from ..results import JsonlWriter
from ..schema import EvalSpec
from .generation import generate


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else math.nan


def evaluate_policy(policy, ref, tok, data, method, spec: EvalSpec, out_dir: Path, seed: int, *,
                    chat_template: bool = True, max_length: int = 512, max_prompt_length: int = 256,
                    trained: bool = True, cache_dir: Path | None = None, ref_id: str | None = None,
                    prompt_truncation: str = "keep_end") -> dict[str, Any]:
    """``trained=False`` (the SFT row: policy is the reference) leaves out the metrics that
    compare the policy with itself. ``cache_dir`` + ``ref_id`` cache the reference's greedy
    answers, which every cell of a stage shares."""
    device = next(policy.parameters()).device
    ref = ref.to(device).eval()
    policy.eval()
    m: dict[str, Any] = {}
    pad, eos = tok.pad_token_id, tok.eos_token_id
    held = data.heldout[: spec.heldout_pairs] if spec.heldout_pairs else data.heldout
    td = tokenize(held, tok, max_length, max_prompt_length, chat_template, prompt_truncation=prompt_truncation)

    def prompt_ids(pair) -> list[int]:  # what the model sees before it answers, cut as in training
        return encode_prompt(tok, pair, chat_template, max_prompt_length, prompt_truncation)

    bs = spec.batch_size
    if len(td) and trained:
        pc = sequence_logps(policy, td.prompts, td.chosen, pad, bs, device)
        pr = sequence_logps(policy, td.prompts, td.rejected, pad, bs, device)
        rc = sequence_logps(ref, td.prompts, td.chosen, pad, bs, device)
        rr = sequence_logps(ref, td.prompts, td.rejected, pad, bs, device)
        for key, items in preference_items(pc, pr, rc, rr).items():
            record_item_mean(m, key, items)
        m["pref/n"] = len(td)
        for side, pol, rf in (("chosen", pc, rc), ("rejected", pr, rr)):
            a = [x.sum().item() for x in rf]
            b = [x.sum().item() for x in pol]
            record_item_mean(m, f"displacement/{side}_logp_ref", a)
            record_item_mean(m, f"displacement/{side}_logp_policy", b)
            record_item_mean(m, f"displacement/{side}_delta", [y - x for x, y in zip(a, b)])
        if method is not None:
            record_item_mean(m, "pref/reward_accuracy",
                             _reward_accuracy(policy, ref, tok, td, method, device, bs))
    gen_prompts = held[: spec.generation_prompts]
    (Path(out_dir) / "samples.jsonl").unlink(missing_ok=True)  # a re-evaluation starts afresh
    samples = JsonlWriter(Path(out_dir) / "samples.jsonl")
    if gen_prompts:
        pids = [prompt_ids(p) for p in gen_prompts]
        outs = generate(policy, pids, pad_id=pad, eos_id=eos, max_new_tokens=spec.max_new_tokens, batch_size=bs)
        base = _reference_answers(ref, pids, pad, eos, spec, bs, cache_dir, ref_id)
        texts = [tok.decode(o, skip_special_tokens=True) for o in outs]
        btexts = [tok.decode(o, skip_special_tokens=True) for o in base]
        scores = bscores = None
        if spec.judge != "oracle":
            from .judge import reward_scores

            scores = reward_scores(spec.judge, [p.prompt for p in gen_prompts], texts)
            bscores = reward_scores(spec.judge, [p.prompt for p in gen_prompts], btexts)
            record_item_mean(m, "task/reward", scores)
            record_item_mean(m, "task/reward_sft", bscores)
            m["task/n"] = len(scores)
        elif data.task is not None:
            scores = [data.task.score(p.meta, t) for p, t in zip(gen_prompts, texts)]
            bscores = [data.task.score(p.meta, t) for p, t in zip(gen_prompts, btexts)]
            record_item_mean(m, "task/accuracy", scores)
            record_item_mean(m, "task/accuracy_sft", bscores)
            m["task/n"] = len(scores)
            # partial credit (the reward of the reward-KL frontier; docs/protocol.md)
            record_item_mean(m, "task/score", [data.task.graded(p.meta, t) for p, t in zip(gen_prompts, texts)])
            record_item_mean(m, "task/score_sft", [data.task.graded(p.meta, t) for p, t in zip(gen_prompts, btexts)])
        if scores is not None:
            if spec.winrate:
                from .winrate import judge_by_oracle, winrate

                prefs = judge_by_oracle(scores, bscores)
                m.update(winrate(prefs, [len(o) for o in outs], [len(o) for o in base]))
        m["gen/mean_length"] = _mean(len(o) for o in outs)
        for i, (p, t, b) in enumerate(zip(gen_prompts, texts, btexts)):
            rec = {"kind": "greedy", "i": i, "prompt": p.prompt, "output": t, "sft_output": b,
                   "answer": p.meta.get("answer")}
            if scores is not None:
                rec.update(score=scores[i], sft_score=bscores[i])
            samples.write(rec)
    torch.manual_seed(seed + 7919)  # sampled metrics are reproducible per cell
    if spec.kl_samples and held:
        kp = [prompt_ids(held[i % len(held)]) for i in range(spec.kl_samples)]
        ys = generate(policy, kp, pad_id=pad, eos_id=eos, max_new_tokens=spec.max_new_tokens, do_sample=True,
                      temperature=spec.temperature, batch_size=bs)
        keep = [(p, y) for p, y in zip(kp, ys) if y]
        if keep:
            record_item_mean(m, "kl/policy_ref", sequence_kl(policy, ref, [p for p, _ in keep],
                                                             [y for _, y in keep], pad, bs, device))
    if spec.diversity_prompts and held:
        dp = held[: spec.diversity_prompts]
        pids = [prompt_ids(p) for p in dp]
        ys = generate(policy, pids, pad_id=pad, eos_id=eos, max_new_tokens=spec.max_new_tokens, do_sample=True,
                      temperature=spec.temperature, top_p=spec.top_p, num_return_sequences=spec.samples_per_prompt,
                      batch_size=bs)
        k = spec.samples_per_prompt
        groups = [[[t for t in y if t not in (eos, pad)] for y in ys[i * k:(i + 1) * k]] for i in range(len(dp))]
        from .diversity import diversity_metrics

        m.update(diversity_metrics(groups))
        texts_pp = [[tok.decode(y, skip_special_tokens=True) for y in ys[i * k:(i + 1) * k]] for i in range(len(dp))]
        if spec.semantic_diversity != "off":
            from . import semantic

            if semantic.available():
                m["diversity/semantic"] = semantic.semantic_diversity(texts_pp)
            elif spec.semantic_diversity == "on":
                semantic.semantic_diversity(texts_pp)  # raises the install hint
        for i, (p, ts) in enumerate(zip(dp, texts_pp)):
            samples.write({"kind": "sample", "i": i, "prompt": p.prompt, "outputs": ts})
    samples.close()
    if spec.lm_eval_tasks:
        m.update(_lm_eval(policy, tok, data, spec, Path(out_dir), seed, device))
    policy.train()
    return m


def preference_items(pc, pr, rc, rr) -> dict[str, list[float]]:
    """Per held-out pair, from per-token log-probs of the policy (``pc``, ``pr``) and of the
    reference (``rc``, ``rr``) on the chosen and rejected responses: whether the summed
    log-ratio log pi/pi_ref prefers the chosen response (``pref/accuracy``), the same with
    per-token averaged log-ratios (``pref/accuracy_norm``), and the summed log-ratio margin
    (``pref/logratio_margin``: DPO's implicit reward margin at beta = 1, one definition for
    every method). An exact tie counts one half (the policy equal to its reference scores 50%,
    chance, not 0%). The final evaluation and the curves during training both use this."""
    lc = [(a - b).sum().item() for a, b in zip(pc, rc)]
    lr = [(a - b).sum().item() for a, b in zip(pr, rr)]

    def win(a: float, b: float) -> float:
        return 1.0 if a > b else (0.5 if a == b else 0.0)

    return {"pref/accuracy": [win(a, b) for a, b in zip(lc, lr)],
            "pref/accuracy_norm": [win(a / max(len(c), 1), b / max(len(r), 1))
                                   for a, b, c, r in zip(lc, lr, pc, pr)],
            "pref/logratio_margin": [a - b for a, b in zip(lc, lr)]}


def sequence_kl(policy, ref, prompts, responses, pad: int, bs: int, device) -> list[float]:
    """Per sampled response y ~ policy, sum_t KL(pi(.|x, y_<t) || pi_ref(.|x, y_<t)) over the
    full vocabulary at each of its positions: an estimate of the sequence-level KL(pi || pi_ref)
    that is never negative and has lower variance than the plain Monte-Carlo estimate
    sum_t [log pi(y_t) - log pi_ref(y_t)] (both have the sequence KL as expectation: the exact
    per-position KL is the conditional expectation of the per-token log-ratio given the prefix)."""
    from ..core.batch import collate, response_logits, selected_logits

    out: list[float] = []
    with torch.no_grad():
        for s in range(0, len(prompts), bs):
            rows = collate(prompts[s: s + bs], responses[s: s + bs], pad).to(device)
            lp = torch.log_softmax(selected_logits(response_logits(policy, rows), rows).float(), -1)
            lq = torch.log_softmax(selected_logits(response_logits(ref, rows), rows).float(), -1)
            kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)  # clamp: float rounding only
            out.extend((kl * rows.resp_mask).sum(-1).cpu().tolist())
    return out


def _reference_answers(ref, pids, pad, eos, spec, bs, cache_dir, ref_id) -> list[list[int]]:
    import hashlib
    import json

    path = None
    if cache_dir is not None and ref_id:
        key = hashlib.sha256(json.dumps([ref_id, pids, spec.max_new_tokens]).encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"ref-greedy-{key}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass  # damaged entry: recompute
    out = generate(ref, pids, pad_id=pad, eos_id=eos, max_new_tokens=spec.max_new_tokens, batch_size=bs)
    if path is not None:
        from ..results import atomic_write_json

        atomic_write_json(path, out)
    return out


def _reward_accuracy(policy, ref, tok, td, method, device, bs) -> list[float]:
    """Per held-out pair, 1.0 where the method's own implicit reward prefers the chosen
    response (its features computed on the held-out pairs)."""
    from ..core.features import Features
    from ..core.train import PreferenceObjective, StepContext

    feats = Features(method, td, ref_model=ref, cache_dir=None, device=device, pad_id=tok.pad_token_id,
                     tokenizer=tok)
    obj = PreferenceObjective(method, feats)
    wins: list[float] = []
    for s in range(0, len(td), bs):
        idx = list(range(s, min(s + bs, len(td))))
        ctx = StepContext(0, 0, tok.pad_token_id, device, tok)
        # token weights need gradients w.r.t. the embeddings; everything else runs without
        with torch.no_grad() if "token_weights" not in method.needs else torch.enable_grad():
            _, out, _ = obj.forward(policy, td, idx, ctx)
        wins.extend((out.chosen_rewards > out.rejected_rewards).float().tolist())
    return wins


def _lm_eval(policy, tok, data, spec: EvalSpec, out_dir: Path, seed: int, device) -> dict:
    from .lmeval import run_lm_eval, write_local_tasks

    include = None
    if any(t.startswith("embedded") for t in spec.lm_eval_tasks):
        gen = [{"prompt": p.prompt if isinstance(p.prompt, str) else str(p.prompt), "answer": p.meta.get("answer", p.chosen)}
               for p in data.heldout[: spec.lm_eval_limit or 100]]
        mc = [{"question": p.prompt if isinstance(p.prompt, str) else str(p.prompt),
               "choices": [p.chosen, p.rejected], "gold": 0} for p in data.heldout[: spec.lm_eval_limit or 100]]
        include = out_dir / "lm_eval_tasks"
        write_local_tasks(include, gen, mc)
    return run_lm_eval(policy, tok, list(spec.lm_eval_tasks), include_path=include, limit=spec.lm_eval_limit,
                       batch_size=spec.batch_size, device=str(device), seed=seed,
                       allow_code_execution=spec.allow_code_execution)
