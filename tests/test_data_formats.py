"""Loaders for real preference data (harness.data.formats): the five row formats, file
reading errors, row validation, and the deterministic held-out split / label noise.

Expected prompts and responses are written out by hand from the fixture files in
tests/fixtures/data/ (each 2-7 rows)."""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from harness.data.realdata import LoadedData, load_pairs
from harness.data.pairs import PreferencePair
from harness.errors import DataError, UserError
from harness.schema import DatasetSpec

FIX = Path(__file__).parent / "fixtures" / "data"
ROOT = Path(__file__).resolve().parents[1]


def spec(**kw) -> DatasetSpec:
    kw.setdefault("name", "t")
    kw.setdefault("heldout_size", 1)
    return DatasetSpec(**kw)


def by_row(data: LoadedData) -> list[PreferencePair]:
    return sorted(data.train + data.heldout, key=lambda p: p.meta["row"])


def triples(pairs):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


def error_text(excinfo) -> str:
    return "\n".join(excinfo.value.problems)


# ============================================================== the five formats
def test_pairs_jsonl_auto_detected_blank_lines_skipped():
    data = load_pairs(spec(path="pairs.jsonl"), FIX)
    assert data.stats["format"] == "pairs" and data.stats["format_detected"] is True
    assert data.stats["file_format"] == "jsonl"
    assert data.stats["rows_read"] == 4 and data.stats["dropped"] == {} and data.stats["dropped_total"] == 0
    pairs = by_row(data)
    assert triples(pairs) == [
        ("What is 2+2?", "4", "5"),
        ("Name a primary color.", "Red.", "Purple."),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
         "Paris.", "Lyon."),
        ("Spell cat.", "c-a-t", "k-a-t"),
    ]
    # rows count data rows; lines count physical lines (line 3 is blank)
    assert [p.meta["row"] for p in pairs] == [1, 2, 3, 4]
    assert [p.meta["line"] for p in pairs] == [1, 2, 4, 5]
    assert all(p.meta["source"] == str(FIX / "pairs.jsonl") for p in pairs)
    assert len(data.heldout) == 1 and len(data.train) == 3


def test_conversational_explicit_and_implicit_prompt():
    data = load_pairs(spec(path="conversational.json"), FIX)
    assert data.stats["format"] == "conversational" and data.stats["file_format"] == "json"
    pairs = by_row(data)
    assert triples(pairs) == [
        ("Hi", "Hello!", "Go away."),  # one user turn, no system -> plain string
        ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
          {"role": "assistant", "content": "4"}, {"role": "user", "content": "times 3?"}], "12", "7"),
        ("Sky color?", "Blue.", "Green."),  # implicit prompt: the shared prefix
    ]
    # the JSON list is written one row per line after the opening bracket
    assert [p.meta["line"] for p in pairs] == [2, 3, 4]


def test_hh_rlhf_split_at_last_assistant_turn():
    data = load_pairs(spec(path="hh_rlhf.jsonl"), FIX)
    assert data.stats["format"] == "hh-rlhf"
    assert triples(by_row(data)) == [
        ("How do I boil an egg?", "Put it in boiling water for 9 minutes.", "Microwave it."),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
          {"role": "user", "content": "Tell me a fact."}], "Honey never spoils.", "I won't."),
        # exactly one leading space is removed; the response's own paragraphs are kept
        ("List two steps.", " Step 1.\n\nStep 2.", "No."),
    ]


def test_ultrafeedback_last_assistant_message_and_scores():
    data = load_pairs(spec(path="ultrafeedback.jsonl"), FIX)
    assert data.stats["format"] == "ultrafeedback"
    pairs = by_row(data)
    assert triples(pairs) == [
        ("Write a haiku about rain.", "Soft rain on the roof / ...", "Rain is wet."),
        ("Is 7 prime?", "Yes, 7 is prime.", "No."),
    ]
    assert (pairs[0].meta["score_chosen"], pairs[0].meta["score_rejected"]) == (8.5, 4.0)
    assert (pairs[1].meta["score_chosen"], pairs[1].meta["score_rejected"]) == (10.0, 2.0)


