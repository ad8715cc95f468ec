"""Per-token KL (harness.core.features.token_kl, as TDPO and TI-DPO's released objective use
it) and the core's batched per-token log-prob path (harness.core.batch), against plain
full-sequence computations written out here in float64."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness.core.batch import collate, gather_logps, response_logits, selected_logits
from harness.core.features import Features, token_kl

torch.set_num_threads(1)

# ragged prompts and responses; the shortest prompt is not the first row
PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 3, 4, 5, 6, 7, 8], [1, 4, 4]]
RESPONSES = [[3, 4, 2], [5, 6, 7, 8, 9, 2], [11], [12, 13, 2]]


def tiny_llama(seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=32, vocab_size=20, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def naive_kl(pol: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_theta) = sum_v p_ref (log p_ref - log p_theta), full softmax in float64."""
    pol, ref = pol.double(), ref.double()
    lp = pol - pol.exp().sum(-1, keepdim=True).log()
    lr = ref - ref.exp().sum(-1, keepdim=True).log()
    return (lr.exp() * (lr - lp)).sum(-1)


def test_token_kl_matches_float64_full_softmax():
    g = torch.Generator().manual_seed(0)
    N, T, V = 3, 5, 11
    pol = (torch.randn(N, T, V, generator=g) * 2).requires_grad_(True)
    ref = torch.randn(N, T, V, generator=g) * 2
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    kl = token_kl(pol, ref, mask)
    assert kl.shape == (N, T)
    expected = naive_kl(pol.detach(), ref) * mask.double()
    assert torch.allclose(kl.double(), expected, atol=1e-5)
    assert torch.all(kl[mask == 0] == 0)
    assert torch.all(kl[mask == 1] > 0)  # KL of two different distributions
    # d/dz_theta sum_v p_ref (log p_ref - log p_theta) = p_theta - p_ref, zero where masked
    kl.sum().backward()
    want = (torch.softmax(pol.detach().double(), -1) - torch.softmax(ref.double(), -1)) * mask.double()[..., None]
    assert torch.allclose(pol.grad.double(), want, atol=1e-6)


def test_token_kl_is_zero_for_identical_distributions():
    x = torch.randn(2, 4, 7)
    kl = token_kl(x + 3.0, x, torch.ones(2, 4))  # a shift of the logits is the same softmax
    assert torch.allclose(kl, torch.zeros(2, 4), atol=1e-6)


class _NoKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``: the core must slice itself."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


@pytest.mark.parametrize("wrap", [False, True], ids=["logits_to_keep", "full-logits"])
def test_selected_logits_and_gather_logps_match_a_plain_forward(wrap):
    model = tiny_llama(0)
    runner = _NoKeep(model) if wrap else model
    rows = collate(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():
        logits = response_logits(runner, rows)
        sel = selected_logits(logits, rows)
        lps = gather_logps(logits, rows)
        T = max(len(r) for r in RESPONSES)
        assert sel.shape == (len(PROMPTS), T, 20) and lps.shape == (len(PROMPTS), T)
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
            full = model(input_ids=torch.tensor([p + r])).logits[0].double()  # unpadded row
            want = torch.stack([full[len(p) + t - 1] for t in range(len(r))])
            assert torch.allclose(sel[i, : len(r)].double(), want, atol=1e-5), i
            logp = torch.log_softmax(want, dim=-1)
            want_lp = torch.stack([logp[t, r[t]] for t in range(len(r))])
            assert torch.allclose(lps[i, : len(r)].double(), want_lp, atol=1e-5), i
            assert torch.all(lps[i, len(r):] == 0)


def test_features_fill_token_kl_through_the_core():
    """Features.fill (TDPO needs reference + token_kl): chosen/rejected KL and reference
    log-probs from one batched reference forward equal plain per-example computations, and
    the KL's gradient reaches the policy and never the reference."""
    import methods

    policy, ref = tiny_llama(0), tiny_llama(1)
    B = 2
    prompts, chosen, rejected = PROMPTS[:B], RESPONSES[:B], RESPONSES[2:4]
    data = SimpleNamespace(prompts=prompts, chosen=chosen, rejected=rejected, fingerprint="t")
    counters: dict = {}
    feats = Features(methods.get("tdpo1"), data, ref_model=ref, cache_dir=None, device=torch.device("cpu"),
                     pad_id=0, counters=counters)
    rows = collate(prompts + prompts, chosen + rejected, 0)
    logits = response_logits(policy, rows)
    Tc, Tr = max(map(len, chosen)), max(map(len, rejected))
    kw = {"chosen_mask": rows.resp_mask[:B, :Tc], "rejected_mask": rows.resp_mask[B:, :Tr]}
    feats.fill(kw, logits, rows, list(range(B)), prompts, None, None)
    assert counters["ref_forward"] == 1
    with torch.no_grad():
        for side, resps in (("chosen", chosen), ("rejected", rejected)):
            for i, (p, r) in enumerate(zip(prompts, resps)):
                ids = torch.tensor([p + r])
                pos = [len(p) + t - 1 for t in range(len(r))]
                pl, rl = policy(input_ids=ids).logits[0, pos], ref(input_ids=ids).logits[0, pos]
                assert torch.allclose(kw[f"{side}_kl"][i, : len(r)].double(), naive_kl(pl, rl), atol=1e-5)
                assert torch.all(kw[f"{side}_kl"][i, len(r):] == 0)
                want_lp = torch.log_softmax(rl.double(), -1)[torch.arange(len(r)), torch.tensor(r)]
                assert torch.allclose(kw[f"ref_{side}_logps"][i, : len(r)].double(), want_lp, atol=1e-5)
    assert not kw["ref_chosen_logps"].requires_grad
    (kw["chosen_kl"].sum() + kw["rejected_kl"].sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    assert all(p.grad is None for p in ref.parameters())
