"""A plan in words: counts, every cell and SFT stage with its status, and a rough compute
estimate (training tokens, and FLOPs for tiny models: 6 x parameters x tokens)."""
from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path

from ..results import CorruptFileError, read_status
from .plan import Plan


def _state(folder: Path) -> str:
    """A cell's or stage's state for the listing ("unreadable" for a damaged status file)."""
    try:
        return str(read_status(folder)["state"])
    except (CorruptFileError, OSError):
        return "unreadable"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return ["  " + fmt.format(*header).rstrip()] + ["  " + fmt.format(*map(str, r)).rstrip() for r in rows]


# Rough vocabulary sizes of the tiny-model tokenizers, for the estimate only.
_VOCAB_ESTIMATE = {"char": 64, "byte": 384, "gpt2": 50257}


def tiny_param_estimate(tiny: dict) -> int:
    """Parameters that cost matmul FLOPs in a tiny model: per layer 4 h^2 (q, k, v, o) plus
    the MLP (3 h i gated for llama/qwen2, 2 h i for gpt2), plus the LM head h V. Embedding
    lookups cost no FLOPs and are left out, as in Kaplan et al. (2020)'s C = 6 N D."""
    h, layers = tiny["hidden_size"], tiny["num_layers"]
    inter = tiny.get("intermediate_size") or 2 * h
    mlp = (2 if tiny["arch"] == "gpt2" else 3) * h * inter
    vocab = tiny["bpe_vocab_size"] if tiny["tokenizer"] == "bpe" else _VOCAB_ESTIMATE[tiny["tokenizer"]]
    return layers * (4 * h * h + mlp) + h * vocab


def _steps_text(t: dict, dataset: dict) -> str:
    n = planned_steps(t, dataset, "n_sft")
    if t.get("steps") is not None:
        return str(t["steps"])
    return f"{t['epochs']:g} epochs" + (f" (~{n})" if n is not None else "")


def _human(n: float) -> str:
    for unit, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def planned_steps(train: dict, dataset: dict, size_arg: str) -> int | None:
    """The optimizer steps of a config's ``train`` (or ``sft``) settings: ``steps``, or for
    ``epochs`` over an embedded task the count its arguments give (``size_arg``: ``n_pairs``
    or ``n_sft``, capped by ``train_size``); None when only loading the data would tell."""
    if train.get("steps") is not None:
        return int(train["steps"])
    n = (dataset.get("task_args") or {}).get(size_arg) if dataset.get("task") else None
    if n is None or train.get("epochs") is None:
        return None
    if dataset.get("train_size") and size_arg == "n_pairs":
        n = min(n, dataset["train_size"])
    return max(1, math.ceil(train["epochs"] * n / (train["batch_size"] * train["grad_accum"])))


def describe_plan(plan: Plan, results_dir: str | os.PathLike) -> str:
    """A readable plan: counts, the cells with their status, SFT stages, and a rough compute
    estimate."""
    s = plan.suite
    root = Path(results_dir) / s.name
    states = {c.cell_id: _state(root / c.cell_id) for c in plan.cells}
    out = _headline(plan)
    counts: dict[str, int] = {}
    for st in states.values():
        counts[st] = counts.get(st, 0) + 1
    out.append("Status: " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items())))
    out += ["", "Cells:"]
    out += _table([[c.label, c.model, c.dataset, c.seed, states[c.cell_id], c.cell_id] for c in plan.cells],
                  ["label", "model", "dataset", "seed", "status", "cell id"])
    out += _stage_tables(plan, root)
    if plan.tuned:
        from .space import describe_spaces

        t = s.tuning
        out += ["", f"Tuning: phase 1 above = trials on the dev split (seeds {', '.join(map(str, t.seeds))}) and the "
                    f"rows that need none; budget {t.budget if t.budget is not None else 'every point'} trials "
                    f"per method and (model, data set):"]
        out += describe_spaces(plan.spaces, t.budget)
    return "\n".join(out + _compute_estimate(plan))