def test_sharegpt_system_and_multi_turn():
    data = load_pairs(spec(path="sharegpt.json"), FIX)
    assert data.stats["format"] == "sharegpt"
    assert triples(by_row(data)) == [
        ("Suggest a name for a cat.", "Whiskers.", "Dog."),
        ([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Greet me."}],
         "Ahoy, matey!", "Hello."),
        ([{"role": "user", "content": "Pick a number."}, {"role": "assistant", "content": "7"},
          {"role": "user", "content": "Double it."}], "14", "15"),
    ]


def test_json_with_data_key():
    data = load_pairs(spec(path="pairs_data_key.json"), FIX)
    assert triples(by_row(data)) == [("Opposite of hot?", "Cold.", "Warm."), ("Opposite of up?", "Down.", "Left.")]


def test_explicit_format_is_used_not_detected():
    data = load_pairs(spec(path="sharegpt.json", format="sharegpt"), FIX)
    assert data.stats["format"] == "sharegpt" and data.stats["format_detected"] is False
    # the same file read as another format: every row is bad, each reported
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="sharegpt.json", format="pairs"), FIX)
    text = error_text(e)
    assert "3 bad row(s)" in text and "field 'prompt': missing [missing_field]" in text


def test_parquet_nested_conversational(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = [
        {"chosen": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "bad"}]},
        {"chosen": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "fine"}],
         "rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "poor"}]},
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    data = load_pairs(spec(path="d.parquet"), tmp_path)
    assert data.stats["file_format"] == "parquet" and data.stats["format"] == "conversational"
    assert triples(by_row(data)) == [("Q1", "good", "bad"), ("Q2", "fine", "poor")]


def test_parquet_flat_pairs_and_bad_row_numbers(tmp_path):
    pd = pytest.importorskip("pandas")
    pd.DataFrame({"prompt": ["a", "b", "c"], "chosen": ["x", "y", "z"], "rejected": ["x2", "y", None]}).to_parquet(
        tmp_path / "p.parquet")
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="p.parquet"), tmp_path)
    text = error_text(e)
    assert "row 2: field 'chosen/rejected'" in text and "[identical_responses]" in text
    assert "row 3: field 'rejected': is null [missing_field]" in text


# ================================================================= file problems
def test_invalid_utf8_names_line_and_byte_offset(tmp_path):
    good = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    bad = b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n'
    (tmp_path / "latin1.jsonl").write_bytes(good + bad)
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="latin1.jsonl"), tmp_path)
    text = error_text(e)
    # the bad byte: after the 48-byte first line, '{"prompt": "caf' is 15 bytes -> offset 63, column 16
    assert len(good) == 48
    assert "latin1.jsonl" in text and "line 2, column 16 (byte offset 63)" in text and "0xe9" in text


def test_json_syntax_error_names_line(tmp_path):
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="syntax_error.json"), FIX)
    text = error_text(e)
    # the missing comma between "e" and "rejected" is on line 3
    assert "syntax_error.json: line 3" in text and "invalid JSON" in text


def test_jsonl_syntax_error_names_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a",\n')
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="x.jsonl"), tmp_path)
    assert "x.jsonl: line 3" in error_text(e)


def test_json_extension_holding_json_lines_is_read(tmp_path):
    (tmp_path / "x.json").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                                     '{"prompt": "d", "chosen": "e", "rejected": "f"}\n')
    data = load_pairs(spec(path="x.json"), tmp_path)
    assert data.stats["file_format"] == "jsonl" and data.stats["rows_read"] == 2


@pytest.mark.parametrize("name,content", [("empty.jsonl", None), ("blank.jsonl", "\n\n  \n"), ("list.json", "[]")])
def test_empty_files(tmp_path, name, content):
    base = FIX if content is None else tmp_path
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as e:
        load_pairs(spec(path=name), base)
    text = error_text(e)
    assert name in text and ("empty" in text or "no rows" in text)


def test_unsupported_suffix_and_top_level_type(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        load_pairs(spec(path="d.csv"), tmp_path)
    (tmp_path / "d.json").write_text('{"rows": []}')
    with pytest.raises(DataError, match=r"expected a list of rows"):
        load_pairs(spec(path="d.json"), tmp_path)


def test_path_resolution_base_dir_then_cwd(tmp_path, monkeypatch):
    suite_dir, cwd = tmp_path / "suite", tmp_path / "cwd"
    suite_dir.mkdir(), cwd.mkdir()
    monkeypatch.chdir(cwd)
    row = '{"prompt": "%s", "chosen": "b", "rejected": "c"}\n{"prompt": "z", "chosen": "b", "rejected": "c"}\n'
    (cwd / "d.jsonl").write_text(row % "from cwd")
    assert load_pairs(spec(path="d.jsonl"), suite_dir).stats["source"] == str(cwd / "d.jsonl")
    (suite_dir / "d.jsonl").write_text(row % "from suite")
    data = load_pairs(spec(path="d.jsonl"), suite_dir)
    assert data.stats["source"] == str(suite_dir / "d.jsonl")
    assert "from suite" in [p.prompt for p in data.train + data.heldout]
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="missing.jsonl"), suite_dir)
    text = error_text(e)
    assert str(suite_dir / "missing.jsonl") in text and str(cwd / "missing.jsonl") in text


