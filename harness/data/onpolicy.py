"""On-policy preference data: samples of the SFT policy, scored by a judge, made into pairs.

The standard recipe for strong offline preference data (SimPO's on-policy UltraFeedback pairs,
scored by a reward model; Meng et al. 2024): for each training prompt, sample ``k`` responses
from the SFT checkpoint, score each with a judge, and train on pairs of them.

**Stage** (``run_stage``; one per SFT stage and seed, folder ``_onpolicy/<stage id>/``): the
first ``onpolicy.prompts`` distinct training prompts (all by default), ``k`` samples each at
``temperature`` / ``top_p`` (torch seeded from the stage's seed), decoded to text and scored:

* ``judge: oracle``: the embedded task's graded oracle (``EmbeddedTask.graded``: digit-level
  credit for addition, edit-distance credit for reverse, 1 exactly for a correct answer), and
  its exact-match ``score`` as ``correct``;
* ``judge: PATH``: the reward model at PATH (``harness.evaluate.judge``, as ``eval.judge``);
  ``correct`` is then unknown (null).

``samples.jsonl`` holds one record per prompt (``i``: its first training pair, ``prompt``,
``answer``, ``responses``, ``scores``, ``correct``) and ``stage.json`` the totals. Every cell of
that SFT stage and seed reads the same file: the samples are drawn once and shared by every
method, trial and final.

**Views** (pure functions of the records, made by each cell; ``training_examples``):

* ``pairs`` (``pairing: best_vs_worst``): per prompt, the highest against the lowest score (the
  first sampled wins a tie for either place); a prompt whose samples all score the same gives
  no pair (``ties_dropped``). ``pairing: margin``: every two distinct responses of a prompt whose
  scores differ by more than ``margin``, the higher one chosen;
* ``best_of_k`` (the ``rft`` baseline): per prompt the best sample as chosen (the worst as
  rejected, only logged), kept when its score reaches ``rft_min_score`` (``below_min_dropped``).

Each cell's ``metrics.json`` records its view as ``onpolicy/*``: prompts, training examples,
prompts dropped, the share of chosen (and rejected) responses that are correct, the mean score
margin and the mean sample score. A sampled response that reached ``max_new_tokens`` without
an end-of-sequence token is kept as text; tokenization then appends EOS, as for any response.
The data set's ``label_noise`` applies to its own pairs only, never to on-policy ones.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..errors import DataError
from .pairs import PreferencePair

SAMPLES_FILE = "samples.jsonl"
STAGE_FILE = "stage.json"
ONPOLICY_DIR = "_onpolicy"


# ----------------------------------------------------------------------------- views
def _ranked(rec: dict) -> list[int]:
    """Sample indices by score, best first; the first sampled first among equals."""
    return sorted(range(len(rec["scores"])), key=lambda j: (-rec["scores"][j], j))


def _pair(rec: dict, w: int, lo: int) -> PreferencePair:
    c = rec.get("correct")
    meta = {"answer": rec.get("answer"), "chosen_score": rec["scores"][w], "rejected_score": rec["scores"][lo],
            "chosen_correct": None if c is None else c[w], "rejected_correct": None if c is None else c[lo],
            "onpolicy_prompt": rec["i"]}
    return PreferencePair(rec["prompt"], rec["responses"][w], rec["responses"][lo], meta)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _stats(records: list[dict], pairs: list[PreferencePair], **dropped: int) -> dict:
    def share(key: str) -> float:
        vals = [p.meta[key] for p in pairs if p.meta[key] is not None]
        return _mean([float(v) for v in vals]) if vals and len(vals) == len(pairs) else math.nan

    return {"prompts": len(records), "examples": len(pairs), **dropped,
            "chosen_correct": share("chosen_correct"), "rejected_correct": share("rejected_correct"),
            "mean_margin": _mean([p.meta["chosen_score"] - p.meta["rejected_score"] for p in pairs]),
            "sample_score": _mean([s for r in records for s in r["scores"]])}


def form_pairs(records: list[dict], pairing: str = "best_vs_worst", margin: float = 0.0
               ) -> tuple[list[PreferencePair], dict]:
    """Preference pairs from scored samples (module docstring); (pairs, stats)."""
    pairs: list[PreferencePair] = []
    ties = 0
    for rec in records:
        order = _ranked(rec)
        if pairing == "best_vs_worst":
            w, lo = order[0], order[-1]
            # the lowest score's first sample, not the last in the order
            lo = min(j for j in order if rec["scores"][j] == rec["scores"][lo])
            new = [_pair(rec, w, lo)] if rec["scores"][w] > rec["scores"][lo] else []
        elif pairing == "margin":
            new, seen = [], set()
            for a, w in enumerate(order):
                for lo in order[a + 1:]:
                    key = (rec["responses"][w], rec["responses"][lo])
                    if rec["scores"][w] - rec["scores"][lo] > margin and key not in seen:
                        seen.add(key)
                        new.append(_pair(rec, w, lo))
        else:
            raise ValueError(f"unknown pairing {pairing!r}; expected 'best_vs_worst' or 'margin'")
        ties += not new
        pairs += new
    return pairs, _stats(records, pairs, ties_dropped=ties)


def best_of_k(records: list[dict], min_score: float | None = None) -> tuple[list[PreferencePair], dict]:
    """Each prompt's best sample as chosen (its worst as rejected), kept when its score is at
    least ``min_score`` (None: always); (pairs, stats)."""
    pairs, below = [], 0
    for rec in records:
        order = _ranked(rec)
        w, lo = order[0], order[-1]
        if min_score is not None and rec["scores"][w] < min_score:
            below += 1
            continue
        pairs.append(_pair(rec, w, lo))
    return pairs, _stats(records, pairs, below_min_dropped=below)


# -------------------------------------------------------------------------- for cells
def read_samples(stage_dir: Path) -> list[dict]:
    from ..results import read_jsonl

    return read_jsonl(Path(stage_dir) / SAMPLES_FILE)


def training_examples(cfg, data, suite_dir: Path) -> tuple[list[PreferencePair], dict]:
    """The pairs a cell trains on, and the ``metrics.json`` entries that describe them: the
    data set's own pairs, or (``cfg.onpolicy``) a view of its on-policy sample stage."""
    if cfg.onpolicy is None:
        return data.train, {}
    from ..results import read_status

    stage = Path(suite_dir) / ONPOLICY_DIR / cfg.onpolicy_stage
    st = read_status(stage)
    if st["state"] != "done":
        raise RuntimeError(f"on-policy sample stage {cfg.onpolicy_stage} is {st['state']}"
                           f"{' (' + str(st.get('reason')) + ')' if st.get('reason') else ''}; "
                           f"see {stage / 'error.txt'}")
    records = read_samples(stage)
    op = cfg.onpolicy
    if op.view == "best_of_k":
        pairs, stats = best_of_k(records, op.rft_min_score)
    else:
        pairs, stats = form_pairs(records, op.pairing, op.margin)
    if not pairs:
        what = (f"reaches rft_min_score {op.rft_min_score}" if op.view == "best_of_k"
                else f"gives a pair (pairing {op.pairing}, margin {op.margin}): every sample of a prompt scored alike")
        raise DataError(f"on-policy stage {cfg.onpolicy_stage}: no prompt of {len(records)} {what}; sample more "
                        f"(onpolicy.k, temperature) or relax the setting")
    metrics: dict[str, Any] = {f"onpolicy/{k}": v for k, v in stats.items()}
    metrics["data/onpolicy"] = {"stage": cfg.onpolicy_stage, "view": op.view, "pairing": op.pairing,
                                "margin": op.margin, "rft_min_score": op.rft_min_score, "k": op.k,
                                "judge": "oracle" if op.judge == "oracle" else Path(op.judge).name}
    return pairs, metrics


