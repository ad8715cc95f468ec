"""TI-DPO token-importance weights (harness/core/importance.py).

Expected values come from an independent computation: the raw importance by central finite
differences of L = max_v logits[last, v] with respect to every input-embedding coordinate of a
float64 model, and the normalization, Gaussian prior and mixing written out here from the
formulas of REFERENCE.md (paper Eqs. 5-8; the released code for "released": normalized over
the whole prompt + response span S, rescaled to sum S, sigma = max(1, S / max(1, div)))."""
from __future__ import annotations

import math

import pytest
import torch

from harness.core.importance import apply_fallback, combine, gaussian_prior, token_weights
from methods.feature_specs import SpecError, TokenWeightSpec

torch.set_num_threads(1)

PROMPTS = [[1, 5, 6], [1, 7], [1, 8, 9, 10, 11]]
RESPONSES = [[3, 4, 12, 2], [5, 6, 7, 8, 2], [9, 2]]


def tiny_llama(dtype=torch.float64, seed=0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=32, vocab_size=20, bos_token_id=1, eos_token_id=2, pad_token_id=0, **kw)
    return LlamaForCausalLM(cfg).to(dtype)


def tiny_qwen2(seed=1):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=32, vocab_size=20, eos_token_id=2, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


def tiny_gpt2(seed=2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=20, n_positions=64,
                                      eos_token_id=2, bos_token_id=1))


def fd_importance(model, seq: list[int], h: float = 1e-6) -> list[float]:
    """I_i = sum_d |dL/de_{i,d}| by central differences, L = max logit at the last position.

    All 2 * S * H perturbed copies of the embeddings go through the model as one batch."""
    model.eval()
    with torch.no_grad():
        e0 = model.get_input_embeddings()(torch.tensor([seq]))[0]
        S, H = e0.shape
        eye = torch.eye(S * H, dtype=e0.dtype).view(S * H, S, H) * h
        batch = torch.cat([e0 + eye, e0 - eye])  # [2 S H, S, H]
        L = model(inputs_embeds=batch).logits[:, -1].max(-1).values
        grad = ((L[: S * H] - L[S * H:]) / (2 * h)).view(S, H)
    return grad.abs().sum(-1).tolist()


def prior(T: int, div: float) -> list[float]:
    mu, sigma = (T - 1) / 2, T / div
    return [math.exp(-0.5 * ((t - mu) / sigma) ** 2) for t in range(T)]


def released_prior(S: int, div: float) -> list[float]:
    """The released code's prior: sigma = max(1, S / max(1, div)), normalized to sum 1."""
    mu, sigma = (S - 1) / 2, max(1.0, S / max(1.0, div))
    p = [math.exp(-0.5 * ((t - mu) / sigma) ** 2) for t in range(S)]
    return [x / sum(p) for x in p]


def released_expected(I: list[float], T: int, lam: float, div: float) -> list[float]:
    """Mixture over the whole span, renormalized to sum 1, times S; the response's slice."""
    S = len(I)
    P = released_prior(S, div)
    mix = [lam * I[i] / sum(I) + (1 - lam) * P[i] for i in range(S)]
    return [S * x / sum(mix) for x in mix][S - T:]


def W(**kw) -> TokenWeightSpec:
    return TokenWeightSpec(**kw)


@pytest.fixture(scope="module")
def model64():
    # GPT-2 (tied embeddings) in float64: Llama's RMSNorm computes in float32 whatever the
    # model dtype, which would leave finite differences at float32 precision.
    return tiny_gpt2().to(torch.float64)


@pytest.fixture(scope="module")
def fd(model64):
    """Finite-difference raw importance of every token of each prompt + response."""
    return [fd_importance(model64, p + r) for p, r in zip(PROMPTS, RESPONSES)]


def close(a, b, tol=1e-6):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, rtol=tol, atol=tol), (a.tolist(), b.tolist())


# ------------------------------------------------------------------------------ prior
def test_gaussian_prior_written_out():
    # T=5, sigma_div=4: mu = 2, sigma = 1.25, P(t) = exp(-0.5 ((t-2)/1.25)^2)
    expected = [0.2780373004531941, 0.7261490370736908, 1.0, 0.7261490370736908, 0.2780373004531941]
    close(gaussian_prior(5, 4.0), expected, 1e-12)
    # T=4, sigma_div=8: mu = 1.5, sigma = 0.5: exp(-4.5), exp(-0.5), exp(-0.5), exp(-4.5)
    close(gaussian_prior(4, 8.0), [math.exp(-4.5), math.exp(-0.5), math.exp(-0.5), math.exp(-4.5)], 1e-12)


