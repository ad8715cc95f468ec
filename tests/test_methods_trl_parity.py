"""Parity of dpo / ipo / simpo with TRL 1.16's own loss code, on the same per-token log-probs.

TRL computes the DPO-family losses inside ``DPOTrainer._compute_loss`` (model forward +
loss), so the test calls that method with stand-ins for the pieces it touches: a "model"
that behaves like TRL's fused LM head (``add_fused_lm_head``: the log-prob of each
next-token label, 0 where the label is -100) and returns our per-token log-probs, and an
identity accelerator. TRL itself then builds the labels from its completion mask, masks,
sums, normalizes (IPO) and applies its loss; the per-pair loss and its logged
``rewards/chosen`` / ``rewards/rejected`` come from one call per pair (TRL returns the batch
mean), and the batch mean from one call on the whole batch.

SimPO's oracle is ``CPOTrainer.cpo_loss`` (``loss_type="simpo"``, ``cpo_alpha=0``: TRL's NLL
term is a batch-token mean, not a per-pair term), fed by TRL's own
``CPOTrainer.get_batch_logps(average_log_prob=True)`` on logits whose log-softmax gives our
per-token log-probs.

Not covered by TRL 1.16: its ``loss_type="sigmoid"`` ignores ``label_smoothing`` (removed in
TRL 0.29), and it has no summed IPO. For those two, the oracle is the original DPO
repository (eric-mitchell/direct-preference-optimization, ``trainers.py``,
``preference_loss``), whose formulas are written out below on sums computed here in plain
Python.
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import methods
from methods import TokenBatch

torch.set_num_threads(1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl import DPOTrainer
    from trl.experimental.cpo import CPOTrainer

G = 1e3  # garbage in padded slots of the TokenBatch
PROMPT = 3  # prompt tokens before every response in TRL's layout
CHOSEN_LEN = [4, 2, 5]
REJECTED_LEN = [3, 6, 5]


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


class _FusedHeadModel(torch.nn.Module):
    """Returns ``per_token`` [rows, L-1] (the log-prob of token j+1 at index j) the way TRL's
    fused LM head does: zero wherever the shifted label is -100."""

    def __init__(self, per_token: torch.Tensor):
        super().__init__()
        self.per_token = per_token
        self.is_gradient_checkpointing = False
        self.eval()  # TRL files its metrics under "eval"

    def forward(self, *, labels, **_):
        valid = labels[:, 1:] != -100
        lp = self.per_token.masked_fill(~valid, 0.0)
        zeros = torch.zeros_like(lp)
        return SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=valid & False, aux_loss=None)


def _data(seed: int = 0):
    """Per-token log-probs as lists of rows (policy / reference, chosen / rejected)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda n: (-0.05 - 2.5 * torch.rand(n, generator=gen, dtype=torch.float64)).tolist()
    return {
        "chosen": [rnd(n) for n in CHOSEN_LEN],
        "ref_chosen": [rnd(n) for n in CHOSEN_LEN],
        "rejected": [rnd(n) for n in REJECTED_LEN],
        "ref_rejected": [rnd(n) for n in REJECTED_LEN],
    }


def _padded(rows, width):
    return torch.tensor([r + [G] * (width - len(r)) for r in rows], dtype=torch.float64)


def _mask(rows, width):
    return torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64)


def _token_batch(d) -> TokenBatch:
    tw, tl = max(CHOSEN_LEN), max(REJECTED_LEN)
    return TokenBatch(
        chosen_logps=_padded(d["chosen"], tw),
        rejected_logps=_padded(d["rejected"], tl),
        chosen_mask=_mask(d["chosen"], tw),
        rejected_mask=_mask(d["rejected"], tl),
        ref_chosen_logps=_padded(d["ref_chosen"], tw),
        ref_rejected_logps=_padded(d["ref_rejected"], tl),
    )


