"""The metric registry: every ``metrics.json`` key the harness writes or reports, in one place.

A metric is a registered :class:`Metric` carrying its key, display name, direction (higher or
lower is better, or neither), how the cell value is aggregated from evaluation items, its
display scale and unit, its family, and the key of its item-level standard error. Evaluation
(:mod:`harness.evaluate`) writes values under these keys with :func:`record_item_mean`; the
report (:mod:`harness.report`) reads names, directions, scales, formats and standard errors from
here. Adding a metric is one :func:`register` call (like lm-eval's metric registry, where a
metric carries its aggregation and ``higher_is_better``). Torch-free: the report imports it.

lm-eval results (``lm_eval/<task>/<metric>``, written by :mod:`harness.evaluate.lmeval`) are
not listed one by one: :func:`get` builds their entry from the key (higher is better, shown in
percent, standard error under ``<key>_stderr`` as lm-eval writes it).

Variance sources, as the report names them:

* **training seed**: every metric; the seed sets data order, initialization of sampling and
  the sampling seed of generations, so a seed-level interval includes them;
* **SFT seed**: included only when the suite trains one SFT checkpoint per seed
  (``sft.per_seed: true``); otherwise every seed of a (model, data set) shares one checkpoint;
* **evaluation items**: a metric that averages items (held-out pairs, prompts, benchmark
  questions) has an item-level standard error, ``sd(items) / sqrt(n_items)`` (ddof 1, as
  lm-eval's ``mean_stderr`` and alpaca-eval's win-rate SEM). The items are the same for every
  seed, so a seed-level interval does not include their sampling; the report shows this
  standard error beside it.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Metric", "register", "get", "known", "all_metrics", "by_family", "record_item_mean",
           "item_mean", "binary_stderr", "reward_family", "BENCHMARK_COLUMNS", "HEADLINE_METRIC",
           "AVG_KEY", "SOURCE_TRAINING_SEED", "SOURCE_SFT_SEED", "SOURCE_ITEMS"]

SOURCE_TRAINING_SEED = "training seed"
SOURCE_SFT_SEED = "SFT seed"
SOURCE_ITEMS = "evaluation items"
AVG_KEY = "avg/lm_eval"


@dataclass(frozen=True)
class Metric:
    """One ``metrics.json`` key and how to read it.

    ``direction``: +1 higher is better, -1 lower is better, 0 no better (costs, diagnostics).
    ``scale``: shown value = stored value x scale (100 for fractions shown in percent).
    ``aggregation``: how the cell's value is made (``"mean"`` of evaluation items, ``"fit"`` of
    a model over them, ``"total"`` measured once). ``items``: what the items are (None when the
    value is not an item average). ``stderr_key``: where its item-level standard error is
    stored (stored units), None when it has none; for 0/1 items ``n_key`` names the item count,
    from which :func:`binary_stderr` recovers it exactly for results written before
    ``stderr_key`` existed. ``sampled``: the value depends on sampled
    generations. ``comparable``: ``"all"``, or ``"reward_family"`` for a value that means
    something different per method family (each method's own implicit reward)."""

    key: str
    display: str
    family: str
    direction: int = 0
    fmt: str = ".4g"
    scale: float = 1.0
    unit: str = ""
    aggregation: str = "mean"
    items: str | None = None
    stderr_key: str | None = None
    sampled: bool = False
    comparable: str = "all"
    help: str = ""
    n_key: str | None = None  # key of the item count, for 0/1 items (see binary_stderr)

    def sources(self, per_seed_sft: bool) -> list[str]:
        """The variance sources a seed-level interval of this metric includes."""
        return [SOURCE_TRAINING_SEED] + ([SOURCE_SFT_SEED] if per_seed_sft else [])


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric``; a key registered twice with a different definition is an error."""
    old = _REGISTRY.get(metric.key)
    if old is not None and old != metric:
        raise ValueError(f"metric {metric.key!r} is already registered with another definition")
    _REGISTRY[metric.key] = metric
    return metric


# --------------------------------------------------------------------- lm-eval benchmarks
# lm-eval task name (as the suite lists it) -> the paper's Table 1 column
BENCHMARK_COLUMNS = {"mmlu": "MMLU", "gsm8k": "GSM8K", "gpqa": "GPQA", "gpqa_diamond": "GPQA",
                     "humaneval": "HumanEval", "truthfulqa": "TruthfulQA", "ifeval": "IFEval"}
# the headline metric of each standard benchmark, as harness.evaluate.lmeval.STANDARD_BENCHMARKS
# (a test keeps the two equal; this copy lets the report stay torch-free)
HEADLINE_METRIC = {"mmlu": "acc", "gsm8k": "exact_match_strict_match", "gpqa": "acc_norm",
                   "gpqa_diamond": "acc_norm", "humaneval": "pass_at_k", "truthfulqa": "acc",
                   "ifeval": "prompt_level_strict_acc"}


def _lm_eval_metric(key: str) -> Metric | None:
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "lm_eval":
        return None
    task, name = parts[1], parts[2]
    if name.startswith("_") or name.endswith("_stderr"):
        return Metric(key, key, "lm_eval_meta")
    return Metric(key, BENCHMARK_COLUMNS.get(task, task), "lm_eval", +1, ".1f", 100.0, "%",
                  "mean", "benchmark questions", key + "_stderr",
                  help=f"lm-eval task {task}, metric {name}")


def get(key: str) -> Metric:
    """The registered metric of ``key`` (lm-eval keys built from the key itself). Unknown keys
    raise KeyError with close names."""
    if key in _REGISTRY:
        return _REGISTRY[key]
    m = _lm_eval_metric(key)
    if m is not None:
        return m
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown metric {key!r}.{hint}")


def known(key: str) -> bool:
    return key in _REGISTRY or _lm_eval_metric(key) is not None


def all_metrics() -> list[Metric]:
    return list(_REGISTRY.values())


def by_family(family: str) -> list[str]:
    """Keys of one family, in registration order."""
    return [m.key for m in _REGISTRY.values() if m.family == family]


# ------------------------------------------------------------------- item-level statistics
def item_mean(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, standard error, n) of per-item values, NaN items dropped. The standard error is
    ``sd(ddof=1) / sqrt(n)`` (lm-eval's ``mean_stderr``); NaN with fewer than 2 items."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan, n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n), n


def binary_stderr(p: float, n: float) -> float:
    """The item SE of a share ``p`` of ``n`` 0/1 items: ``sd(ddof=1) / sqrt(n)`` equals
    ``sqrt(p (1 - p) / (n - 1))`` for 0/1 values (NaN for n < 2)."""
    if not (math.isfinite(p) and math.isfinite(n)) or n < 2:
        return math.nan
    return math.sqrt(max(p * (1 - p), 0.0) / (n - 1))


def record_item_mean(out: dict, key: str, values: Sequence[float]) -> float:
    """Write the mean of per-item ``values`` under ``key`` and its standard error under the
    metric's ``stderr_key`` into ``out`` (a metrics dict); return the mean."""
    metric = get(key)
    mean, se, _ = item_mean(values)
    out[key] = mean
    if metric.stderr_key:
        out[metric.stderr_key] = se
    return mean


# -------------------------------------------------------------------- reward families
# Each method's implicit reward (LossOutput.chosen_rewards) as its module defines it. Reward
# accuracy compares like with like only inside one family.
_REWARD_FAMILIES = {
    "dpo": "β·log-ratio vs reference", "ipo": "β·log-ratio vs reference",
    "tdpo1": "β·(log-ratio + sequential KL)", "tdpo2": "β·(log-ratio + sequential KL)",
    "tidpo": "β·weighted log-ratio", "tidpo-official": "β·(weighted log-ratio + sequential KL)",
    "simpo": "β·mean log-prob (length-normalised, no reference)",
    "sft-continued": "mean log-prob (no reference)", "rft": "mean log-prob (no reference)",
}


def reward_family(method: str) -> str:
    """The family of a method's implicit reward; an unknown method is a family of its own."""
    return _REWARD_FAMILIES.get(method, f"own reward of {method}")


# ------------------------------------------------------------------------- the metrics
def _r(key, display, family, direction=0, fmt=".4g", **kw) -> Metric:
    return register(Metric(key, display, family, direction, fmt, **kw))


_PCT = {"scale": 100.0, "unit": "%", "fmt": ".1f"}
_pairs = "held-out pairs"
_prompts = "generation prompts"
_r("task/accuracy", "Task acc.", "accuracy", +1, items=_prompts,
   stderr_key="task/accuracy_stderr", n_key="task/n", help="exact match of greedy answers (embedded task oracle)", **_PCT)
_r("task/accuracy_sft", "Task acc. (SFT)", "task", 0, items=_prompts,
   stderr_key="task/accuracy_sft_stderr", n_key="task/n", help="the SFT policy's task accuracy", **_PCT)
_r("task/score", "Graded score", "task", +1, items=_prompts, stderr_key="task/score_stderr",
   help="graded oracle of greedy answers (partial credit: digits for addition, edit distance for reverse; "
        "1 = exact match)", **_PCT)
_r("task/score_sft", "Graded score (SFT)", "task", 0, items=_prompts, stderr_key="task/score_sft_stderr",
   help="the SFT policy's graded score", **_PCT)
_r("task/reward", "Judge reward", "task", +1, ".3f", items=_prompts,
   stderr_key="task/reward_stderr", help="reward-model score of greedy answers")
_r("task/reward_sft", "Judge reward (SFT)", "task", 0, ".3f", items=_prompts,
   stderr_key="task/reward_sft_stderr")
_r("pref/accuracy", "Pref. acc.", "accuracy", +1, items=_pairs,
   stderr_key="pref/accuracy_stderr", n_key="pref/n",
   help="summed log-ratio prefers the chosen response", **_PCT)
_r("pref/accuracy_norm", "Pref. acc. (len-norm.)", "accuracy", +1, items=_pairs,
   stderr_key="pref/accuracy_norm_stderr", n_key="pref/n",
   help="per-token log-ratio prefers chosen", **_PCT)
_r("winrate/vs_sft", "Win rate vs SFT", "accuracy", +1, ".1f", unit="%", items=_prompts,
   stderr_key="winrate/standard_error", help="alpaca-eval win rate against the SFT policy")
_r("winrate/lc_vs_sft", "LC win rate vs SFT", "accuracy", +1, ".1f", unit="%", aggregation="fit",
   items=_prompts, help="length-controlled win rate (GLM fit over prompts)")
_r("pref/reward_accuracy", "Reward acc.", "reward", +1, items=_pairs,
   stderr_key="pref/reward_accuracy_stderr", n_key="pref/n", comparable="reward_family",
   help="the method's own implicit reward prefers chosen", **_PCT)
_r("diversity/self_bleu", "Self-BLEU", "diversity", -1, ".1f", unit="%", items="diversity prompts",
   stderr_key="diversity/self_bleu_stderr", sampled=True)
_r("diversity/distinct_2", "Distinct-2", "diversity", +1, ".3f", items="diversity prompts",
   stderr_key="diversity/distinct_2_stderr", sampled=True)
_r("diversity/distinct_4", "Distinct-4", "diversity", +1, ".3f", items="diversity prompts",
   stderr_key="diversity/distinct_4_stderr", sampled=True)
_r("diversity/entropy", "Entropy (nats)", "diversity", +1, ".3f", unit="nats",
   items="diversity prompts", stderr_key="diversity/entropy_stderr", sampled=True)
_r("diversity/semantic", "Semantic div.", "diversity", +1, ".3f", items="diversity prompts",
   sampled=True)
for _k, _d, _f in (("train_wall_s", "Train time (s)", ".1f"), ("eval_wall_s", "Eval time (s)", ".1f"),
                   ("tokens_per_s", "Tokens/s", ".0f"), ("peak_mem_mb", "Peak memory (MB)", ".0f"),
                   ("flops", "FLOPs", ".3g"), ("accelerator_hours", "Accelerator-hours", ".4f")):
    _r(f"cost/{_k}", _d, "cost", 0, _f, aggregation="total")
for _side in ("chosen", "rejected"):
    _r(f"displacement/{_side}_logp_policy", f"log p({_side})", "displacement", 0, ".2f",
       items=_pairs, stderr_key=f"displacement/{_side}_logp_policy_stderr")
    _r(f"displacement/{_side}_delta", f"Δ log p({_side})", "displacement", 0, ".2f",
       items=_pairs, stderr_key=f"displacement/{_side}_delta_stderr")
    _r(f"displacement/{_side}_logp_ref", f"log p_ref({_side})", "displacement_ref", 0, ".2f",
       items=_pairs)
_r("kl/policy_ref", "KL(policy || ref)", "displacement", 0, ".3f", unit="nats",
   items="sampled responses", stderr_key="kl/policy_ref_stderr", sampled=True,
   help="sum over the positions of a policy sample of the full-vocabulary KL (>= 0)")
_r("pref/logratio_margin", "Log-ratio margin", "displacement", +1, ".2f", unit="nats", items=_pairs,
   stderr_key="pref/logratio_margin_stderr",
   help="held-out summed log-ratio margin, chosen minus rejected (DPO's reward margin at beta = 1)")
# on-policy training data of a cell (harness.data.onpolicy): what its pairs are made of
for _k, _d, _f, _kw in (("prompts", "Sampled prompts", ".0f", {}), ("examples", "Training examples", ".0f", {}),
                        ("ties_dropped", "Prompts dropped (ties)", ".0f", {}),
                        ("below_min_dropped", "Prompts dropped (best below min.)", ".0f", {}),
                        ("chosen_correct", "Chosen correct", ".1f", {"scale": 100.0, "unit": "%"}),
                        ("rejected_correct", "Rejected correct", ".1f", {"scale": 100.0, "unit": "%"}),
                        ("mean_margin", "Mean score margin", ".3f", {}),
                        ("sample_score", "Mean sample score", ".3f", {})):
    _r(f"onpolicy/{_k}", _d, "onpolicy", 0, _f, aggregation="total", **_kw)
register(Metric(AVG_KEY, "Avg", "lm_eval_avg", +1, ".1f", 1.0, "%", aggregation="mean of benchmarks"))
