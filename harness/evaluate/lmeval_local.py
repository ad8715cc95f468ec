"""Offline lm-eval tasks written from the embedded task's held-out data.

:func:`write_local_tasks` writes ``<prefix>_gen`` (``generate_until``, greedy, ``exact_match``
against the answer) and ``<prefix>_mc`` (``multiple_choice``, ``acc`` and ``acc_norm``) as one
JSONL data file plus one YAML config per task, into a folder that is then passed as
``TaskManager(include_path=DIR, include_defaults=False)``. YAML (rather than in-memory dicts)
because the folder is then a self-contained, inspectable artifact that the lm-eval CLI can
rerun (``lm_eval --include_path DIR --tasks embedded_gen``), and because names in an include
path are what the did-you-mean check lists. ``data_files`` are written as ABSOLUTE paths:
lm-eval resolves relative ones against the working directory, not the YAML's folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from harness.errors import UserError
from harness.results import atomic_write_text

LOCAL_TASK_VERSION = 1.0


def write_local_tasks(out_dir: Path, gen_examples: Sequence[dict], mc_examples: Sequence[dict],
                      prefix: str = "embedded", *, until: Sequence[str] = ("\n",),
                      max_gen_toks: int = 32, target_delimiter: str = "",
                      strip_whitespace: bool = True) -> list[str]:
    """Write offline lm-eval tasks (JSONL data + YAML config) into ``out_dir``.

    ``gen_examples``: ``{"prompt", "answer"}`` rows -> task ``<prefix>_gen``: greedy
    ``generate_until`` (stops at ``until`` or the tokenizer's EOS, at most ``max_gen_toks``
    tokens), scored by ``exact_match`` of the output against ``answer`` (leading/trailing
    whitespace ignored when ``strip_whitespace``).
    ``mc_examples``: ``{"question", "choices": [str], "gold": int}`` rows -> task
    ``<prefix>_mc``: the log-likelihood of each choice after the question; ``acc`` picks the
    largest, ``acc_norm`` the largest per character of the choice.
    ``target_delimiter`` goes between prompt and answer/choice; "" suits the embedded tasks,
    whose prompts end in "=" and whose answers follow with no space.
    Returns the task names written (a task with no examples is skipped). Raises
    :class:`DataError`-style :class:`UserError` naming the row when a row is malformed.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    if gen_examples:
        rows = [_gen_row(i, r) for i, r in enumerate(gen_examples)]
        name = f"{prefix}_gen"
        ignore = [r"^\s+", r"\s+$"] if strip_whitespace else []
        metric: dict[str, Any] = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
        if ignore:
            metric["regexes_to_ignore"] = ignore
        _write_task(out_dir, name, rows, {
            "output_type": "generate_until",
            "doc_to_text": "prompt",
            "doc_to_target": "answer",
            "target_delimiter": target_delimiter,
            "generation_kwargs": {"until": list(until), "do_sample": False, "max_gen_toks": int(max_gen_toks)},
            "metric_list": [metric],
        })
        names.append(name)
    if mc_examples:
        rows = [_mc_row(i, r) for i, r in enumerate(mc_examples)]
        name = f"{prefix}_mc"
        _write_task(out_dir, name, rows, {
            "output_type": "multiple_choice",
            "doc_to_text": "question",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": target_delimiter,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm")],
        })
        names.append(name)
    return names


def _gen_row(i: int, r: dict) -> dict:
    if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not isinstance(r.get("answer"), str):
        raise UserError(f"lm-eval generative example {i}: needs string fields 'prompt' and 'answer', got {r!r}")
    return {"prompt": r["prompt"], "answer": r["answer"]}


def _mc_row(i: int, r: dict) -> dict:
    ch = r.get("choices") if isinstance(r, dict) else None
    ok = (isinstance(r, dict) and isinstance(r.get("question"), str) and isinstance(ch, list) and len(ch) >= 2
          and all(isinstance(c, str) and c for c in ch) and isinstance(r.get("gold"), int)
          and not isinstance(r.get("gold"), bool) and 0 <= r["gold"] < len(ch))
    if not ok:
        raise UserError(f"lm-eval multiple-choice example {i}: needs 'question' (str), 'choices' "
                        f"(>= 2 non-empty str) and 'gold' (int index into choices), got {r!r}")
    return {"question": r["question"], "choices": list(ch), "gold": int(r["gold"])}


def _write_task(out_dir: Path, name: str, rows: list[dict], body: dict) -> None:
    import yaml

    data = out_dir / f"{name}.jsonl"
    atomic_write_text(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},  # absolute: see module docstring
        "test_split": "test",
        **body,
        "num_fewshot": 0,
        "metadata": {"version": LOCAL_TASK_VERSION},
    }
    atomic_write_text(out_dir / f"{name}.yaml", yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