def _trl_dpo(d, idx, loss_type: str, beta: float):
    """TRL 1.16 DPOTrainer._compute_loss on the pairs ``idx``: (batch loss, rewards/chosen, rewards/rejected)."""
    rows = [d["chosen"][i] for i in idx] + [d["rejected"][i] for i in idx]
    ref_rows = [d["ref_chosen"][i] for i in idx] + [d["ref_rejected"][i] for i in idx]
    L = PROMPT + max(len(r) for r in rows)
    completion_mask = torch.zeros(len(rows), L, dtype=torch.long)
    policy = torch.full((len(rows), L - 1), G, dtype=torch.float64)  # garbage TRL must mask
    ref = torch.full((len(rows), L - 1), G, dtype=torch.float64)
    for k, (r, rr) in enumerate(zip(rows, ref_rows)):
        completion_mask[k, PROMPT:PROMPT + len(r)] = 1
        # token at absolute position PROMPT + t is predicted at shifted index PROMPT + t - 1
        policy[k, PROMPT - 1:PROMPT - 1 + len(r)] = torch.tensor(r, dtype=torch.float64)
        ref[k, PROMPT - 1:PROMPT - 1 + len(rr)] = torch.tensor(rr, dtype=torch.float64)
    inputs = {
        "input_ids": torch.randint(5, 100, (len(rows), L)),
        "attention_mask": torch.ones(len(rows), L, dtype=torch.long),
        "completion_mask": completion_mask,
    }
    policy_model = _FusedHeadModel(policy)
    trainer = SimpleNamespace(
        model=policy_model, ref_model=_FusedHeadModel(ref), accelerator=_Accelerator(),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=False,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        use_weighting=False, label_smoothing=0.0, args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        _total_train_tokens=0, _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    loss = DPOTrainer._compute_loss(trainer, policy_model, inputs, False)
    m = trainer._metrics["eval"]
    return loss.item(), m["rewards/chosen"][-1], m["rewards/rejected"][-1]


@pytest.mark.parametrize(
    "name, hp, loss_type",
    [
        ("dpo", {"beta": 0.1}, "sigmoid"),
        ("dpo", {"beta": 0.5}, "sigmoid"),
        ("ipo", {"beta": 0.1}, "ipo"),
        ("ipo", {"beta": 0.7}, "ipo"),
    ],
)
def test_dpo_ipo_match_trl(name, hp, loss_type):
    d = _data()
    out = methods.get(name, **hp)(_token_batch(d))
    for i in range(len(CHOSEN_LEN)):
        loss, rc, rr = _trl_dpo(d, [i], loss_type, hp["beta"])
        assert out.losses[i].item() == pytest.approx(loss, rel=1e-5)
        assert out.chosen_rewards[i].item() == pytest.approx(rc, rel=1e-5)
        assert out.rejected_rewards[i].item() == pytest.approx(rr, rel=1e-5)
    batch_loss, _, _ = _trl_dpo(d, list(range(len(CHOSEN_LEN))), loss_type, hp["beta"])
    assert out.losses.mean().item() == pytest.approx(batch_loss, rel=1e-5)


def test_ipo_averaged_is_not_summed():
    # guard against a parity that holds by accident: the summed form must differ from TRL here
    d = _data()
    out = methods.get("ipo", length_normalize=False)(_token_batch(d))
    loss, _, _ = _trl_dpo(d, [0], "ipo", 0.1)
    assert out.losses[0].item() != pytest.approx(loss, rel=1e-3)


@pytest.mark.parametrize(
    "hp, simpo_gamma",
    [
        ({"beta": 2.0}, 0.5),  # official defaults: gamma_beta_ratio 0.25 -> gamma = 0.5
        ({"beta": 2.5, "gamma": 1.2}, 1.2),  # absolute gamma = TRL's simpo_gamma
        ({"beta": 10.0, "gamma_beta_ratio": 0.3}, 3.0),  # gamma = beta * ratio
    ],
)
def test_simpo_matches_trl_cpo(hp, simpo_gamma):
    gen = torch.Generator().manual_seed(1)
    B, V = len(CHOSEN_LEN), 11
    L = PROMPT + max(CHOSEN_LEN + REJECTED_LEN)

    def side(lengths):
        logits = torch.randn(B, L, V, generator=gen, dtype=torch.float64)
        labels = torch.full((B, L), -100, dtype=torch.long)
        for i, n in enumerate(lengths):
            labels[i, PROMPT:PROMPT + n] = torch.randint(0, V, (n,), generator=gen)
        # the per-token log-probs a training core gathers: log_softmax at position t-1 for token t
        logp = torch.log_softmax(logits, -1)
        rows = [[logp[i, PROMPT + t - 1, labels[i, PROMPT + t]].item() for t in range(n)] for i, n in enumerate(lengths)]
        trl_avg = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
        return rows, trl_avg

    chosen, trl_w = side(CHOSEN_LEN)
    rejected, trl_l = side(REJECTED_LEN)
    batch = TokenBatch(
        chosen_logps=_padded(chosen, max(CHOSEN_LEN)), rejected_logps=_padded(rejected, max(REJECTED_LEN)),
        chosen_mask=_mask(chosen, max(CHOSEN_LEN)), rejected_mask=_mask(rejected, max(REJECTED_LEN)),
    )
    out = methods.get("simpo", **hp)(batch)
    stub = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=simpo_gamma, beta=hp["beta"],
                           label_smoothing=0.0, accelerator=_Accelerator())
    losses, rc, rr = CPOTrainer.cpo_loss(stub, trl_w, trl_l)
    torch.testing.assert_close(out.losses, losses, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.chosen_rewards, rc, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.rejected_rewards, rr, rtol=1e-5, atol=0)


