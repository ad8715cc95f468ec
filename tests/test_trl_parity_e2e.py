"""End-to-end parity with TRL 1.16 through the training core: on the same tiny model, the
same reference and the same pairs, the harness's first-step loss and mean chosen/rejected
rewards equal TRL's (DPOTrainer sigmoid and ipo; CPOTrainer simpo with cpo_alpha=0) to 1e-5
relative. The policy and reference differ (different seeds) so rewards are not trivially 0.
"""
from __future__ import annotations

import os

import pytest
import torch

import methods
from core_helpers import SPEC, pairs
from harness import schema
from harness.core.features import Features
from harness.core.train import PreferenceObjective, train
from harness.data.tokenize import tokenize
from harness.models import build_tiny, char_tokenizer
from harness.results import read_jsonl

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
N = 6


def _models():
    tok = char_tokenizer("0123456789+=")
    return build_tiny(SPEC, tok, 0), build_tiny(SPEC, tok, 1), tok


def _harness_first_step(method, tmp_path):
    pol, ref, tok = _models()
    data = tokenize(pairs(N), tok, 64, 32)
    feats = Features(method, data, ref_model=ref, cache_dir=None, device=torch.device("cpu"),
                     pad_id=tok.pad_token_id, tokenizer=tok)
    cfg = schema.TrainSpec(steps=1, batch_size=N, lr=1e-3, checkpoint_every=0, max_grad_norm=None)
    train(pol, data, PreferenceObjective(method, feats), cfg, 0, tmp_path, tokenizer=tok)
    return read_jsonl(tmp_path / "train_log.jsonl")[0]


def _dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs(N)])


def _trl_dpo(loss_type, tmp_path):
    from trl import DPOConfig, DPOTrainer

    pol, ref, tok = _models()
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=[loss_type],
                     per_device_train_batch_size=N, use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to="none", max_length=None, dataset_num_proc=None)
    tr = DPOTrainer(model=pol, ref_model=ref, args=args, train_dataset=_dataset(), processing_class=tok)
    batch = next(iter(tr.get_train_dataloader()))
    tr.model.train()
    loss = tr.compute_loss(tr.model, batch)
    mets = {k: v[-1] for k, v in tr._metrics["train"].items()}
    return loss.item(), mets


@pytest.mark.parametrize("name,loss_type", [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_dpo_ipo_first_step_equals_trl(name, loss_type, tmp_path):
    ours = _harness_first_step(methods.get(name, beta=0.1), tmp_path)
    loss, mets = _trl_dpo(loss_type, tmp_path)
    assert ours["loss"] == pytest.approx(loss, rel=1e-5)
    assert ours["rewards/chosen"] == pytest.approx(mets["rewards/chosen"], rel=1e-5, abs=1e-8)
    assert ours["rewards/rejected"] == pytest.approx(mets["rewards/rejected"], rel=1e-5, abs=1e-8)
    assert abs(mets["rewards/chosen"]) > 1e-4  # policy != reference: a non-trivial comparison


def test_simpo_first_step_equals_trl_cpo(tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    beta, gamma = 2.0, 0.5
    ours = _harness_first_step(methods.get("simpo", beta=beta, gamma=gamma), tmp_path)
    pol, _, tok = _models()
    # TRL's CPO takes an absolute gamma (simpo_gamma) = our `gamma`
    args = CPOConfig(output_dir=str(tmp_path / "trl"), loss_type="simpo", cpo_alpha=0.0, simpo_gamma=gamma,
                     beta=beta, per_device_train_batch_size=N, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, report_to="none", max_length=64, dataset_num_proc=None)
    tr = CPOTrainer(model=pol, args=args, train_dataset=_dataset(), processing_class=tok)
    batch = next(iter(tr.get_train_dataloader()))
    tr.model.train()
    loss, mets = tr.get_batch_loss_metrics(tr.model, batch, train_eval="train")
    assert ours["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert ours["rewards/chosen"] == pytest.approx(float(mets["rewards/chosen"]), rel=1e-5)
    assert ours["rewards/rejected"] == pytest.approx(float(mets["rewards/rejected"]), rel=1e-5)
