"""Every registered method (and the one-file ``slic`` plugin) honours the method contract.

One generic check per method: shapes, finiteness, detached rewards, float metrics, declared
``needs`` (a declared feature is required; an undeclared one is never read) and
hyperparameter round-trips. A newly registered method is picked up automatically.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import methods
from methods import FEATURES, BatchError, TokenBatch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
methods.load_plugin(str(ROOT / "examples" / "plugins" / "slic.py"))
NAMES = sorted(set(methods.available()) | {"slic"})

# The tensors behind each feature, as DESIGN.md ("Methods (contract)") lists them.
FEATURE_TENSORS = {
    "reference": ["ref_chosen_logps", "ref_rejected_logps"],
    "token_kl": ["chosen_kl", "rejected_kl"],
    "token_weights": ["chosen_weights", "rejected_weights"],
    "anchor": ["anchor_logps", "ref_anchor_logps", "anchor_mask"],
}
B = 3


def full_batch(seed: int = 0) -> TokenBatch:
    """Random float32 batch with every feature; lengths differ per pair and per side,
    padded slots hold large garbage, weights are positive."""
    gen = torch.Generator().manual_seed(seed)

    def side(lengths, width, low, high, grad=False):
        x = low + (high - low) * torch.rand(B, width, generator=gen)
        mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(width)] for n in lengths])
        x = torch.where(mask > 0, x, torch.full_like(x, 1e3))
        return x.requires_grad_(grad), mask

    cw, mw = side([5, 3, 1], 5, -4.0, -0.01, grad=True)
    rl, ml = side([2, 7, 4], 7, -4.0, -0.01, grad=True)
    al, ma = side([6, 2, 3], 6, -4.0, -0.01, grad=True)
    return TokenBatch(
        chosen_logps=cw, rejected_logps=rl, chosen_mask=mw, rejected_mask=ml,
        ref_chosen_logps=side([5, 3, 1], 5, -4.0, -0.01)[0],
        ref_rejected_logps=side([2, 7, 4], 7, -4.0, -0.01)[0],
        chosen_kl=side([5, 3, 1], 5, 0.0, 0.3, grad=True)[0],
        rejected_kl=side([2, 7, 4], 7, 0.0, 0.3, grad=True)[0],
        chosen_weights=side([5, 3, 1], 5, 0.1, 2.0)[0],
        rejected_weights=side([2, 7, 4], 7, 0.1, 2.0)[0],
        anchor_logps=al, ref_anchor_logps=side([6, 2, 3], 6, -4.0, -0.01)[0], anchor_mask=ma,
    )


def without(b: TokenBatch, fields) -> TokenBatch:
    return dataclasses.replace(b, **{f: None for f in fields})


def test_plugin_and_builtins_are_registered():
    for n in ("dpo", "ipo", "simpo", "tdpo1", "tdpo2", "tidpo", "tidpo-official", "sft-continued", "slic"):
        assert n in NAMES
    assert methods.get_class("slic").__module__.startswith("harness_plugin_")


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    m = methods.get(name)
    assert isinstance(m.needs, frozenset) and m.needs <= FEATURES
    assert m.summary(), f"{name}: the docstring's first line is its one-line summary"
    b = full_batch()
    out = m(b)
    assert out.losses.shape == (B,) and torch.isfinite(out.losses).all()
    assert out.losses.requires_grad, "the loss must depend on the policy log-probs"
    for r in (out.chosen_rewards, out.rejected_rewards):
        assert r.shape == (B,) and torch.isfinite(r).all() and not r.requires_grad
    assert isinstance(out.metrics, dict)
    for k, v in out.metrics.items():
        assert isinstance(k, str) and type(v) is float and math.isfinite(v), (k, v)
    out.losses.mean().backward()
    for f in ("chosen_logps", "rejected_logps", "anchor_logps", "chosen_kl", "rejected_kl"):
        g = getattr(b, f).grad
        assert g is None or torch.isfinite(g).all()


@pytest.mark.parametrize("name", NAMES)
def test_declared_needs_are_required(name):
    m = methods.get(name)
    b = full_batch()
    for feat in sorted(m.needs):
        for field in FEATURE_TENSORS[feat]:
            with pytest.raises(BatchError, match=field):
                m(without(b, [field]))
            with pytest.raises(BatchError, match=field):  # loss() itself validates too
                m.loss(without(b, [field]))


@pytest.mark.parametrize("name", NAMES)
def test_undeclared_features_are_never_read(name):
    m = methods.get(name)
    b = full_batch()
    full = m(b)
    unused = [f for feat in sorted(FEATURES - m.needs) for f in FEATURE_TENSORS[feat]]
    out = m(without(b, unused))  # a method reading one of these would fail on None
    torch.testing.assert_close(out.losses, full.losses, rtol=0, atol=0)
    torch.testing.assert_close(out.chosen_rewards, full.chosen_rewards, rtol=0, atol=0)
    torch.testing.assert_close(out.rejected_rewards, full.rejected_rewards, rtol=0, atol=0)
    assert out.metrics == full.metrics


@pytest.mark.parametrize("name", NAMES)
def test_hparams_round_trip(name):
    cls = methods.get_class(name)
    m = methods.get(name)
    assert m.hparams == {n: hp.default for n, hp in cls.hparams_spec.items()}
    again = methods.get(name, **m.hparams)
    assert again.hparams == m.hparams
    out1, out2 = m(full_batch(1)), again(full_batch(1))
    torch.testing.assert_close(out1.losses, out2.losses, rtol=0, atol=0)
