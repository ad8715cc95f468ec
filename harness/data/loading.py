"""One entry point for a suite's data set: an embedded task or a real preference file/hub set.

Held-out data come in two disjoint splits (docs/protocol.md): ``heldout`` (the test split,
``heldout_size`` items, what every report scores) and ``dev`` (``dev_size`` items, what a
tuned suite scores its trials on). Training pairs are disjoint from both. An embedded task's
held-out problems are distinct from its training and SFT problems; the test split is the
first ``heldout_size`` of them (as without a dev split) and the dev split the next
``dev_size``. A file or hub data set holds out ``heldout_size + dev_size`` pairs (whole prompt
groups, as ``formats.load_pairs`` does) and deals whole prompt groups to test until it has
``heldout_size`` pairs, the rest to dev, so no prompt is in both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..schema import DatasetSpec
from .pairs import PreferencePair, SFTExample


@dataclass
class Dataset:
    name: str
    sft: list  # SFTExample or (prompt, response) examples for the SFT stage
    train: list[PreferencePair]
    heldout: list[PreferencePair]
    task: Any = None  # the EmbeddedTask (its oracle scores generations), or None
    alphabet: str | None = None
    stats: dict = field(default_factory=dict)
    dev: list[PreferencePair] = field(default_factory=list)

    def scored_on(self, split: str) -> "Dataset":
        """This data set with ``heldout`` set to the split a cell is scored on ("test": as
        loaded; "dev": the dev split)."""
        if split == "test":
            return self
        if split != "dev":
            raise ValueError(f"unknown split {split!r}; expected 'test' or 'dev'")
        return replace(self, heldout=self.dev, stats={**self.stats, "scored_on": "dev"})


def clean_sft(pairs: list[PreferencePair]) -> list[SFTExample]:
    """SFT examples from preference pairs: each pair's *original* chosen response, whether or
    not label noise flipped the pair (``meta["flipped"]``), so that a noisy data set's SFT stage
    trains on exactly the clean one's examples."""
    return [SFTExample(p.prompt, p.rejected if p.meta.get("flipped") else p.chosen, p.framing) for p in pairs]


def load_dataset(spec: DatasetSpec, base_dir: Path | None = None, sft_source: str = "sft") -> Dataset:
    if spec.task:
        from .tasks import make_task

        task = make_task(spec.task, spec.task_args)
        d = task.generate(label_noise=spec.label_noise)
        train = d.train[: spec.train_size] if spec.train_size else d.train
        heldout = d.heldout[: spec.heldout_size]
        dev = d.heldout[spec.heldout_size: spec.heldout_size + spec.dev_size]
        sft = d.sft if sft_source == "sft" else clean_sft(train)
        return Dataset(spec.name, sft, train, heldout, task, task.alphabet,
                       {"source": f"task:{spec.task}", "train": len(train), "heldout": len(heldout),
                        **({"dev": len(dev)} if spec.dev_size else {}), **d.stats}, dev)
    from .realdata import load_pairs

    loaded = load_pairs(replace(spec, heldout_size=spec.heldout_size + spec.dev_size) if spec.dev_size else spec,
                        base_dir)
    heldout, dev = split_dev(loaded.heldout, spec.heldout_size) if spec.dev_size else (loaded.heldout, [])
    return Dataset(spec.name, clean_sft(loaded.train), loaded.train, heldout, None, None,
                   {**loaded.stats, "train": len(loaded.train), "heldout": len(heldout),
                    **({"dev": len(dev)} if spec.dev_size else {})}, dev)


def split_dev(pool: list[PreferencePair], test_size: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(test, dev) from a held-out pool: whole prompt groups, in pool order, to test until it
    holds ``test_size`` pairs; every later group to dev. No prompt is in both."""
    from .realdata import prompt_key  # the key real-data loading groups prompts by

    groups: dict[str, list[PreferencePair]] = {}
    for p in pool:
        groups.setdefault(prompt_key(p.prompt), []).append(p)
    test: list[PreferencePair] = []
    dev: list[PreferencePair] = []
    for g in groups.values():
        (test if len(test) < test_size else dev).extend(g)
    return test, dev