# ================================================================ format detection
def test_unknown_format_lists_accepted_formats():
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="unknown.jsonl"), FIX)
    text = error_text(e)
    for name in ("pairs", "conversational", "hh-rlhf", "ultrafeedback", "sharegpt"):
        assert f"{name}: {{" in text
    assert "['bad', 'good', 'question']" in text  # the keys the user's row has


def test_ambiguous_row_asks_for_format():
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="ambiguous.jsonl"), FIX)
    text = error_text(e)
    # a prompt plus whole HH dialogues as responses fits both pairs and hh-rlhf
    assert "line 1" in text and "(pairs, hh-rlhf)" in text and "set `format:`" in text
    assert load_pairs(spec(path="ambiguous.jsonl", format="hh-rlhf"), FIX).stats["rows_valid"] == 2


def test_detection_skips_leading_bad_rows(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n'
                                      '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                                      '{"prompt": "d", "chosen": "e", "rejected": "f"}\n')
    data = load_pairs(spec(path="d.jsonl", on_bad_rows="drop"), tmp_path)
    assert data.stats["format"] == "pairs" and data.stats["dropped"] == {"missing_field": 1}


# ==================================================================== bad rows
BAD_PAIRS_EXPECTED = [  # (line, field, reason), read off bad_pairs.jsonl
    (2, "(row)", "not_an_object"),
    (3, "rejected", "missing_field"),
    (4, "chosen", "missing_field"),
    (5, "chosen", "wrong_type"),
    (6, "prompt", "empty_prompt"),
    (7, "chosen", "empty_response"),
    (8, "rejected", "empty_response"),
    (9, "chosen/rejected", "identical_responses"),
    (10, "prompt", "format_mismatch"),
    (11, "prompt[0].content", "wrong_type"),
]


def test_bad_rows_error_reports_every_row_with_field_and_fix():
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="bad_pairs.jsonl"), FIX)
    problems = e.value.problems
    assert "10 bad row(s)" in problems[0]
    for line, fld, reason in BAD_PAIRS_EXPECTED:
        matching = [p for p in problems if f"bad_pairs.jsonl: line {line}: field '{fld}'" in p]
        assert len(matching) == 1 and matching[0].endswith(f"[{reason}]"), (line, fld, reason, problems)
    assert not any("line 1:" in p or "line 12:" in p for p in problems)
    assert "on_bad_rows: drop" in problems[-1]


def test_bad_rows_dropped_and_counted():
    data = load_pairs(spec(path="bad_pairs.jsonl", on_bad_rows="drop"), FIX)
    assert data.stats["dropped"] == {"not_an_object": 1, "missing_field": 2, "wrong_type": 2, "empty_prompt": 1,
                                     "empty_response": 2, "identical_responses": 1, "format_mismatch": 1}
    assert data.stats["rows_read"] == 12 and data.stats["rows_valid"] == 2 and data.stats["dropped_total"] == 10
    assert sorted(p.meta["line"] for p in data.train + data.heldout) == [1, 12]


@pytest.mark.parametrize("name,expected", [
    ("bad_hh_rlhf.jsonl", {"format_mismatch": 4, "empty_response": 1}),
    ("bad_sharegpt.json", {"format_mismatch": 4, "missing_field": 1, "wrong_type": 1}),
    ("bad_conversational.json", {"format_mismatch": 3, "wrong_type": 2}),
    ("bad_ultrafeedback.jsonl", {"format_mismatch": 1, "wrong_type": 1, "missing_field": 1}),
])
def test_bad_rows_of_each_format(name, expected):
    data = load_pairs(spec(path=name, on_bad_rows="drop"), FIX)
    assert data.stats["dropped"] == expected
    # only the first and the last row of each file are good
    n = data.stats["rows_read"]
    assert n == sum(expected.values()) + 2
    assert sorted(p.meta["row"] for p in data.train + data.heldout) == [1, n]
    with pytest.raises(DataError) as e:
        load_pairs(spec(path=name), FIX)
    assert f"{sum(expected.values())} bad row(s)" in e.value.problems[0]


