"""A local reward model as the judge of generations (``eval.judge: PATH``).

PATH is a transformers sequence-classification model with one output (a reward model, e.g.
one trained with TRL's RewardTrainer) and its tokenizer. Each (prompt, response) is scored as
the model's scalar output on the text the tokenizer's chat template makes of the dialogue (or
prompt + response when it has none). Higher is better: the win rate against the SFT policy
compares the two responses' rewards per prompt (ties count half), through the same alpaca-eval
functions as the oracle's judgements.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from ..errors import UserError


@lru_cache(maxsize=2)
def _load(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    p = Path(path)
    if not p.exists():
        raise UserError(f"eval.judge: {path} does not exist; give the folder of a reward model or 'oracle'")
    tok = AutoTokenizer.from_pretrained(p)
    model = AutoModelForSequenceClassification.from_pretrained(p, use_safetensors=True).eval()
    if model.config.num_labels != 1:
        raise UserError(f"eval.judge: {path} has {model.config.num_labels} outputs; a reward model has 1")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def _text(tok, prompt, response: str) -> str:
    if getattr(tok, "chat_template", None):
        msgs = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt))
        return tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    return (prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)) + response


def reward_scores(path: str, prompts: list, responses: list[str], batch_size: int = 16) -> list[float]:
    model, tok = _load(str(path))
    out: list[float] = []
    with torch.no_grad():
        for s in range(0, len(responses), batch_size):
            texts = [_text(tok, p, r) for p, r in zip(prompts[s: s + batch_size], responses[s: s + batch_size])]
            enc = tok(texts, return_tensors="pt", padding=True, truncation=True,
                      max_length=min(getattr(tok, "model_max_length", 2048) or 2048, 4096))
            out.extend(model(**enc).logits[:, 0].float().tolist())
    return out
