"""Shared tiny fixtures for the core tests (imported by tests and by subprocesses)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from harness import schema
from harness.core.features import Features
from harness.core.train import PreferenceObjective, SFTObjective, train
from harness.data.pairs import PreferencePair
from harness.data.tokenize import tokenize
from harness.models import build_tiny, char_tokenizer

ALPHABET = "0123456789+="
SPEC = schema.TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def tiny(seed: int = 0):
    tok = char_tokenizer(ALPHABET)
    return build_tiny(SPEC, tok, seed), tok


def pairs(n: int = 16, seed: int = 0) -> list[PreferencePair]:
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        s = a + b
        out.append(PreferencePair(f"{a}+{b}=", str(s), str(s + rng.choice((-1, 1, 10))), {"answer": str(s)}))
    return out


class Stopped(Exception):
    """Raised by ``run_dpo(stop_at=...)``: an interruption after a step, in-process."""


def run_dpo(run_dir: Path, *, steps: int = 6, batch_size: int = 4, grad_accum: int = 1, seed: int = 0,
            checkpoint_every: int = 0, kill_at: int | None = None, method: str = "dpo", cache_dir=None,
            counters=None, lr: float = 1e-2, stop_at: int | None = None):
    """A small DPO training; returns (model, TrainResult, counters). ``kill_at``: SIGKILL the
    process after that step; ``stop_at``: raise ``Stopped`` there (in every process of a
    distributed run alike, so none is left waiting in a collective)."""
    import methods

    model, tok = tiny(0)
    ref, _ = tiny(0)
    data = tokenize(pairs(), tok, 64, 32)
    m = methods.get(method)
    counters = {} if counters is None else counters
    feats = Features(m, data, ref_model=ref, cache_dir=cache_dir, device=torch.device("cpu"),
                     pad_id=tok.pad_token_id, tokenizer=tok, counters=counters)
    cfg = schema.TrainSpec(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                           checkpoint_every=checkpoint_every, warmup_steps=2, schedule="cosine")

    def hook(step, rec):
        if kill_at is not None and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if stop_at is not None and step == stop_at:
            raise Stopped(step)

    res = train(model, data, PreferenceObjective(m, feats), cfg, seed, run_dir, tokenizer=tok, on_step=hook)
    return model, res, counters


if __name__ == "__main__":  # subprocess entry: python core_helpers.py RUN_DIR KILL_AT
    torch.set_num_threads(1)
    run_dpo(Path(sys.argv[1]), steps=8, checkpoint_every=2, kill_at=int(sys.argv[2]))