def test_lambda_zero_gives_the_prior(model64):
    # paper: w = P, unnormalized, over the response (T=5 for the second example)
    w = token_weights(model64, [[1, 7]], [[5, 6, 7, 8, 2]], W(mix=0.0), 0, "cpu")[0]
    close(w, [0.2780373004531941, 0.7261490370736908, 1.0, 0.7261490370736908, 0.2780373004531941])
    # released: prior over the span S = 2 + 3 = 5; S/8 < 1, so sigma = max(1, 5/8) = 1 (the
    # clamp): P ~ exp(-2), exp(-0.5), 1, exp(-0.5), exp(-2) over t = 0..4, normalized, times 5;
    # the response is the last three.
    Z = 1 + 2 * math.exp(-0.5) + 2 * math.exp(-2)
    w = token_weights(model64, [[1, 7]], [[5, 6, 2]], W(mix=0.0, prior_sigma_div=8.0, convention="released"),
                      0, "cpu")[0]
    close(w, [5 / Z, 5 * math.exp(-0.5) / Z, 5 * math.exp(-2) / Z])
    # sigma_div below 1 is clamped to 1: sigma = S = 5, P ~ exp(-0.5 ((t-2)/5)^2)
    p = [math.exp(-0.5 * ((t - 2) / 5) ** 2) for t in range(5)]
    w = token_weights(model64, [[1, 7]], [[5, 6, 2]], W(mix=0.0, prior_sigma_div=0.25, convention="released"),
                      0, "cpu")[0]
    close(w, [5 * x / sum(p) for x in p[2:]])


# ------------------------------------------------------------------ gradient attribution
def test_paper_weights_match_finite_differences(model64, fd):
    lam, div = 0.7, 4.0
    got = token_weights(model64, PROMPTS, RESPONSES, W(mix=lam, prior_sigma_div=div), 0, "cpu")
    for w, p, r, I in zip(got, PROMPTS, RESPONSES, fd):
        T = len(r)
        I_resp = I[len(p):]
        In = [x / sum(I_resp) for x in I_resp]
        P = prior(T, div)
        expected = [lam * In[t] + (1 - lam) * P[t] for t in range(T)]
        assert w.dtype == torch.float32 and w.shape == (T,)
        close(w, expected, 1e-5)


def test_released_weights_match_finite_differences(model64, fd):
    """The released rescale: the weights average 1 over prompt + response, not over the
    response (issue 13: the earlier rule renormalized the response slice to mean 1)."""
    lam, div = 0.2, 8.0
    got = token_weights(model64, PROMPTS, RESPONSES, W(mix=lam, prior_sigma_div=div, convention="released"), 0, "cpu")
    means = []
    for w, p, r, I in zip(got, PROMPTS, RESPONSES, fd):
        close(w, released_expected(I, len(r), lam, div), 1e-5)
        means.append(float(w.mean()))
    # the response slices do not average 1, and differ between rows
    assert max(abs(m - 1.0) for m in means) > 0.05, means
    assert max(means) - min(means) > 0.05, means


def test_prior_none_is_normalized_importance(model64, fd):
    got = token_weights(model64, PROMPTS, RESPONSES, W(prior="none", mix=0.3), 0, "cpu")
    lam1 = token_weights(model64, PROMPTS, RESPONSES, W(mix=1.0), 0, "cpu")
    for w, w1, p, I in zip(got, lam1, PROMPTS, fd):
        I_resp = I[len(p):]
        close(w, [x / sum(I_resp) for x in I_resp], 1e-5)
        close(w, w1, 1e-7)  # documented: the same as importance_lambda = 1
        assert abs(float(w.sum()) - 1.0) < 1e-6


