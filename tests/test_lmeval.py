"""lm-eval integration: local tasks, metric flattening, standard benchmarks failing fast offline.

The metric tests use a scripted ``lm_eval.api.model.LM`` whose answers are fixed by hand, so
every expected number is counted from the tables below, not computed by the code under test.
"""
from __future__ import annotations

import math
import random
import time

import pytest
import torch

from harness.errors import UserError
from harness.evaluate import lmeval
from harness.evaluate.lmeval import (STANDARD_BENCHMARKS, check_available, known_task_names, run_lm_eval,
                                     smoke_standin, write_local_tasks)

torch.set_num_threads(1)

# Generative docs and what the scripted model answers. Correct: "1+1=" (with surrounding
# whitespace, which the task ignores) and "3+3=". Wrong: "2+2=", "4+4=". exact_match = 2/4.
GEN = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"},
       {"prompt": "3+3=", "answer": "6"}, {"prompt": "4+4=", "answer": "8"}]
GEN_REPLIES = {"1+1=": " 2 ", "2+2=": "5", "3+3=": "6", "4+4=": "88"}

# Multiple-choice docs and the scripted log-likelihood of each choice.
#   q1: a:-2, bbbb:-4, gold 1. acc picks a (wrong); per char -2 vs -1 -> bbbb (right).
#   q2: x:-3, y:-2, z:-1, gold 2. both right.
#   q3: cc:-1, d:-0.8, gold 0. acc picks d (wrong); per char -0.5 vs -0.8 -> cc (right).
#   q4: e:-1, f:-2, gold 0. both right.
# acc = 2/4 = 0.5, acc_norm = 4/4 = 1.0.
MC = [{"question": "q1", "choices": ["a", "bbbb"], "gold": 1},
      {"question": "q2", "choices": ["x", "y", "z"], "gold": 2},
      {"question": "q3", "choices": ["cc", "d"], "gold": 0},
      {"question": "q4", "choices": ["e", "f"], "gold": 0}]
LL = {("q1", "a"): -2.0, ("q1", "bbbb"): -4.0, ("q2", "x"): -3.0, ("q2", "y"): -2.0, ("q2", "z"): -1.0,
      ("q3", "cc"): -1.0, ("q3", "d"): -0.8, ("q4", "e"): -1.0, ("q4", "f"): -2.0}

# Standard error of a mean of 0/1 scores with two ones out of four, by hand:
# sample variance = 4 * 0.5**2 / 3 = 1/3; stderr = sqrt(1/3) / sqrt(4).
HALF_STDERR = math.sqrt(1 / 3) / 2


def _scripted_lm():
    from lm_eval.api.model import LM

    class Scripted(LM):
        def __init__(self):
            super().__init__()
            self.gen_calls: list[tuple[str, dict]] = []
            self.ll_calls: list[tuple[str, str]] = []

        def loglikelihood(self, requests):
            out = []
            for r in requests:
                ctx, cont = r.args
                self.ll_calls.append((ctx, cont))
                out.append((LL[(ctx, cont)], False))
            return out

        def loglikelihood_rolling(self, requests):  # not used by these tasks
            raise AssertionError("unexpected rolling request")

        def generate_until(self, requests):
            out = []
            for r in requests:
                ctx, kw = r.args
                self.gen_calls.append((ctx, kw))
                out.append(GEN_REPLIES[ctx])
            return out

    return Scripted()


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval_tasks")
    names = write_local_tasks(d, GEN, MC)
    assert names == ["embedded_gen", "embedded_mc"]
    return d


def test_written_tasks_use_absolute_data_paths(local_dir, monkeypatch, tmp_path):
    import yaml

    cfg = yaml.safe_load((local_dir / "embedded_gen.yaml").read_text())
    data = cfg["dataset_kwargs"]["data_files"]["test"]
    assert data.startswith("/") and data.endswith("embedded_gen.jsonl")
    assert cfg["generation_kwargs"]["until"] == ["\n"]
    # A relative out_dir still yields absolute data paths (lm-eval resolves relative ones
    # against the working directory, which may change).
    monkeypatch.chdir(tmp_path)
    write_local_tasks("rel", GEN[:1], [], prefix="p")
    cfg = yaml.safe_load((tmp_path / "rel" / "p_gen.yaml").read_text())
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "rel" / "p_gen.jsonl")
    assert not (tmp_path / "rel" / "p_mc.yaml").exists()