# ---------------------------------------------------- the original DPO repository's formulas
def _dpo_repo_preference_loss(pc, pr, rc, rr, beta, label_smoothing=0.0, ipo=False):
    """eric-mitchell/direct-preference-optimization trainers.py ``preference_loss``, per pair,
    on summed log-probs:
        logits = (pc - pr) - (rc - rr)
        ipo:   loss = (logits - 1/(2 beta))^2
        else:  loss = -logsigmoid(beta logits)(1 - ls) - logsigmoid(-beta logits) ls
        rewards = beta (pc - rc), beta (pr - rr)
    """
    logits = (pc - pr) - (rc - rr)
    logsig = lambda z: -math.log1p(math.exp(-z))
    if ipo:
        loss = (logits - 1 / (2 * beta)) ** 2
    else:
        loss = -logsig(beta * logits) * (1 - label_smoothing) - logsig(-beta * logits) * label_smoothing
    return loss, beta * (pc - rc), beta * (pr - rr)


@pytest.mark.parametrize(
    "name, hp, repo_kw",
    [
        ("dpo", {"beta": 0.1, "label_smoothing": 0.1}, {"label_smoothing": 0.1}),
        ("dpo", {"beta": 0.3, "label_smoothing": 0.4}, {"label_smoothing": 0.4}),
        ("ipo", {"beta": 0.1, "length_normalize": False}, {"ipo": True}),
        ("ipo", {"beta": 0.02, "length_normalize": False}, {"ipo": True}),
    ],
)
def test_cdpo_and_summed_ipo_match_dpo_repository(name, hp, repo_kw):
    d = _data(2)
    out = methods.get(name, **hp)(_token_batch(d))
    for i in range(len(CHOSEN_LEN)):
        sums = [math.fsum(d[k][i]) for k in ("chosen", "rejected", "ref_chosen", "ref_rejected")]
        loss, rc, rr = _dpo_repo_preference_loss(*sums, beta=hp["beta"], **repo_kw)
        assert out.losses[i].item() == pytest.approx(loss, rel=1e-5)
        assert out.chosen_rewards[i].item() == pytest.approx(rc, rel=1e-5)
        assert out.rejected_rewards[i].item() == pytest.approx(rr, rel=1e-5)