def test_softmax_prior_ablation(model64, fd):
    lam, div = 0.7, 4.0
    got = token_weights(model64, PROMPTS, RESPONSES, W(prior="softmax"), 0, "cpu")
    for w, p, r, I in zip(got, PROMPTS, RESPONSES, fd):
        I_resp = I[len(p):]
        z = sum(math.exp(x) for x in I_resp)
        P = prior(len(r), div)
        close(w, [lam * math.exp(x) / z + (1 - lam) * P[t] for t, x in enumerate(I_resp)], 1e-5)
    # released: softmax over the whole span, then the released pipeline
    got = token_weights(model64, PROMPTS, RESPONSES, W(prior="softmax", convention="released", mix=0.2,
                                                      prior_sigma_div=8.0), 0, "cpu")
    for w, p, r, I in zip(got, PROMPTS, RESPONSES, fd):
        S, T = len(p) + len(r), len(r)
        z = sum(math.exp(x) for x in I)
        P = released_prior(S, 8.0)
        mix = [0.2 * math.exp(I[i]) / z + 0.8 * P[i] for i in range(S)]
        close(w, [S * x / sum(mix) for x in mix][S - T:], 1e-5)


@pytest.mark.parametrize("make", [tiny_qwen2, tiny_gpt2, lambda: tiny_llama(torch.float32)],
                         ids=["qwen2-tied", "gpt2-tied", "llama"])
@pytest.mark.parametrize("norm", ["paper", "released"])
def test_batched_equals_one_by_one(make, norm):
    """One forward + one backward for the batch gives each row its own gradient."""
    model = make()
    hp = W(convention=norm)
    batched = token_weights(model, PROMPTS, RESPONSES, hp, 0, "cpu")
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        alone = token_weights(model, [p], [r], hp, 0, "cpu")[0]
        close(batched[i], alone, 2e-6)
    # another pad id changes nothing (padding sits after each row's last real token)
    close(torch.cat(token_weights(model, PROMPTS, RESPONSES, hp, 17, "cpu")), torch.cat(batched), 2e-6)


def test_rows_do_not_mix(model64):
    a = token_weights(model64, PROMPTS, RESPONSES, W(), 0, "cpu")
    other = [list(r) for r in RESPONSES]
    other[1] = [13, 14, 15, 16, 17, 18, 2]  # another row, longer than before
    b = token_weights(model64, PROMPTS, other, W(), 0, "cpu")
    close(a[0], b[0], 1e-12)
    close(a[2], b[2], 1e-12)
    assert not torch.allclose(a[1], b[1][:5])


def test_constants_no_param_grad_and_modes_restored():
    model = tiny_llama(torch.float32, attention_dropout=0.5)
    model.train()
    model.model.layers[0].mlp.eval()  # a submodule deliberately in eval while the root trains
    before = {n: m.training for n, m in model.named_modules()}
    ws = token_weights(model, PROMPTS, RESPONSES, W(), 0, "cpu")
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(not w.requires_grad and w.grad_fn is None for w in ws)
    # attribution runs without dropout: same weights as the model in eval mode, every call
    again = token_weights(model, PROMPTS, RESPONSES, W(), 0, "cpu")
    model.eval()
    ev = token_weights(model, PROMPTS, RESPONSES, W(), 0, "cpu")
    assert not model.training
    for a, b, c in zip(ws, again, ev):
        close(a, b, 1e-7)
        close(a, c, 1e-7)


def test_peft_wrapped_model():
    peft = pytest.importorskip("peft")
    base = tiny_llama(torch.float32)
    ref = token_weights(base, PROMPTS, RESPONSES, W(), 0, "cpu")
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(base, cfg)  # LoRA B starts at 0: the same function as base
    model.train()
    got = token_weights(model, PROMPTS, RESPONSES, W(), 0, "cpu")
    for a, b in zip(got, ref):
        close(a, b, 1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert model.training


# ----------------------------------------------------------------------------- ablations
class _NoModel:
    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) by a scheme that needs no model pass")


def test_uniform_scheme_is_all_ones_without_a_model_pass():
    for norm in ("paper", "released"):
        ws = token_weights(_NoModel(), PROMPTS, RESPONSES, W(scheme="uniform", convention=norm), 0, "cpu")
        assert [w.tolist() for w in ws] == [[1.0] * len(r) for r in RESPONSES]