@pytest.mark.parametrize("name,where,fld,words", [
    ("bad_hh_rlhf.jsonl", "line 2", "chosen/rejected", "dialogues before the last"),
    ("bad_hh_rlhf.jsonl", "line 3", "rejected", "no '\\n\\nAssistant:' turn"),
    ("bad_hh_rlhf.jsonl", "line 5", "chosen", "text before the first"),
    ("bad_hh_rlhf.jsonl", "line 6", "chosen", "must end with a user turn"),
    ("bad_sharegpt.json", "row 3 (line 4)", "conversations[1].from", "tool turns are not supported"),
    ("bad_sharegpt.json", "row 4 (line 5)", "chosen.value", "missing"),
    ("bad_sharegpt.json", "row 6 (line 7)", "conversations", "system message may only come first"),
    ("bad_sharegpt.json", "row 7 (line 8)", "rejected.from", "expected 'gpt'"),
    ("bad_conversational.json", "row 2 (line 3)", "chosen/rejected", "differ before the last assistant turn"),
    ("bad_conversational.json", "row 3 (line 4)", "chosen[0].role", "must be the assistant's response"),
    ("bad_conversational.json", "row 4 (line 5)", "prompt[0].role", "'robot'"),
    ("bad_conversational.json", "row 5 (line 6)", "prompt[0].content", "expected a string, got list"),
    ("bad_ultrafeedback.jsonl", "line 2", "prompt", "differs from the last user turn"),
    ("bad_ultrafeedback.jsonl", "line 3", "score_chosen", "expected a number"),
])
def test_bad_row_messages_name_row_and_field(name, where, fld, words):
    with pytest.raises(DataError) as e:
        load_pairs(spec(path=name), FIX)
    line = [p for p in e.value.problems if f"{name}: {where}: field '{fld}'" in p]
    assert len(line) == 1 and words in line[0], e.value.problems


def test_many_bad_rows_are_capped_with_a_count(tmp_path):
    lines = ['{"prompt": "ok", "chosen": "a", "rejected": "b"}']
    lines += ['{"prompt": "p%d", "chosen": "same", "rejected": "same"}' % i for i in range(25)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="d.jsonl"), tmp_path)
    problems = e.value.problems
    assert sum("[identical_responses]" in p for p in problems) == 20
    assert "... and 5 more bad rows" in problems
    assert "line 2:" in problems[1] and "line 21:" in problems[20]


def test_nothing_left_after_dropping(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "chosen": "x", "rejected": "x"}\n'
                                      '{"prompt": "b", "chosen": "", "rejected": "y"}\n')
    with pytest.raises(DataError) as e:
        load_pairs(spec(path="d.jsonl", format="pairs", on_bad_rows="drop"), tmp_path)
    text = error_text(e)
    assert "no usable pairs" in text and "read 2 rows, dropped 2" in text
    assert "identical_responses: 1" in text and "empty_response: 1" in text