def test_scripted_model_metrics_counted_by_hand(local_dir):
    lm = _scripted_lm()
    m = run_lm_eval(lm, None, ["embedded_gen", "embedded_mc"], local_dir, limit=None, batch_size=2, device="cpu")
    assert m["lm_eval/embedded_gen/exact_match"] == pytest.approx(0.5)
    assert m["lm_eval/embedded_gen/exact_match_stderr"] == pytest.approx(HALF_STDERR)
    assert m["lm_eval/embedded_mc/acc"] == pytest.approx(0.5)
    assert m["lm_eval/embedded_mc/acc_stderr"] == pytest.approx(HALF_STDERR)
    assert m["lm_eval/embedded_mc/acc_norm"] == pytest.approx(1.0)
    assert m["lm_eval/embedded_mc/acc_norm_stderr"] == pytest.approx(0.0)
    for t in ("embedded_gen", "embedded_mc"):
        assert m[f"lm_eval/{t}/_version"] == 1.0
        assert m[f"lm_eval/{t}/_num_fewshot"] == 0.0
        assert m[f"lm_eval/{t}/_n_samples"] == 4.0
    assert all(isinstance(v, float) for v in m.values())
    assert not any("," in k for k in m)
    # What the model was asked: the bare prompt, greedy, the configured stop sequence, and
    # each choice appended with no delimiter (the embedded prompts end in "=").
    ctxs = sorted(c for c, _ in lm.gen_calls)
    assert ctxs == ["1+1=", "2+2=", "3+3=", "4+4="]
    kw = lm.gen_calls[0][1]
    assert kw["until"] == ["\n"] and kw["do_sample"] is False and kw["max_gen_toks"] == 32
    assert sorted(lm.ll_calls) == sorted(LL)


def test_whitespace_is_significant_when_not_stripped(tmp_path):
    write_local_tasks(tmp_path, GEN, [], strip_whitespace=False)
    m = run_lm_eval(_scripted_lm(), None, ["embedded_gen"], tmp_path, limit=None, batch_size=1, device="cpu")
    assert m["lm_eval/embedded_gen/exact_match"] == pytest.approx(0.25)  # only "3+3=" -> "6"


def test_limit_caps_examples(local_dir):
    m = run_lm_eval(_scripted_lm(), None, ["embedded_mc"], local_dir, limit=2, batch_size=1, device="cpu")
    # first two docs: q1 acc 0 / norm 1, q2 acc 1 / norm 1
    assert m["lm_eval/embedded_mc/_n_samples"] == 2.0
    assert m["lm_eval/embedded_mc/acc"] == pytest.approx(0.5)
    assert m["lm_eval/embedded_mc/acc_norm"] == pytest.approx(1.0)
    assert "lm_eval/embedded_gen/exact_match" not in m


