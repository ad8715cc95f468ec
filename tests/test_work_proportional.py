"""Work proportional to what was asked (issue 15): reference log-probs only for the pairs the
training steps read, length-grouped batches whose results equal each row computed alone.
Expected values come from plain per-row computations (each prompt generated or scored by
itself, no padding) or from the definition (the union of every step's examples), never from the
code under test."""
from __future__ import annotations

import torch

import methods
from core_helpers import pairs, tiny
from harness.core.batch import by_length, collate, gather_logps, response_logits, sequence_logps
from harness.core.features import Features
from harness.core.train import step_indices, used_indices
from harness.data.tokenize import tokenize
from harness.evaluate.generation import generate

torch.manual_seed(0)


def _prompts(tok, n=11):
    # prompts of very different lengths, so a batch in input order carries much padding
    return [tok(p.prompt)["input_ids"][: 2 + (3 * i) % 9] for i, p in enumerate(pairs(n, seed=4))]


def test_by_length_is_longest_first_ties_in_input_order():
    assert by_length([3, 5, 3, 9, 5]) == [3, 1, 4, 0, 2]


def test_length_grouped_greedy_equals_each_prompt_alone():
    model, tok = tiny(1)
    prompts = _prompts(tok)
    alone = [generate(model, [p], pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=6,
                      batch_size=1)[0] for p in prompts]
    batched = generate(model, prompts, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=6,
                       batch_size=4)
    assert batched == alone
    assert len({tuple(a) for a in alone}) > 1          # the answers differ: order would show


def test_samples_come_back_prompt_major():
    """top_k=1 sampling is greedy: each prompt's k samples must all be that prompt's answer."""
    model, tok = tiny(1)
    prompts = _prompts(tok, 7)
    kw = dict(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=5)
    want = [generate(model, [p], batch_size=1, **kw)[0] for p in prompts]
    got = generate(model, prompts, do_sample=True, top_k=1, num_return_sequences=3, batch_size=3, **kw)
    assert got == [w for w in want for _ in range(3)]


def test_length_grouped_log_probs_equal_each_row_alone():
    model, tok = tiny(2)
    td = tokenize(pairs(13, seed=5), tok, 64, 32)
    got = sequence_logps(model, td.prompts, td.chosen, tok.pad_token_id, 4, torch.device("cpu"))
    for p, r, g in zip(td.prompts, td.chosen, got):
        with torch.no_grad():
            rows = collate([p], [r], tok.pad_token_id)
            want = gather_logps(response_logits(model, rows), rows)[0]
        assert torch.allclose(g, want, atol=1e-6)


def test_used_indices_is_the_union_of_every_step():
    for n, steps, eff, seed in ((50, 3, 8, 0), (50, 7, 8, 1), (40, 5, 8, 2), (13, 1, 32, 3), (100, 0, 4, 0)):
        union = sorted({i for s in range(steps) for i in step_indices(n, s, eff, seed)})
        assert used_indices(n, steps, eff, seed) == union


def _features(data, ref, tok, cache, indices, counters):
    return Features(methods.get("dpo"), data, ref_model=ref, cache_dir=cache, device=torch.device("cpu"),
                    pad_id=tok.pad_token_id, tokenizer=tok, counters=counters, indices=indices)


def test_reference_log_probs_only_for_the_pairs_used_and_the_cache_grows(tmp_path):
    ref, tok = tiny(3)
    data = tokenize(pairs(24, seed=6), tok, 64, 32)
    full = {"chosen": sequence_logps(ref, data.prompts, data.chosen, tok.pad_token_id, 32, "cpu")}
    first = [1, 5, 6, 20]
    c1 = {}
    f1 = _features(data, ref, tok, tmp_path, first, c1)
    assert sorted(f1.ref_logps["chosen"]) == first and c1["ref_cache_hit"] == 0
    assert c1["ref_pass_tokens"] == sum(2 * len(data.prompts[i]) + len(data.chosen[i]) + len(data.rejected[i])
                                        for i in first)
    for i in first:
        assert torch.allclose(f1.ref_logps["chosen"][i], full["chosen"][i], atol=1e-6)
    # a run that also reads pairs 2 and 7 computes those two only, and keeps the others
    c2 = {}
    f2 = _features(data, ref, tok, tmp_path, first + [2, 7], c2)
    assert c2["ref_cache_hit"] == 0
    assert c2["ref_pass_tokens"] == sum(2 * len(data.prompts[i]) + len(data.chosen[i]) + len(data.rejected[i])
                                        for i in (2, 7))
    assert torch.equal(f2.ref_logps["chosen"][5], f1.ref_logps["chosen"][5])
    c3 = {}
    _features(data, ref, tok, tmp_path, [2, 20], c3)                 # all cached now: no reference pass
    assert c3["ref_cache_hit"] == 1 and "ref_pass_tokens" not in c3 and c3.get("ref_forward", 0) == 0