# ===================================================== split, train_size, label noise
def write_rows(path: Path, prompts: list[str]) -> list[dict]:
    rows = [{"prompt": p, "chosen": f"good {i}", "rejected": f"bad {i}"} for i, p in enumerate(prompts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_heldout_is_last_rows_of_seeded_shuffle(tmp_path):
    write_rows(tmp_path / "fifty.jsonl", [f"q{i}" for i in range(50)])
    data = load_pairs(spec(path="fifty.jsonl", heldout_size=10), tmp_path)
    # the documented rule, written out independently: shuffle row indices with
    # Random(first 8 bytes of sha256("prefopt-split:" + file name)), held-out = the last 10
    seed = int.from_bytes(hashlib.sha256(b"prefopt-split:fifty.jsonl").digest()[:8], "big")
    order = list(range(1, 51))
    random.Random(seed).shuffle(order)
    assert [p.meta["row"] for p in data.heldout] == order[-10:]
    assert [p.meta["row"] for p in data.train] == order[:-10]
    assert data.stats["split_seed"] == seed and data.stats["heldout_from"] == "slice"
    # deterministic, and independent of where the file lives
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "fifty.jsonl").write_bytes((tmp_path / "fifty.jsonl").read_bytes())
    again = load_pairs(spec(path="fifty.jsonl", heldout_size=10), other)
    assert triples(again.heldout) == triples(data.heldout) and triples(again.train) == triples(data.train)


def test_heldout_never_shares_a_prompt_with_train(tmp_path):
    prompts = [f"q{i // 3}" for i in range(30)]  # 10 prompts, 3 pairs each
    write_rows(tmp_path / "groups.jsonl", prompts)
    data = load_pairs(spec(path="groups.jsonl", heldout_size=7), tmp_path)
    train_prompts = {p.prompt for p in data.train}
    held_prompts = {p.prompt for p in data.heldout}
    assert not train_prompts & held_prompts
    assert len(data.heldout) == 6  # two whole groups of 3 fit in 7
    assert len(data.train) == 24 and data.stats["prompts_with_several_pairs"] == 10


def test_heldout_size_taking_everything_is_an_error(tmp_path):
    write_rows(tmp_path / "d.jsonl", ["a", "b", "c"])
    with pytest.raises(DataError, match=r"3 usable pairs and heldout_size=3 takes them all"):
        load_pairs(spec(path="d.jsonl", heldout_size=3), tmp_path)


def test_train_size_caps_train_only(tmp_path):
    write_rows(tmp_path / "d.jsonl", [f"q{i}" for i in range(20)])
    full = load_pairs(spec(path="d.jsonl", heldout_size=5), tmp_path)
    capped = load_pairs(spec(path="d.jsonl", heldout_size=5, train_size=4), tmp_path)
    assert len(capped.train) == 4 and triples(capped.train) == triples(full.train[:4])
    assert triples(capped.heldout) == triples(full.heldout)
    assert capped.stats["train_before_cap"] == 15 and capped.stats["train"] == 4


def test_label_noise_flips_train_only_deterministically(tmp_path):
    rows = write_rows(tmp_path / "d.jsonl", [f"q{i}" for i in range(50)])
    data = load_pairs(spec(path="d.jsonl", heldout_size=10, label_noise=0.25), tmp_path)
    flipped = [p for p in data.train if p.meta["flipped"]]
    assert len(flipped) == 10 and data.stats["label_flipped"] == 10  # 0.25 * 40 train pairs
    for p in data.train:
        src = rows[p.meta["row"] - 1]
        expect = (src["rejected"], src["chosen"]) if p.meta["flipped"] else (src["chosen"], src["rejected"])
        assert (p.chosen, p.rejected) == expect
    for p in data.heldout:
        assert "flipped" not in p.meta and p.chosen == rows[p.meta["row"] - 1]["chosen"]
    again = load_pairs(spec(path="d.jsonl", heldout_size=10, label_noise=0.25), tmp_path)
    assert [p.meta["row"] for p in again.train if p.meta["flipped"]] == [p.meta["row"] for p in flipped]
    # the held-out slice does not move when label noise is added
    clean = load_pairs(spec(path="d.jsonl", heldout_size=10), tmp_path)
    assert triples(clean.heldout) == triples(data.heldout)
    # round half up: 0.1 * 15 = 1.5 -> 2
    capped = load_pairs(spec(path="d.jsonl", heldout_size=10, train_size=15, label_noise=0.1), tmp_path)
    assert capped.stats["label_flipped"] == 2


def test_heldout_split_with_a_local_file_is_refused():
    with pytest.raises(UserError, match="heldout_split"):
        load_pairs(spec(path="pairs.jsonl", heldout_split="test"), FIX)


def test_no_source_is_refused():
    with pytest.raises(UserError, match="no `path:` or `hub:`"):
        load_pairs(spec(task="copy"), FIX)


# ============================================================================= hub
def test_hub_with_heldout_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    hh = lambda q, a: f"\n\nHuman: {q}\n\nAssistant: {a}"  # noqa: E731
    splits = {
        "train": [{"chosen": hh(f"q{i}", "yes"), "rejected": hh(f"q{i}", "no")} for i in range(6)],
        "test": [{"chosen": hh(f"t{i}", "yes"), "rejected": hh(f"t{i}", "no")} for i in range(4)]
                + [{"chosen": hh("q0", "sure"), "rejected": hh("q0", "nah")}],
    }
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(splits[split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no reachability check
    import harness.data.hub as data_hub

    monkeypatch.setattr(data_hub, "_maybe_cached", lambda hub: True)  # "in the local cache"
    data = load_pairs(spec(hub="org/hh", heldout_split="test", heldout_size=10, format="hh-rlhf"))
    assert calls == [("org/hh", "train"), ("org/hh", "test")]
    assert sorted(p.prompt for p in data.train) == [f"q{i}" for i in range(6)]
    assert sorted(p.prompt for p in data.heldout) == ["q0", "t0", "t1", "t2", "t3"]
    assert {p.meta["split"] for p in data.heldout} == {"test"} and data.train[0].meta["source"] == "org/hh"
    assert data.stats["heldout_from"] == "split:test" and data.stats["heldout_prompts_in_train"] == 1
    assert data.stats["rows_read"] == 11


def test_offline_hub_data_not_in_either_cache_fails_without_importing_datasets(tmp_path, monkeypatch):
    from harness.data.hub import _maybe_cached

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert not _maybe_cached("Anthropic/hh-rlhf")
    (tmp_path / "ds" / "anthropic___hh-rlhf").mkdir(parents=True)  # datasets' own cache folder
    assert _maybe_cached("Anthropic/hh-rlhf") and not _maybe_cached("Anthropic/other")
    (tmp_path / "hub" / "datasets--org--x").mkdir(parents=True)  # huggingface_hub's cache folder
    assert _maybe_cached("org/x")


def test_hub_unreachable_fails_fast_with_a_fix(monkeypatch):
    """Without offline flags, an unreachable hub is found by a short check, not by
    datasets' ~25 s of retries."""
    pytest.importorskip("huggingface_hub")
    import huggingface_hub
    import huggingface_hub.constants as hc

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    seen = {}

    def unreachable(self, repo_id, timeout=None, **kw):
        seen["timeout"] = timeout
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    with pytest.raises(UserError) as e:
        load_pairs(spec(name="hh", hub="Anthropic/hh-rlhf"))
    text = error_text(e)
    assert "data set 'hh'" in text and "cannot reach the Hugging Face hub" in text and "Anthropic/hh-rlhf" in text
    assert "`path:" in text
    assert seen["timeout"] is not None and seen["timeout"] <= 15


def test_hub_offline_error_is_fast_and_suggests_a_path(tmp_path):
    """The real datasets.load_dataset in a fresh process with only HF_DATASETS_OFFLINE=1 (the
    flags are read when datasets and huggingface_hub are imported, so this process cannot
    set them). Imports are not timed: on a busy machine they alone take seconds. Any path
    that went online instead (a reachability check, huggingface_hub's retries: ~25 s
    without a network) would miss the time limit."""
    code = (
        "import time, types, datasets\n"
        "from harness.data.realdata import load_pairs\n"
        "from harness.errors import UserError\n"
        # the spec's attributes, without importing harness.schema (and with it torch)
        f"spec = types.SimpleNamespace(**{DatasetSpec(name='hh', hub='Anthropic/hh-rlhf').__dict__!r})\n"
        "t0 = time.monotonic()\n"
        "try:\n"
        "    load_pairs(spec)\n"
        "except UserError as e:\n"
        "    print('USERERROR', str(e))\n"
        "print('ELAPSED', time.monotonic() - t0)\n"
    )
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "USERERROR" in out.stdout and "data set 'hh'" in out.stdout and "offline mode is on" in out.stdout
    assert "`path:" in out.stdout
    elapsed = float(out.stdout.split("ELAPSED")[1])
    assert elapsed < 8, elapsed


# ========================================================= the real LLaMA-Factory file
LF_DEMO = ROOT / "data" / "llamafactory" / "dpo_en_demo.json"


@pytest.mark.skipif(not LF_DEMO.is_file(),
                    reason="data/llamafactory/dpo_en_demo.json absent; scripts/fetch_llamafactory_demo.sh fetches it")
def test_llamafactory_dpo_en_demo_loads():
    data = load_pairs(spec(path=str(LF_DEMO), heldout_size=50, label_noise=0.1))
    assert data.stats["format"] == "sharegpt" and data.stats["rows_read"] == 300
    assert data.stats["dropped_total"] == 0
    assert len(data.train) == 250 and len(data.heldout) == 50 and data.stats["label_flipped"] == 25
    pairs = data.train + data.heldout
    # counts of conversation shapes, read off the raw file with a separate script:
    # 114 rows are one human turn, 80 are system + human, 106 are multi-turn
    plain = [p for p in pairs if isinstance(p.prompt, str)]
    with_system = [p for p in pairs if isinstance(p.prompt, list) and p.prompt[0]["role"] == "system"]
    multi_turn = [p for p in pairs if isinstance(p.prompt, list) and p.prompt[0]["role"] == "user"]
    assert (len(plain), len(with_system), len(multi_turn)) == (114, 80, 106)
    assert all(p.prompt[-1]["role"] == "user" for p in with_system + multi_turn)
