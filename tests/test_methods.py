"""Hand-derived values, gradients and error messages of every preference loss.

The batch below is written out by hand: B = 2 pairs, chosen lengths (3, 2), rejected lengths
(2, 4), anchor lengths (2, 3) in an anchor tensor 5 wide, so every side has padded slots.
Padded slots hold G = 1e3 (garbage); a loss that reads one is off by orders of magnitude.
Each expected value is worked out in the comments from the per-token numbers.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import methods
from methods import BatchError, MethodConfigError, TokenBatch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
G = 1e3  # garbage in padded slots


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _mask(lengths, width):
    return _t([[1.0 if t < n else 0.0 for t in range(width)] for n in lengths])


def hand_batch(garbage: float = G) -> TokenBatch:
    g = garbage
    return TokenBatch(
        # chosen: policy and reference log-probs; r_w = policy - ref
        #   pair 0: r = [0.5, -1.0, 0.5]  -> m_w0 = 0.0
        #   pair 1: r = [0.5,  0.5]       -> m_w1 = 1.0
        chosen_logps=_t([[-1.0, -2.0, -0.5], [-0.2, -0.4, g]]),
        ref_chosen_logps=_t([[-1.5, -1.0, -1.0], [-0.7, -0.9, g]]),
        chosen_mask=_mask([3, 2], 3),
        # rejected:
        #   pair 0: r = [-1.0, -0.5]           -> m_l0 = -1.5
        #   pair 1: r = [-0.5, 0.5, 0.0, 0.0]  -> m_l1 = 0.0
        rejected_logps=_t([[-2.0, -1.0, g, g], [-1.0, -1.0, -1.0, -1.0]]),
        ref_rejected_logps=_t([[-1.0, -0.5, g, g], [-0.5, -1.5, -1.0, -1.0]]),
        rejected_mask=_mask([2, 4], 4),
        # per-position KL(ref || policy): K_w = (0.6, 0.2), K_l = (0.5, 0.4)
        chosen_kl=_t([[0.1, 0.2, 0.3], [0.05, 0.15, g]]),
        rejected_kl=_t([[0.4, 0.1, g, g], [0.1, 0.1, 0.1, 0.1]]),
        # weights: sum w r:  w_w0 . r = 2(0.5) + 1(-1) + 0.5(0.5) = 0.25
        #                    w_w1 . r = 1(0.5) + 3(0.5)           = 2.0
        #                    w_l0 . r = 1(-1) + 2(-0.5)           = -2.0
        #                    w_l1 . r = 0.5(-0.5 + 0.5 + 0 + 0)   = 0.0
        chosen_weights=_t([[2.0, 1.0, 0.5], [1.0, 3.0, g]]),
        rejected_weights=_t([[1.0, 2.0, g, g], [0.5, 0.5, 0.5, 0.5]]),
        # anchor: d = policy - ref;  pair 0: d = [0.0, 1.0];  pair 1: d = [0.5, 0.5, 1.0]
        anchor_logps=_t([[-1.0, -1.0, g, g, g], [-0.5, -0.5, -0.5, g, g]]),
        ref_anchor_logps=_t([[-1.0, -2.0, g, g, g], [-1.0, -1.0, -1.5, g, g]]),
        anchor_mask=_mask([2, 3], 5),
    )


def softplus_neg(z: float) -> float:
    """-log sigma(z) = log(1 + e^-z)."""
    return math.log1p(math.exp(-z))


def check(out, losses, chosen, rejected, tol=1e-12):
    assert out.losses.shape == (2,)
    torch.testing.assert_close(out.losses, _t(losses), rtol=tol, atol=tol)
    torch.testing.assert_close(out.chosen_rewards, _t(chosen), rtol=tol, atol=tol)
    torch.testing.assert_close(out.rejected_rewards, _t(rejected), rtol=tol, atol=tol)


# ---------------------------------------------------------------- hand-derived values
def test_dpo_hand_values():
    # h = m_w - m_l = (0 - (-1.5), 1 - 0) = (1.5, 1.0); beta = 0.1
    out = methods.get("dpo")(hand_batch())
    check(out, [softplus_neg(0.15), softplus_neg(0.10)], [0.0, 0.1], [-0.15, 0.0])
    assert out.metrics["logits/mean"] == pytest.approx((0.15 + 0.10) / 2)


def test_cdpo_label_smoothing_hand_values():
    # eps = 0.2: 0.8 * log(1 + e^-z) + 0.2 * log(1 + e^z), z = beta * h = (0.15, 0.10)
    out = methods.get("dpo", label_smoothing=0.2)(hand_batch())
    exp = [0.8 * softplus_neg(z) + 0.2 * softplus_neg(-z) for z in (0.15, 0.10)]
    check(out, exp, [0.0, 0.1], [-0.15, 0.0])


def test_ipo_averaged_hand_values():
    # h = m_w/|y_w| - m_l/|y_l| = (0/3 + 1.5/2, 1/2 - 0/4) = (0.75, 0.5); 1/(2 beta) = 5
    # loss = (0.75 - 5)^2 = 18.0625, (0.5 - 5)^2 = 20.25; rewards beta * summed m
    out = methods.get("ipo")(hand_batch())
    check(out, [18.0625, 20.25], [0.0, 0.1], [-0.15, 0.0])


def test_ipo_summed_hand_values():
    # h = m_w - m_l = (1.5, 1.0); loss = (1.5 - 5)^2 = 12.25, (1 - 5)^2 = 16
    out = methods.get("ipo", length_normalize=False)(hand_batch())
    check(out, [12.25, 16.0], [0.0, 0.1], [-0.15, 0.0])


def test_ipo_summed_equals_scaled_averaged_for_equal_lengths():
    # With |y_w| = |y_l| = L: h_sum = L h_avg, so (h_sum - 1/(2 beta'))^2 with beta' = beta / L
    # equals L^2 (h_avg - 1/(2 beta))^2. Unequal lengths break this (see the hand values).
    L, beta = 4, 0.1
    gen = torch.Generator().manual_seed(0)
    lp = lambda: -torch.rand(3, L, generator=gen, dtype=torch.float64)
    ones = torch.ones(3, L, dtype=torch.float64)
    b = TokenBatch(lp(), lp(), ones, ones, lp(), lp())
    avg = methods.get("ipo", beta=beta)(b).losses
    summed = methods.get("ipo", beta=beta / L, length_normalize=False)(b).losses
    torch.testing.assert_close(summed, L**2 * avg)
    assert not torch.allclose(methods.get("ipo", beta=beta, length_normalize=False)(b).losses, avg)


def test_simpo_hand_values():
    # a = mean policy log-prob: a_w = (-3.5/3, -0.6/2) = (-7/6, -0.3); a_l = (-3/2, -4/4) = (-1.5, -1)
    # beta = 2, gamma = 2 * 0.25 = 0.5:
    #   z0 = 2 (-7/6 + 1.5) - 0.5 = 2/3 - 1/2 = 1/6;   z1 = 2 (-0.3 + 1) - 0.5 = 0.9
    # rewards beta * a: chosen (-7/3, -0.6), rejected (-3, -2)
    out = methods.get("simpo")(hand_batch())
    check(out, [softplus_neg(1 / 6), softplus_neg(0.9)], [-7 / 3, -0.6], [-3.0, -2.0])


def test_simpo_sft_weight_adds_mean_nll_of_chosen():
    # + 0.5 * (-a_w) = + 0.5 * (7/6, 0.3)
    out = methods.get("simpo", sft_weight=0.5)(hand_batch())
    check(out, [softplus_neg(1 / 6) + 0.5 * 7 / 6, softplus_neg(0.9) + 0.5 * 0.3], [-7 / 3, -0.6], [-3.0, -2.0])


def test_simpo_absolute_gamma_equals_ratio_times_beta():
    b = hand_batch()
    by_ratio = methods.get("simpo", beta=2.5, gamma_beta_ratio=0.3)(b)
    by_gamma = methods.get("simpo", beta=2.5, gamma=0.75)(b)  # 0.75 = 2.5 * 0.3
    torch.testing.assert_close(by_gamma.losses, by_ratio.losses)
    # gamma = 0: z = beta (a_w - a_l) = (2/3, 1.4)
    check(methods.get("simpo", gamma=0.0)(b), [softplus_neg(2 / 3), softplus_neg(1.4)], [-7 / 3, -0.6], [-3.0, -2.0])


def test_simpo_refuses_gamma_and_ratio_together():
    with pytest.raises(MethodConfigError, match="gamma.*gamma_beta_ratio.*not both"):
        methods.get("simpo", gamma=0.5, gamma_beta_ratio=0.25)
    m = methods.get("simpo", gamma=0.5)
    assert m.hparams["gamma_beta_ratio"] is None and m.margin == 0.5
    with pytest.raises(MethodConfigError, match="one of 'gamma' or 'gamma_beta_ratio'"):
        methods.get("simpo", gamma_beta_ratio=None)


def test_tdpo1_hand_values():
    # h = (m_w - m_l) - (K_l - K_w) = 1.5 - (0.5 - 0.6) = 1.6 ;  1.0 - (0.4 - 0.2) = 0.8
    # rewards beta (m + K): chosen 0.1 (0 + 0.6, 1 + 0.2) ; rejected 0.1 (-1.5 + 0.5, 0 + 0.4)
    out = methods.get("tdpo1")(hand_batch())
    check(out, [softplus_neg(0.16), softplus_neg(0.08)], [0.06, 0.12], [-0.1, 0.04])
    assert out.metrics["kl/chosen"] == pytest.approx(0.4)
    assert out.metrics["kl/rejected"] == pytest.approx(0.45)


def test_tdpo2_hand_values():
    # h = (m_w - m_l) - 0.5 (K_l - K_w) = 1.5 + 0.05 = 1.55 ;  1.0 - 0.1 = 0.9
    out = methods.get("tdpo2")(hand_batch())
    check(out, [softplus_neg(0.155), softplus_neg(0.09)], [0.06, 0.12], [-0.1, 0.04])
    # alpha = 0 reduces TDPO2 to DPO; tdpo1 ignores alpha
    torch.testing.assert_close(methods.get("tdpo2", alpha=0.0)(hand_batch()).losses,
                               methods.get("dpo")(hand_batch()).losses)
    torch.testing.assert_close(methods.get("tdpo1", alpha=0.1)(hand_batch()).losses,
                               methods.get("tdpo1")(hand_batch()).losses)


# Triplet, by hand (margin 0.001):
#   pair 0: d = [0, 1] (anchor 2 tokens); b = r_w = [0.5, -1, 0.5]; c = r_l = [-1, -0.5]
#     pos = over min(2, 3) = 2 positions: (0 - 0.5)^2 + (1 + 1)^2 = 4.25
#     neg = over min(2, 2) = 2 positions: (-1 - 0)^2 + (-0.5 - 1)^2 = 3.25
#     triplet = max(0, 4.25 - 3.25 + 0.001) = 1.001
#     (y_w's third token has no anchor counterpart and is left out: with it, pos = 4.5)
#   pair 1: d = [0.5, 0.5, 1]; b = [0.5, 0.5]; c = [-0.5, 0.5, 0, 0]
#     pos = over min(3, 2) = 2: 0 + 0 = 0 (the anchor's third token is not compared with padding)
#     neg = over min(4, 3) = 3: (-0.5 - 0.5)^2 + 0 + (0 - 1)^2 = 2
#     triplet = max(0, 0 - 2 + 0.001) = 0
TRIPLET = (1.001, 0.0)


def test_tidpo_paper_hand_values():
    # Delta = sum w r (y_w) - sum w r (y_l) = 0.25 + 2 = 2.25 ; 2 - 0 = 2 ; beta 0.1, gamma 0.1
    out = methods.get("tidpo")(hand_batch())
    exp = [softplus_neg(0.225) + 0.1 * TRIPLET[0], softplus_neg(0.2) + 0.1 * TRIPLET[1]]
    check(out, exp, [0.025, 0.2], [-0.2, 0.0])
    assert out.metrics["loss/triplet"] == pytest.approx(sum(TRIPLET) / 2)
    assert out.metrics["loss/dpo_w"] == pytest.approx((softplus_neg(0.225) + softplus_neg(0.2)) / 2)
    assert out.metrics["triplet/pos_dist"] == pytest.approx((4.25 + 0) / 2)
    assert out.metrics["triplet/neg_dist"] == pytest.approx((3.25 + 2) / 2)


def test_tidpo_official_hand_values():
    # beta 0.2, gamma 0.001, alpha 0.5:
    #   z0 = 0.2 (2.25 - 0.5 (0.5 - 0.6)) = 0.2 * 2.3 = 0.46 ; z1 = 0.2 (2 - 0.5 (0.4 - 0.2)) = 0.38
    # rewards beta (sum w r + K): chosen 0.2 (0.25 + 0.6, 2 + 0.2) = (0.17, 0.44)
    #                             rejected 0.2 (-2 + 0.5, 0 + 0.4) = (-0.3, 0.08)
    out = methods.get("tidpo-official")(hand_batch())
    exp = [softplus_neg(0.46) + 0.001 * TRIPLET[0], softplus_neg(0.38) + 0.001 * TRIPLET[1]]
    check(out, exp, [0.17, 0.44], [-0.3, 0.08])


def test_tidpo_official_paper_table_b13_overrides():
    m = methods.get("tidpo-official", beta=0.1, gamma=0.1, importance_lambda=0.7,
                    prior_sigma_div=4.0, alpha=0.5, weight_normalization="paper")
    # z0 = 0.1 * 2.3, z1 = 0.1 * 1.9
    exp = [softplus_neg(0.23) + 0.1 * TRIPLET[0], softplus_neg(0.19) + 0.1 * TRIPLET[1]]
    torch.testing.assert_close(m(hand_batch()).losses, _t(exp))


def test_tidpo_with_unit_weights_and_no_triplet_is_dpo():
    b = hand_batch()
    b.chosen_weights = torch.ones_like(b.chosen_weights)
    b.rejected_weights = torch.ones_like(b.rejected_weights)
    torch.testing.assert_close(methods.get("tidpo", gamma=0.0)(b).losses, methods.get("dpo")(b).losses)
    torch.testing.assert_close(methods.get("tidpo-official", gamma=0.0, beta=0.1)(b).losses,
                               methods.get("tdpo2")(b).losses)


def test_sft_continued_hand_values():
    # loss = -mean logp(y_w) = (7/6, 0.3); rewards = mean logp: chosen (-7/6, -0.3), rejected (-1.5, -1)
    out = methods.get("sft-continued")(hand_batch())
    check(out, [7 / 6, 0.3], [-7 / 6, -0.3], [-1.5, -1.0])


def _slic():
    methods.load_plugin(str(ROOT / "examples" / "plugins" / "slic.py"))
    return methods.get_class("slic")


def test_slic_plugin_hand_values():
    cls = _slic()
    # hinge: max(0, 1 - beta h), h = (1.5, 1.0): beta 0.1 -> (0.85, 0.9); beta 1 -> (0, 0)
    check(cls()(hand_batch()), [0.85, 0.9], [0.0, 0.1], [-0.15, 0.0])
    check(cls(beta=1.0)(hand_batch()), [0.0, 0.0], [0.0, 1.0], [-1.5, 0.0])


# ------------------------------------------------------------------ padding robustness
ALL = ["dpo", "ipo", "simpo", "tdpo1", "tdpo2", "tidpo", "tidpo-official", "sft-continued"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("garbage", [-1e3, float("inf"), float("-inf"), float("nan")])
def test_padding_values_never_matter(name, garbage):
    """Losses, rewards and gradients are identical whatever the padded slots hold."""
    m = methods.get(name)
    ref = m(hand_batch())
    b = hand_batch(garbage)
    b.chosen_logps.requires_grad_(True)
    out = m(b)
    torch.testing.assert_close(out.losses, ref.losses)
    torch.testing.assert_close(out.chosen_rewards, ref.chosen_rewards)
    torch.testing.assert_close(out.rejected_rewards, ref.rejected_rewards)
    out.losses.sum().backward()
    grad = b.chosen_logps.grad
    assert torch.isfinite(grad).all()
    assert grad[1, 2] == 0  # the padded slot of pair 1


# ---------------------------------------------------------------------- gradients
def _random_batch(seed: int) -> TokenBatch:
    """float64 batch, B = 3, with every feature, garbage in padded slots."""
    gen = torch.Generator().manual_seed(seed)

    def side(lengths, width, low=-3.0, high=-0.1):
        x = low + (high - low) * torch.rand(len(lengths), width, generator=gen, dtype=torch.float64)
        mask = _mask(lengths, width)
        return torch.where(mask > 0, x, torch.full_like(x, G)), mask

    cw, mw = side([4, 2, 3], 4)
    rcw, _ = side([4, 2, 3], 4)
    rl, ml = side([3, 5, 1], 5)
    rrl, _ = side([3, 5, 1], 5)
    kw, _ = side([4, 2, 3], 4, 0.01, 0.5)
    kl, _ = side([3, 5, 1], 5, 0.01, 0.5)
    ww, _ = side([4, 2, 3], 4, 0.2, 2.0)
    wl, _ = side([3, 5, 1], 5, 0.2, 2.0)
    # anchor log-probs near the rejected ones so the triplet hinge is active somewhere
    al, ma = side([3, 4, 2], 6)
    ral, _ = side([3, 4, 2], 6)
    return TokenBatch(cw, rl, mw, ml, rcw, rrl, kw, kl, ww, wl, al, ral, ma)


# tensors through which each method must pass gradient (finite differences agree with autograd)
DIFFERENTIABLE = {
    "dpo": ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"],
    "ipo": ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"],
    "simpo": ["chosen_logps", "rejected_logps"],
    "sft-continued": ["chosen_logps"],
    "tdpo1": ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "chosen_kl", "rejected_kl"],
    # chosen_kl is held constant (stop-gradient) in TDPO2
    "tdpo2": ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "rejected_kl"],
    # token weights are constants in both TI-DPO objectives
    "tidpo": ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
              "anchor_logps", "ref_anchor_logps"],
    "tidpo-official": ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
                       "rejected_kl", "anchor_logps", "ref_anchor_logps"],
}
HPARAMS = {  # non-default settings where the default would hide a term
    "dpo": {"label_smoothing": 0.1},
    "simpo": {"sft_weight": 0.3},
    "tidpo": {"gamma": 1.0},
    "tidpo-official": {"gamma": 1.0},
}


@pytest.mark.parametrize("name", sorted(DIFFERENTIABLE))
def test_gradients_match_finite_differences(name):
    b = _random_batch(1)
    m = methods.get(name, **HPARAMS.get(name, {}))
    if name.startswith("tidpo"):  # the triplet's gradient is only checked if the hinge is active
        assert (m(b).metrics["triplet/active"]) > 0
    names = DIFFERENTIABLE[name]

    def f(*xs):
        fields = dict(vars(b))
        fields.update(zip(names, xs))
        return m(TokenBatch(**fields)).losses

    inputs = tuple(getattr(b, n).clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", ["tdpo2", "tidpo-official"])
def test_stop_gradient_on_chosen_kl(name):
    b = _random_batch(2)
    b.chosen_kl.requires_grad_(True)
    b.rejected_kl.requires_grad_(True)
    methods.get(name)(b).losses.sum().backward()
    # no gradient at all reaches K_w (None: not even a graph edge)
    assert b.chosen_kl.grad is None or torch.count_nonzero(b.chosen_kl.grad) == 0
    assert torch.count_nonzero(b.rejected_kl.grad * b.rejected_mask) > 0


def test_tdpo1_passes_gradient_through_chosen_kl():
    b = _random_batch(2)
    b.chosen_kl.requires_grad_(True)
    methods.get("tdpo1")(b).losses.sum().backward()
    g = b.chosen_kl.grad
    # d loss / d K_w = -beta * sigma(-beta h) < 0 at every real position, 0 at padding
    assert (g[b.chosen_mask > 0] < 0).all() and (g[b.chosen_mask == 0] == 0).all()


def test_tidpo_weights_are_constants():
    b = _random_batch(3)
    b.chosen_weights.requires_grad_(True)
    b.chosen_logps.requires_grad_(True)
    out = methods.get("tidpo")(b)
    out.losses.sum().backward()
    assert b.chosen_logps.grad is not None
    assert b.chosen_weights.grad is None


# -------------------------------------------------------------------- dtype
@pytest.mark.parametrize("name", ALL)
def test_computes_in_input_dtype(name):
    b = hand_batch()
    for f in vars(b):
        setattr(b, f, getattr(b, f).float())
    out = methods.get(name)(b)
    assert out.losses.dtype == torch.float32 and out.chosen_rewards.dtype == torch.float32
    torch.testing.assert_close(out.losses.double(), methods.get(name)(hand_batch()).losses, rtol=1e-5, atol=1e-6)


def test_dpo_is_stable_for_large_margins():
    # -log sigma(z) for z = beta * h = -200 is 200 (a naive log(sigmoid) gives inf in float32)
    b = hand_batch()
    b.rejected_logps = b.rejected_logps + torch.tensor([[1000.0, 1000.0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    b = TokenBatch(**{k: v.float() for k, v in vars(b).items()})
    out = methods.get("dpo")(b)
    # h0 = 0 - (-1.5 + 2000) = -1998.5 -> z = -199.85, loss = 199.85 (up to e^-199.85)
    assert out.losses[0].item() == pytest.approx(199.85, rel=1e-6)


# ---------------------------------------------------------------------- errors
def test_unknown_method_lists_available():
    with pytest.raises(MethodConfigError) as e:
        methods.get("dop")
    msg = str(e.value)
    assert "'dop'" in msg and "Did you mean 'dpo'" in msg
    for n in ALL:
        assert n in msg


def test_unknown_hparam_names_it_and_valid_ones():
    with pytest.raises(MethodConfigError) as e:
        methods.get("simpo", gama=0.5)
    msg = str(e.value)
    assert "'gama'" in msg and "Did you mean" in msg
    for n in ("beta", "gamma_beta_ratio", "gamma", "sft_weight"):
        assert n in msg


@pytest.mark.parametrize(
    "name, key, value, allowed",
    [
        ("dpo", "beta", 0.0, "> 0"),
        ("dpo", "beta", -1.0, "> 0"),
        ("dpo", "label_smoothing", 0.5, "in [0, 0.5)"),
        ("dpo", "label_smoothing", -0.1, "in [0, 0.5)"),
        ("ipo", "beta", 0.0, "> 0"),
        ("simpo", "gamma", -0.1, ">= 0"),
        ("simpo", "gamma_beta_ratio", -0.1, ">= 0"),
        ("simpo", "sft_weight", -1.0, ">= 0"),
        ("tdpo1", "beta", 0.0, "> 0"),
        ("tdpo2", "alpha", -0.5, ">= 0"),
        ("tidpo", "importance_lambda", 1.5, "in [0, 1]"),
        ("tidpo", "importance_lambda", -0.1, "in [0, 1]"),
        ("tidpo", "gamma", -0.1, ">= 0"),
        ("tidpo", "triplet_margin", -0.001, ">= 0"),
        ("tidpo", "prior_sigma_div", 0.0, "> 0"),
        ("tidpo", "anchor_top_p", 1.5, "in (0, 1]"),
        ("tidpo", "anchor_max_new_tokens", 0, ">= 1"),
        ("tidpo-official", "alpha", -0.1, ">= 0"),
        ("tidpo-official", "importance_lambda", 2.0, "in [0, 1]"),
    ],
)
def test_bad_values_name_field_and_range(name, key, value, allowed):
    with pytest.raises(MethodConfigError) as e:
        methods.get(name, **{key: value})
    msg = str(e.value)
    assert f"'{key}'" in msg and allowed in msg and name in msg


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("tidpo", "weight_normalization", "mean"),
        ("tidpo", "prior", "gauss"),
        ("tidpo", "weight_scheme", "importanc"),
        ("tidpo-official", "importance_source", "ref"),
        ("ipo", "length_normalize", "yes"),
    ],
)
def test_bad_choices_are_refused(name, key, value):
    with pytest.raises(MethodConfigError, match=key):
        methods.get(name, **{key: value})


@pytest.mark.parametrize(
    "name, drop",
    [
        ("dpo", "ref_chosen_logps"),
        ("ipo", "ref_rejected_logps"),
        ("tdpo1", "chosen_kl"),
        ("tdpo2", "rejected_kl"),
        ("tidpo", "chosen_weights"),
        ("tidpo", "anchor_mask"),
        ("tidpo-official", "ref_anchor_logps"),
        ("simpo", "rejected_mask"),
        ("sft-continued", "chosen_logps"),
    ],
)
def test_missing_needed_tensor_is_a_batch_error(name, drop):
    b = hand_batch()
    setattr(b, drop, None)
    with pytest.raises(BatchError, match=drop):
        methods.get(name)(b)


@pytest.mark.parametrize("name", ["dpo", "tdpo1", "tidpo"])
def test_mismatched_shapes_are_a_batch_error(name):
    b = hand_batch()
    b.ref_chosen_logps = b.ref_chosen_logps[:, :2]  # [2, 2] against chosen_logps [2, 3]
    with pytest.raises(BatchError, match="ref_chosen_logps"):
        methods.get(name)(b)
    b = hand_batch()
    b.rejected_mask = b.rejected_mask[:1]  # batch size 1 against 2
    with pytest.raises(BatchError, match="batch size"):
        methods.get(name)(b)
