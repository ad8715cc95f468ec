"""``run --smoke``: the whole pipeline of a cluster suite, on a laptop, in minutes.

Every model becomes a tiny model of the same architecture family (``model.smoke`` when the
suite gives one), every hub or file data set an embedded task, every standard lm-eval
benchmark its local stand-in (``harness.evaluate.lmeval.smoke_standin``), and step counts
and evaluation sizes are capped. Methods, hyperparameters, seeds and the stage structure are
kept, so what runs is the suite's own plan in miniature. Results go to ``<suite>-smoke`` so
they never mix with real ones, and every cell's and stage's ``config.yaml`` says
``smoke: true`` (:func:`mark_plan`), which the report reads to label every table and figure
as a smoke run. The flag is added after the cell ids are hashed: a smoke cell's id differs from
a real one's anyway (suite name, models and sizes differ), and a real suite's ids and configs
carry no ``smoke`` key at all, so they stay byte for byte what they were. Nothing here
downloads anything.
"""
from __future__ import annotations

import copy
import dataclasses

from .schema import DatasetSpec, TinyModelSpec

CAPS = {"steps": 8, "batch_size": 4, "max_length": 128, "max_prompt_length": 64}


def family(model) -> str:
    """Architecture family of a model from its name/hub id/path (Llama, Mistral -> llama)."""
    text = " ".join(str(x) for x in (model.name, model.hub, model.path, model.gguf_file) if x).lower()
    if "qwen" in text:
        return "qwen2"
    if "gpt2" in text or "gpt-2" in text:
        return "gpt2"
    return "llama"  # Llama, Mistral, SmolLM and most decoder-only LMs share its layout


def _cap(spec, steps: int) -> None:
    spec.steps = min(spec.steps, steps) if spec.steps is not None else steps  # epochs: capped too
    spec.epochs = None
    spec.batch_size = min(spec.batch_size, CAPS["batch_size"])
    spec.grad_accum = 1
    spec.warmup_steps = min(spec.warmup_steps, spec.steps)
    spec.max_length = min(spec.max_length, CAPS["max_length"])
    spec.max_prompt_length = min(spec.max_prompt_length, CAPS["max_prompt_length"])
    spec.precision = "fp32"
    spec.checkpoint_every = 0


def smoke_suite(loaded):
    from .evaluate.lmeval import smoke_standin

    loaded = copy.deepcopy(loaded)
    s = loaded.suite
    s.name = f"{s.name}-smoke"
    for m in s.models:
        tiny = m.smoke or TinyModelSpec(arch=family(m), hidden_size=64, num_layers=2, num_heads=4,
                                        max_position_embeddings=CAPS["max_length"])
        tiny.max_position_embeddings = max(tiny.max_position_embeddings, CAPS["max_length"])
        m.tiny, m.path, m.hub, m.gguf_file, m.revision = tiny, None, None, None, None
        m.lora, m.gradient_checkpointing, m.dtype = None, False, "auto"
    for i, d in enumerate(s.datasets):
        dev = min(d.dev_size, 16)  # a tuned suite keeps a (small) dev split
        if not d.task:
            s.datasets[i] = DatasetSpec(name=d.name, task="addition",
                                        task_args={"n_sft": 64, "n_pairs": 64, "n_heldout": 16 + dev},
                                        heldout_size=16, label_noise=d.label_noise, dev_size=dev, pairs=d.pairs)
        else:
            d.heldout_size = min(d.heldout_size, 16)
            d.dev_size = dev
    _cap(s.sft, 20)
    _cap(s.train, CAPS["steps"])
    for m in s.methods:
        for k in list(m.train):
            if k in CAPS or k in ("epochs", "grad_accum", "warmup_steps", "precision", "checkpoint_every"):
                m.train.pop(k)
    s.onpolicy.prompts = min(s.onpolicy.prompts or 64, 64)
    e = s.eval
    e.generation_prompts = min(e.generation_prompts, 16)
    e.diversity_prompts = min(e.diversity_prompts, 4)
    e.kl_samples = min(e.kl_samples, 4)
    e.max_new_tokens = min(e.max_new_tokens, 8)
    e.lm_eval_limit = min(e.lm_eval_limit or 8, 8)
    e.semantic_diversity = "off"
    e.lm_eval_tasks = list(dict.fromkeys(t if t.startswith("embedded") else smoke_standin(t)
                                         for t in e.lm_eval_tasks))
    if s.launcher.type == "slurm":
        s.launcher = dataclasses.replace(s.launcher, type="inline")
    return loaded


def mark_plan(plan) -> None:
    """Add ``smoke: true`` to every cell's and SFT stage's stored config (written to its
    ``config.yaml``); ids are already computed and do not change."""
    for c in plan.cells:
        c.config["smoke"] = True
    for st in plan.sft_stages + plan.onpolicy_stages:
        st.config["smoke"] = True
