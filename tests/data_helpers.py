"""Real tokenizers, real rows and TRL's own DPO data processing, for the tokenization tests.

Tokenizers: SmolLM2-135M-Instruct's (ChatML), read from ``models/smollm2-135m-instruct/tokenizer/``
(written by ``scripts/fetch_smollm2.sh``; ``scripts/setup.sh`` runs it, so CI has it), or
extracted once from the GGUF into ``~/.cache/prefopt-harness/``. Two more real templates from the
installed TRL package's ``chat_templates/`` (``llama3.jinja``, ``gemma.jinja``, the templates as
the models ship them), on the same BPE with those templates' special tokens added.

``trl_reference`` runs TRL 1.16's ``DPOTrainer._prepare_dataset`` (the trainer's own code, on a
stand-in ``self`` that holds only the tokenizer) and its ``DataCollatorForPreference``, with the
prompt cut to its last ``max_prompt_length`` tokens in between (as TRL's GRPO/RLOO trainers cut
prompts: ``ids[-max_prompt_length:]``).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HH_FILE = ROOT / "tests" / "fixtures" / "hh-rlhf" / "harmless-base-test-300.jsonl"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _missing(what: str, fix: str):
    """Skip on a developer's machine; fail in CI (CI=true), where setup.sh fetches everything."""
    msg = f"{what} is missing: {fix}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + " (scripts/setup.sh fetches it in CI; did it run?)")
    pytest.skip(msg)


def smollm2_dir() -> Path | None:
    for d in (os.environ.get("HARNESS_SMOLLM2_DIR"), ROOT / "models" / "smollm2-135m-instruct"):
        if d and ((Path(d) / "tokenizer" / "tokenizer.json").is_file() or (Path(d) / GGUF).is_file()):
            return Path(d)
    return None


@functools.lru_cache(maxsize=None)
def _smollm2_tokenizer_dir() -> Path:
    d = smollm2_dir()
    if d is None:
        _missing("SmolLM2-135M-Instruct", "run scripts/fetch_smollm2.sh")
    if (d / "tokenizer" / "tokenizer.json").is_file():
        return d / "tokenizer"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prefopt-harness" / "smollm2-tokenizer"
    if not (cache / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tmp = cache.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        AutoTokenizer.from_pretrained(str(d), gguf_file=GGUF).save_pretrained(tmp)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    return cache


def smollm2_tokenizer():
    """A fresh copy each call (tests may change it)."""
    from harness.models import _load_tokenizer

    return _load_tokenizer(str(_smollm2_tokenizer_dir()))


def _trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text()


def llama3_tokenizer():
    """Llama-3's template (TRL's llama3.jinja) and special tokens on SmolLM2's BPE."""
    tok = smollm2_tokenizer()
    tok.add_tokens(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                   special_tokens=True)
    tok.bos_token, tok.eos_token, tok.pad_token = "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"
    tok.chat_template = _trl_template("llama3.jinja")
    return tok


def gemma_tokenizer():
    """Gemma's template (TRL's gemma.jinja: no system role, `model` turns ending
    `<end_of_turn>\\n`) and special tokens on SmolLM2's BPE."""
    tok = smollm2_tokenizer()
    tok.add_tokens(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], special_tokens=True)
    tok.bos_token, tok.eos_token, tok.pad_token = "<bos>", "<eos>", "<eos>"
    tok.chat_template = _trl_template("gemma.jinja")
    return tok


def plain_tokenizer():
    """SmolLM2's BPE without a chat template: plain-text rendering."""
    tok = smollm2_tokenizer()
    tok.chat_template = None
    return tok


TOKENIZERS = {"chatml": smollm2_tokenizer, "llama3": llama3_tokenizer, "gemma": gemma_tokenizer,
              "plain": plain_tokenizer}


# ----------------------------------------------------------------------------- real rows
def hh_rows() -> list[dict]:
    return [json.loads(line) for line in HH_FILE.read_text().splitlines() if line.strip()]


def llamafactory_file() -> Path:
    p = ROOT / "data" / "llamafactory" / "dpo_en_demo.json"
    if not p.is_file():
        _missing(str(p), "run scripts/fetch_llamafactory_demo.sh")
    return p


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def hh_conversation(text: str) -> list[dict]:
    """An HH transcript as TRL-style messages (written here independently of the harness's parser)."""
    parts = _HH_TURN.split(text)
    return [{"role": "user" if who == "Human" else "assistant", "content": what}
            for who, what in zip(parts[1::2], parts[2::2])]


def trl_conversational_rows(n: int = 60) -> list[dict]:
    """TRL's conversational implicit-prompt form (``{chosen: [conversation], rejected:
    [conversation]}``) of real HH rows whose two sides share their dialogue before the last
    assistant turn and end with a non-empty assistant turn."""
    out = []
    for r in hh_rows():
        c, j = hh_conversation(r["chosen"]), hh_conversation(r["rejected"])
        if (c and j and c[-1]["role"] == j[-1]["role"] == "assistant" and c[:-1] == j[:-1]
                and c[-1]["content"].strip() and j[-1]["content"].strip()
                and c[-1]["content"].strip() != j[-1]["content"].strip()
                and [m["role"] for m in c[:-1]] == ["user", "assistant"] * (len(c) // 2 - 1) + ["user"]):
            out.append({"chosen": c, "rejected": j})
        if len(out) == n:
            break
    return out


# --------------------------------------------------------------------------- TRL 1.16
@functools.lru_cache(maxsize=None)
def _trl_config():
    from trl import DPOConfig

    return DPOConfig(output_dir="/tmp/trl-unused", use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to="none", max_length=None)


def trl_reference(rows: list[dict], tok, max_length: int, max_prompt_length: int) -> list:
    """For each TRL-format row: ``(prompt_ids, chosen_ids, rejected_ids)`` as TRL trains on them,
    or None when TRL drops the row (its prompt fills ``max_length``)."""
    import datasets
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(rows)
    stub = types.SimpleNamespace(_tokenizer=tok)  # all of `self` that _prepare_dataset reads
    out = DPOTrainer._prepare_dataset(stub, ds, tok, _trl_config(), "train")
    collate = DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=max_length,
                                        truncation_mode="keep_start")
    ref = []
    for ex in out:
        prompt = ex["prompt_ids"][-max_prompt_length:]
        if len(prompt) >= max_length:  # TRL's own filter, on the prompt it trains on
            ref.append(None)
            continue
        b = collate([{"prompt_ids": prompt, "chosen_ids": ex["chosen_ids"], "rejected_ids": ex["rejected_ids"]}])
        ids, mask = b["input_ids"], b["completion_mask"].bool()
        assert torch.equal(ids[0, :len(prompt)], torch.tensor(prompt))
        ref.append((prompt, ids[0][mask[0]].tolist(), ids[1][mask[1]].tolist()))
    return ref


def ours(data) -> list:
    """``trl_reference``'s shape for a harness TokenizedData over the same rows."""
    got: list = [None] * data.stats["input"]
    for k, i in enumerate(data.index):
        got[i] = (data.prompts[k], data.chosen[k], data.rejected[k])
    return got
