"""One evaluation context: what every metric family reads, and what they share, computed once.

A cell's evaluation (:func:`harness.evaluate.policy.evaluate`) runs each registered metric family
(:mod:`harness.evaluate.families`) on one :class:`EvalContext`. The context holds the models,
the held-out data and the settings, and computes on first use what several families need:

* ``heldout`` / ``heldout_logps``: the held-out pairs tokenized, and per-token log-probs of
  their chosen and rejected responses under the policy and the reference (preference accuracy,
  likelihood displacement and the method's reward accuracy read the same numbers);
* ``greedy``: one greedy pass over the generation prompts for the policy and one for the
  reference (the SFT policy; cached per reference on disk, so the cells of a stage share it),
  feeding task accuracy (or the judge's reward), the win rates and the mean answer length;
  ``judged``: those answers scored once (oracle or reward model);
* ``sampled``: the samples (seeded per cell) for KL(policy || ref), one per KL prompt, and
  for diversity, ``samples_per_prompt`` per diversity prompt (drawn in that order, in input
  order: the sampled metrics are those earlier versions gave).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..data.tokenize import encode_prompt, tokenize
from ..schema import EvalSpec

SAMPLING_SEED_OFFSET = 7919  # sampled metrics are reproducible per cell: seed + this


@dataclass
class HeldoutLogps:
    """Per-token log-probs (CPU tensors) of each held-out pair's responses."""

    policy_chosen: list
    policy_rejected: list
    ref_chosen: list
    ref_rejected: list


@dataclass
class Greedy:
    """Greedy answers to the generation prompts: token ids and decoded text, policy and SFT."""

    prompts: list          # the held-out examples
    ids: list[list[int]]
    ref_ids: list[list[int]]
    texts: list[str]
    ref_texts: list[str]


@dataclass
class Judged:
    """Scores of the policy's and the SFT policy's greedy answers (oracle or reward model);
    ``graded``/``ref_graded``: the task's graded oracle (partial credit), None for a judge."""

    scores: list[float]
    ref_scores: list[float]
    graded: list[float] | None = None
    ref_graded: list[float] | None = None


@dataclass
class Sampled:
    """The sampling pass: ``groups[p]`` the samples of diversity prompt p; ``kl`` one
    (prompt ids, response ids) per KL sample, responses possibly empty."""

    groups: list[list[list[int]]]
    kl: list[tuple[list[int], list[int]]]