# ------------------------------------------------------------------------------ stage
def sample_prompts(train: list[PreferencePair], limit: int | None) -> list[tuple[int, PreferencePair]]:
    """(index, pair) of the first training pair of each distinct prompt, at most ``limit``."""
    from .realdata import prompt_key

    seen, out = set(), []
    for i, p in enumerate(train):
        key = prompt_key(p.prompt)
        if key in seen:
            continue
        seen.add(key)
        out.append((i, p))
        if limit is not None and len(out) >= limit:
            break
    return out


def _judge(data, judge: str, prompts: list, texts: list[str], metas: list[dict]):
    """(scores, correct or None per text)."""
    if judge == "oracle":
        if data.task is None:
            raise DataError(f"data set {data.name!r}: onpolicy.judge is oracle, but only embedded tasks have "
                            "an oracle; give the path of a reward model as onpolicy.judge")
        return ([data.task.graded(m, t) for m, t in zip(metas, texts)],
                [bool(data.task.score(m, t)) for m, t in zip(metas, texts)])
    from ..evaluate.judge import reward_scores

    return reward_scores(judge, prompts, texts), None


def run_stage(suite_dir: Path, folder: Path) -> dict:
    """Sample, score and store one on-policy stage (the job ``run_job(..., "onpolicy", id)``)."""
    import torch

    from ..config.cell import load_onpolicy_config
    from ..evaluate.generation import generate
    from ..models import load_model, load_saved
    from ..results import atomic_write_json, atomic_write_text, read_status
    from ..schema import SFTSpec
    from .loading import load_dataset
    from .render import plain_texts
    from .tokenize import encode_prompt

    t0 = time.time()
    cfg = load_onpolicy_config(folder)
    op = cfg.onpolicy
    data = load_dataset(cfg.dataset, None, (cfg.sft or SFTSpec()).data)
    if cfg.sft_stage:
        sft_dir = Path(suite_dir) / "_sft" / cfg.sft_stage
        st = read_status(sft_dir)
        if st["state"] != "done" or not (sft_dir / "model").is_dir():
            raise RuntimeError(f"SFT stage {cfg.sft_stage} is {st['state']}; see {sft_dir / 'error.txt'}")
        model, tok = load_saved(sft_dir / "model")
    else:
        texts = plain_texts(data.sft, data.train, data.heldout) if cfg.model.tiny else None  # as the cells build it
        model, tok = load_model(cfg.model, alphabet=data.alphabet, texts=texts, seed=0)
    model = model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
    chosen = sample_prompts(data.train, op.prompts)
    # prompts cut as the cells' tokenization cuts them (their last max_prompt_length tokens)
    pids = [encode_prompt(tok, p, cfg.model.chat_template, op.max_prompt_length) for _, p in chosen]
    torch.manual_seed(cfg.seed + 104729)  # a stream of its own: not the training seed's
    ys = generate(model, pids, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=op.max_new_tokens,
                  do_sample=True, temperature=op.temperature, top_p=op.top_p, num_return_sequences=op.k,
                  batch_size=op.batch_size)
    texts = [tok.decode(y, skip_special_tokens=True) for y in ys]
    k = op.k
    prompts = [p.prompt for _, p in chosen for _ in range(k)]
    metas = [p.meta for _, p in chosen for _ in range(k)]
    scores, correct = _judge(data, op.judge, prompts, texts, metas)
    lines = []
    for n, (i, p) in enumerate(chosen):
        sl = slice(n * k, (n + 1) * k)
        lines.append(json.dumps({"i": i, "prompt": p.prompt, "answer": p.meta.get("answer"),
                                 "responses": texts[sl], "scores": [round(float(s), 6) for s in scores[sl]],
                                 "correct": None if correct is None else correct[sl]}, ensure_ascii=False))
    atomic_write_text(folder / SAMPLES_FILE, "\n".join(lines) + "\n")
    records = [json.loads(line) for line in lines]
    info = {"wall_s": round(time.time() - t0, 3), "prompts": len(records), "samples": len(texts), "k": k,
            "judge": op.judge if op.judge == "oracle" else Path(op.judge).name,
            "mean_score": _mean([float(s) for s in scores]),
            "share_correct": None if correct is None else _mean([float(c) for c in correct]),
            "distinct_per_prompt": _mean([len(set(r["responses"])) for r in records])}
    for name, (_, stats) in (("best_vs_worst", form_pairs(records)), ("best_of_k", best_of_k(records))):
        info[f"preview/{name}"] = stats
    atomic_write_json(folder / STAGE_FILE, info)
    return info
