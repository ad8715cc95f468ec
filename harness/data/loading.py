"""One entry point for a suite's data set: an embedded task or a real preference file/hub set."""
from __future__ import annotations

from dataclasses import dataclass, field
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
        sft = d.sft if sft_source == "sft" else clean_sft(train)
        return Dataset(spec.name, sft, train, heldout, task, task.alphabet,
                       {"source": f"task:{spec.task}", "train": len(train), "heldout": len(heldout), **d.stats})
    from .realdata import load_pairs

    loaded = load_pairs(spec, base_dir)
    return Dataset(spec.name, clean_sft(loaded.train), loaded.train, loaded.heldout, None, None,
                   {**loaded.stats, "train": len(loaded.train), "heldout": len(loaded.heldout)})