def test_flatten_multiple_filters_and_na_stderr():
    res = {"results": {"gsm8k": {"alias": "gsm8k",
                                 "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                                 "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": "N/A"}},
           "versions": {"gsm8k": 3.0}, "n-shot": {"gsm8k": 5}, "n-samples": {"gsm8k": {"original": 9, "effective": 8}}}
    assert lmeval.flatten_results(res, "gsm8k") == {
        "lm_eval/gsm8k/exact_match_strict_match": 0.25,
        "lm_eval/gsm8k/exact_match_strict_match_stderr": 0.1,
        "lm_eval/gsm8k/exact_match_flexible_extract": 0.5,
        "lm_eval/gsm8k/_version": 3.0, "lm_eval/gsm8k/_num_fewshot": 5.0, "lm_eval/gsm8k/_n_samples": 8.0,
    }


def test_hflm_tiny_random_model_end_to_end(local_dir):
    from transformers import AutoModelForCausalLM, ByT5Tokenizer, LlamaConfig

    tok = ByT5Tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    model.train()
    random.seed(123)
    torch.manual_seed(123)
    expect_py, expect_torch = random.random(), torch.rand(1)
    random.seed(123)
    torch.manual_seed(123)
    m = run_lm_eval(model, tok, ["embedded_gen", "embedded_mc"], local_dir, limit=None, batch_size=4,
                    device="cpu", seed=7)
    for k in ("embedded_gen/exact_match", "embedded_mc/acc", "embedded_mc/acc_norm"):
        v = m[f"lm_eval/{k}"]
        assert math.isfinite(v) and 0.0 <= v <= 1.0, (k, v)
    assert m["lm_eval/embedded_gen/_n_samples"] == 4.0
    # The caller's model mode and random streams are as they were (lm-eval seeds globally).
    assert model.training
    assert random.random() == expect_py and torch.equal(torch.rand(1), expect_torch)


def test_standard_benchmark_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        # object() as the model: any model work before the check would crash differently.
        run_lm_eval(object(), None, ["gsm8k", "mmlu"], None, limit=2, batch_size=1, device="cpu")
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert "'gsm8k'" in msg and "'mmlu'" in msg and "openai/gsm8k" in msg
    assert "connected machine" in msg and "HF_DATASETS_CACHE" in msg and "--smoke" in msg
    assert "'embedded_gen'" in msg and "'embedded_mc'" in msg  # the stand-ins named


def test_local_copy_in_cache_passes_the_offline_check(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "ds" / "openai___gsm8k").mkdir(parents=True)
    (tmp_path / "hub" / "datasets--truthfulqa--truthful_qa").mkdir(parents=True)
    check_available(["gsm8k", "truthfulqa"])
    with pytest.raises(UserError, match="cais/mmlu"):
        check_available(["gsm8k", "mmlu"])


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    t0 = time.monotonic()
    with pytest.raises(UserError, match="unreachable") as e:
        check_available(["truthfulqa"])
    assert time.monotonic() - t0 < 5
    assert "truthfulqa/truthful_qa" in str(e.value)


def test_humaneval_needs_explicit_opt_in(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    (tmp_path / "ds" / "openai___openai_humaneval").mkdir(parents=True)
    with pytest.raises(UserError, match="allow_code_execution"):
        check_available(["humaneval"])
    check_available(["humaneval"], allow_code_execution=True)


def test_unknown_names_suggest_close_ones(local_dir, tmp_path):
    with pytest.raises(UserError) as e:
        check_available(["embeded_gen"], include_path=local_dir)
    assert "did you mean" in str(e.value).lower() and "'embedded_gen'" in str(e.value)
    with pytest.raises(UserError, match="gsm8k"):
        check_available(["gsm8kk"])
    # Names defined by the include path are known (and suggested).
    write_local_tasks(tmp_path, GEN[:1], [], prefix="mine")
    assert "mine_gen" in known_task_names(tmp_path)
    with pytest.raises(UserError, match="mine_gen"):
        check_available(["mine_gne"], include_path=tmp_path)
    # Embedded tasks without the folder they were written to.
    with pytest.raises(UserError, match="include_path"):
        check_available(["embedded_mc"])


def test_bad_rows_are_named(tmp_path):
    with pytest.raises(UserError, match="multiple-choice example 1"):
        write_local_tasks(tmp_path, [], [MC[0], {"question": "q", "choices": ["a", "b"], "gold": 2}])
    with pytest.raises(UserError, match="generative example 0"):
        write_local_tasks(tmp_path, [{"prompt": "x"}], [])


def test_smoke_standins():
    assert {n: smoke_standin(n) for n in ("mmlu", "gsm8k", "gpqa", "humaneval", "truthfulqa", "ifeval")} == {
        "mmlu": "embedded_mc", "gsm8k": "embedded_gen", "gpqa": "embedded_mc",
        "humaneval": "embedded_gen", "truthfulqa": "embedded_mc", "ifeval": "embedded_gen"}
    assert smoke_standin("embedded_mc") == "embedded_mc"
    with pytest.raises(UserError):
        smoke_standin("nope")


# The installed lm-eval's own YAML files, read through its index (no data loaded).
INSTALLED = {  # friendly name -> (task, dataset_path, dataset_name, num_fewshot in the YAML)
    "gsm8k": ("gsm8k", "openai/gsm8k", "main", 5),
    "gpqa": ("gpqa_main_zeroshot", "Idavidrein/gpqa", "gpqa_main", 0),
    "truthfulqa": ("truthfulqa_mc2", "truthfulqa/truthful_qa", "multiple_choice", 0),
    "humaneval": ("humaneval", "openai/openai_humaneval", None, 0),
    "ifeval": ("ifeval", "google/IFEval", None, 0),
}


def test_benchmark_table_matches_installed_lm_eval():
    for name, b in STANDARD_BENCHMARKS.items():
        index = lmeval.task_manager([lmeval.lm_eval_tasks_dir() / b.folder])._index
        assert b.task in index, name
        cfg = index[b.task].cfg
        if name == "mmlu":  # a group of 57 subject tasks
            assert index["mmlu_anatomy"].cfg["dataset_path"] in b.datasets
            continue
        assert cfg["dataset_path"] in b.datasets, name
        if name in INSTALLED:
            task, path, ds_name, shots = INSTALLED[name]
            assert (b.task, cfg["dataset_path"], cfg.get("dataset_name"), cfg.get("num_fewshot")) == \
                (task, path, ds_name, shots)
    assert STANDARD_BENCHMARKS["mmlu"]["num_fewshot"] == 5 and STANDARD_BENCHMARKS["gsm8k"].num_fewshot == 5