@dataclass
class EvalContext:
    """A trained policy, its reference (the SFT checkpoint), the data and the settings.

    ``trained=False`` (the SFT row: the policy is the reference) leaves out the metrics that
    compare the policy with itself. ``cache_dir`` + ``ref_id`` cache the reference's greedy
    answers. ``generator``: the generation backend (default: ``transformers`` in memory)."""

    policy: Any
    ref: Any
    tok: Any
    data: Any
    method: Any
    spec: EvalSpec
    out_dir: Path
    seed: int
    chat_template: bool = True
    max_length: int = 512
    max_prompt_length: int = 256
    trained: bool = True
    cache_dir: Path | None = None
    ref_id: str | None = None
    generator: Any = None
    prompt_truncation: str = "keep_end"                  # how a long prompt is cut, as in training
    samples_log: Any = field(default=None, repr=False)   # samples.jsonl's writer, while evaluating

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.device = next(self.policy.parameters()).device
        self.pad, self.eos = self.tok.pad_token_id, self.tok.eos_token_id
        held = self.data.heldout
        self.held = held[: self.spec.heldout_pairs] if self.spec.heldout_pairs else held
        if self.generator is None:
            from .generation import HFGenerator

            self.generator = HFGenerator(self.pad, self.eos, self.spec.max_new_tokens, self.spec.batch_size)

    # ----------------------------------------------------------------- shared inputs
    def prompt_ids(self, examples) -> list[list[int]]:
        """What the model sees before it answers, cut as in training."""
        return [encode_prompt(self.tok, p, self.chat_template, self.max_prompt_length, self.prompt_truncation)
                for p in examples]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def write_sample(self, record: dict) -> None:
        if self.samples_log is not None:
            self.samples_log.write(record)

    @cached_property
    def heldout(self):
        return tokenize(self.held, self.tok, self.max_length, self.max_prompt_length, self.chat_template,
                        prompt_truncation=self.prompt_truncation)

    @cached_property
    def heldout_logps(self) -> HeldoutLogps:
        from ..core.batch import sequence_logps

        td, bs = self.heldout, self.spec.batch_size

        def logps(model, responses):
            return sequence_logps(model, td.prompts, responses, self.pad, bs, self.device)

        return HeldoutLogps(logps(self.policy, td.chosen), logps(self.policy, td.rejected),
                            logps(self.ref, td.chosen), logps(self.ref, td.rejected))

    @cached_property
    def greedy_prompts(self) -> tuple[list, list[list[int]]]:
        examples = self.held[: self.spec.generation_prompts]
        return examples, self.prompt_ids(examples)

    @cached_property
    def policy_answers(self) -> list[list[int]]:
        return self.generator.greedy(self.policy, self.greedy_prompts[1])

    @cached_property
    def greedy(self) -> Greedy:
        examples, pids = self.greedy_prompts
        ids, ref_ids = self.policy_answers, self._reference_answers(pids)
        return Greedy(examples, ids, ref_ids, [self.decode(o) for o in ids], [self.decode(o) for o in ref_ids])

    def generate_policy_first(self) -> None:
        """Everything the policy generates, before the reference generates anything: a backend
        that serves one model at a time (vLLM) then starts each engine once."""
        if self.spec.generation_prompts and self.held:
            self.policy_answers
        self.sampled

    def _reference_answers(self, pids: list[list[int]]) -> list[list[int]]:
        """The SFT policy's greedy answers, from the cache of its reference when there."""
        path = None
        if self.cache_dir is not None and self.ref_id:
            key = hashlib.sha256(json.dumps([self.ref_id, pids, self.spec.max_new_tokens]).encode()).hexdigest()[:20]
            path = Path(self.cache_dir) / f"ref-greedy-{key}.json"
            if path.is_file():
                try:
                    return json.loads(path.read_text())
                except ValueError:
                    pass  # damaged entry: recompute
        out = self.generator.greedy(self.ref, pids)
        if path is not None:
            from ..results import atomic_write_json

            atomic_write_json(path, out)
        return out

    @cached_property
    def judged(self) -> Judged | None:
        """The greedy answers scored by the reward model (``eval.judge``), else by the embedded
        task's oracle; None when there is neither."""
        g = self.greedy
        if self.spec.judge != "oracle":
            from .judge import reward_scores

            prompts = [p.prompt for p in g.prompts]
            return Judged(reward_scores(self.spec.judge, prompts, g.texts),
                          reward_scores(self.spec.judge, prompts, g.ref_texts))
        task = self.data.task
        if task is None:
            return None
        return Judged([task.score(p.meta, t) for p, t in zip(g.prompts, g.texts)],
                      [task.score(p.meta, t) for p, t in zip(g.prompts, g.ref_texts)],
                      [task.graded(p.meta, t) for p, t in zip(g.prompts, g.texts)],
                      [task.graded(p.meta, t) for p, t in zip(g.prompts, g.ref_texts)])

    @cached_property
    def sampled(self) -> Sampled:
        """The KL samples (one per KL prompt, ``top_p`` 1), then the diversity samples
        (``samples_per_prompt`` per prompt, with ``top_p``), from one seed per cell, in the order
        and batches the evaluation has always drawn them: the sampled metrics of a cell do not
        change with this code's version. KL needs draws from the policy itself, which nucleus
        samples are not, so the two sets are drawn apart."""
        s, held = self.spec, self.held
        torch.manual_seed(self.seed + SAMPLING_SEED_OFFSET)
        kl: list[tuple[list[int], list[int]]] = []
        if s.kl_samples and held:
            kp = self.prompt_ids([held[i % len(held)] for i in range(s.kl_samples)])
            kl = list(zip(kp, self.generator.sample(self.policy, kp, 1, s.temperature, 1.0)))
        groups: list[list[list[int]]] = []
        div_prompts = self.prompt_ids(held[: s.diversity_prompts]) if held else []
        if div_prompts:
            ys = self.generator.sample(self.policy, div_prompts, s.samples_per_prompt, s.temperature, s.top_p)
            k = s.samples_per_prompt
            groups = [ys[i * k:(i + 1) * k] for i in range(len(div_prompts))]
        return Sampled(groups, kl)