def test_random_scheme_is_seeded_and_normalized_like_importance():
    lam, div = 0.7, 4.0
    torch.manual_seed(123)
    got = token_weights(_NoModel(), PROMPTS, RESPONSES, W(scheme="random"), 0, "cpu")
    torch.manual_seed(123)
    draws = [torch.rand(len(r)).tolist() for r in RESPONSES]  # one draw per example, in order
    for w, u, r in zip(got, draws, RESPONSES):
        P = prior(len(r), div)
        close(w, [lam * x / sum(u) + (1 - lam) * P[t] for t, x in enumerate(u)], 1e-6)
    torch.manual_seed(124)
    other = token_weights(_NoModel(), PROMPTS, RESPONSES, W(scheme="random"), 0, "cpu")
    assert not torch.allclose(torch.cat(got), torch.cat(other))
    # released: the draws cover the whole prompt + response span
    spec = W(scheme="random", convention="released", mix=0.2, prior_sigma_div=8.0)
    torch.manual_seed(7)
    got = token_weights(_NoModel(), PROMPTS, RESPONSES, spec, 0, "cpu")
    torch.manual_seed(7)
    draws = [torch.rand(len(p) + len(r)).tolist() for p, r in zip(PROMPTS, RESPONSES)]
    for w, u, r in zip(got, draws, RESPONSES):
        close(w, released_expected(u, len(r), 0.2, 8.0), 1e-6)


def test_paper_fallback_is_ones_per_response():
    model = tiny_llama(torch.float32)
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")  # every logit vector now holds a NaN
    ws = token_weights(model, PROMPTS, RESPONSES, W(), 0, "cpu")
    assert [w.tolist() for w in ws] == [[1.0] * len(r) for r in RESPONSES]
    # an all-zero attribution (0/0) falls back too, and only that response does
    spec = W()
    rows = [combine(torch.zeros(4), 4, spec), combine(torch.tensor([1.0, 3.0]), 2, spec)]
    out = apply_fallback(rows, spec)
    assert out[0].tolist() == [1.0] * 4
    P = prior(2, 4.0)
    close(out[1], [0.7 * 0.25 + 0.3 * P[0], 0.7 * 0.75 + 0.3 * P[1]])


def test_released_nan_or_zero_importance_leaves_the_prior():
    """NaN > 0 and 0 > 0 are false: the released code mixes nothing in and rescales the
    prior alone over the span (not all ones)."""
    model = tiny_llama(torch.float32)
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")
    spec = W(convention="released", mix=0.2, prior_sigma_div=8.0)
    ws = token_weights(model, PROMPTS, RESPONSES, spec, 0, "cpu")
    for w, p, r in zip(ws, PROMPTS, RESPONSES):
        S = len(p) + len(r)
        close(w, [S * x for x in released_prior(S, 8.0)][S - len(r):], 1e-6)
    w = apply_fallback([combine(torch.zeros(6), 2, spec)], spec)[0]
    close(w, [6 * x for x in released_prior(6, 8.0)][4:], 1e-6)
    # prior "none" leaves nothing to mix: uniform over the span
    assert apply_fallback([combine(torch.zeros(6), 2, W(convention="released", prior="none"))],
                          spec)[0].tolist() == [1.0, 1.0]


def test_released_infinite_importance_sets_the_whole_batch_to_ones():
    spec = W(convention="released")
    inf_row = combine(torch.tensor([1.0, float("inf"), 2.0, 1.0]), 2, spec)
    assert torch.isnan(inf_row).all()  # inf / inf: the whole row is NaN
    good = combine(torch.tensor([1.0, 2.0, 3.0]), 2, spec)
    assert torch.isfinite(good).all() and good.tolist() != [1.0, 1.0]
    out = apply_fallback([good, inf_row, good.clone()], spec)
    assert [w.tolist() for w in out] == [[1.0, 1.0]] * 3
    # the paper convention replaces only the bad response
    out = apply_fallback([good, combine(torch.tensor([1.0, float("inf")]), 2, W())], W())
    close(out[0], good)
    assert out[1].tolist() == [1.0, 1.0]


def test_bad_setting_is_refused():
    with pytest.raises(SpecError, match="scheme"):
        W(scheme="saliency")
    with pytest.raises(SpecError, match="mix"):
        W(mix=1.5)
    with pytest.raises(SpecError, match="prior_sigma_div"):
        W(prior_sigma_div=0)