def _headline(plan: Plan) -> list[str]:
    """The counts (cells as models x data sets x variants x seeds, or a tuned suite's phase 1;
    the stages) and the suite's description."""
    s = plan.suite
    n_var = len({c.label for c in plan.cells})
    if plan.tuned:
        trials = sum(c.role == "trial" for c in plan.cells)
        head = (f"Suite {s.name!r} (tuned): phase 1 has {_n(len(plan.cells), 'cell')} ({trials} trials on dev, "
                f"{len(plan.cells) - trials} untuned rows on test)")
    else:
        head = (f"Suite {s.name!r}: {_n(len(plan.cells), 'cell')} = {_n(len(s.models), 'model')} x "
                f"{_n(len(s.datasets), 'data set')} x {_n(n_var, 'method variant')} x {_n(len(s.seeds), 'seed')}")
    out = [head + f"; {_n(len(plan.sft_stages), 'SFT stage')}"
           + (f", {_n(len(plan.onpolicy_stages), 'on-policy stage')}" if plan.onpolicy_stages else "")]
    if s.description:
        out.append(f"  {s.description.strip()}")
    return out


def _stage_tables(plan: Plan, root: Path) -> list[str]:
    """The SFT stages and the on-policy sample stages, with their status."""
    out: list[str] = []
    if plan.sft_stages:
        out += ["", "SFT stages:"]
        out += _table([[st.model, st.dataset, "-" if st.seed is None else st.seed,
                        _steps_text(st.config["sft"], st.config["dataset"]),
                        _state(root / "_sft" / st.stage_id), st.stage_id] for st in plan.sft_stages],
                      ["model", "dataset", "seed", "steps", "status", "stage id"])
    if plan.onpolicy_stages:
        out += ["", "On-policy sample stages (k responses per training prompt from the SFT checkpoint, judged):"]
        out += _table([[st.model, st.dataset, st.seed, st.config["onpolicy"]["k"],
                        _state(root / "_onpolicy" / st.stage_id), st.stage_id] for st in plan.onpolicy_stages],
                      ["model", "dataset", "seed", "k", "status", "stage id"])
    return out


def _compute_estimate(plan: Plan) -> list[str]:
    """Training tokens per model (every sequence counted at max_length: an upper bound), and
    for tiny models FLOPs as 6 x parameters x tokens."""
    pref_tokens: dict[str, int] = {}
    unknown = 0  # trained by epochs over data whose size is known only when loaded
    for c in plan.cells:
        t = c.config["train"]
        n = planned_steps(t, c.config["dataset"], "n_pairs")
        unknown += n is None
        pref_tokens[c.model] = pref_tokens.get(c.model, 0) + \
            (n or 0) * t["batch_size"] * t["grad_accum"] * t["max_length"] * 2
    sft_tokens: dict[str, int] = {}
    for st in plan.sft_stages:
        t = st.config["sft"]
        n = planned_steps(t, st.config["dataset"], "n_sft")
        unknown += n is None
        sft_tokens[st.model] = sft_tokens.get(st.model, 0) + \
            (n or 0) * t["batch_size"] * t["grad_accum"] * t["max_length"]
    total = sum(pref_tokens.values()) + sum(sft_tokens.values())
    out = ["", "Compute estimate (rough: tokens = steps x batch_size x grad_accum x max_length, x2 for "
               "chosen+rejected; sequences counted at full length, reference and evaluation passes left out):",
           f"  training tokens: {_human(sum(pref_tokens.values()))} preference + "
           f"{_human(sum(sft_tokens.values()))} SFT = {_human(total)}"
           + (f" (not counted: {_n(unknown, 'cell or stage')} trained by epochs over data whose size is "
              f"known only when loaded)" if unknown else "")]
    for m in plan.suite.models:
        if m.tiny is not None:
            n = tiny_param_estimate(asdict(m.tiny))
            toks = pref_tokens.get(m.name, 0) + sft_tokens.get(m.name, 0)
            out.append(f"  {m.name}: ~{_human(n)} parameters (tiny model), ~{_human(6 * n * toks)} FLOPs "
                       f"(6 x N x tokens)")
    return out
