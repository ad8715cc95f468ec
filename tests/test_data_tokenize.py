"""Tokenization equals TRL 1.16's DPO data processing, token for token, on real rows of every
format (Anthropic HH-RLHF, LLaMA-Factory's dpo_en_demo, TRL conversational rows, and `pairs` /
`ultrafeedback` rows made from the demo's single-turn rows), with three real chat templates
(SmolLM2's ChatML, Llama-3's and Gemma's as TRL ships them) and without one, truncated and not.

The reference is TRL's own code (tests/data_helpers.py: ``DPOTrainer._prepare_dataset`` and
``DataCollatorForPreference``), fed rows built here from the raw files, independently of the
harness's parsers and renderer. Then one test per defect of issue 12.
"""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from data_helpers import (HH_FILE, TOKENIZERS, hh_conversation, hh_rows, llamafactory_file, ours, smollm2_tokenizer,
                          trl_conversational_rows, trl_reference)
from harness.data.pairs import PreferencePair, SFTExample
from harness.data.realdata import load_pairs
from harness.data.render import plain_prompt, plain_response
from harness.data.tokenize import encode_prompt, tokenize
from harness.schema import DatasetSpec

UNTRUNCATED = (100_000, 100_000)
TRUNCATED = (96, 48)  # (max_length, max_prompt_length): cuts most prompts and many responses
ASSISTANT = "\n\nAssistant:"


ROWS = 80  # pairs per format in the parity test (all 300 take ~1 min per case on 2 cores)


def load(path: Path, fmt: str, n: int | None = None) -> list[PreferencePair]:
    """The first ``n`` (default all) usable pairs of a file, in file order."""
    d = load_pairs(DatasetSpec(name="x", path=str(path), format=fmt, on_bad_rows="drop", heldout_size=1))
    return sorted(d.train + d.heldout, key=lambda p: p.meta["row"])[:n]


# ------------------------------------------------------------- TRL rows, built from raw rows
def hh_trl_rows(pairs, template: bool) -> list[dict]:
    raw = hh_rows()
    out = []
    for p in pairs:
        r = raw[p.meta["row"] - 1]
        k = r["chosen"].rfind(ASSISTANT) + len(ASSISTANT)
        if template:
            out.append({"prompt": hh_conversation(r["chosen"][:k - len(ASSISTANT)]),
                        "chosen": [{"role": "assistant", "content": r["chosen"][k + 1:]}],
                        "rejected": [{"role": "assistant", "content": r["rejected"][k + 1:]}]})
        else:  # the raw transcript, cut after its last "\n\nAssistant:" (TRL's standard form)
            out.append({"prompt": r["chosen"][:k], "chosen": r["chosen"][k:], "rejected": r["rejected"][k:]})
    return out


_LF_ROLE = {"human": ("user", "Human"), "gpt": ("assistant", "Assistant"), "system": ("system", "System")}


def lf_trl_rows(pairs, template: bool) -> list[dict]:
    raw = json.loads(llamafactory_file().read_text())
    out = []
    for p in pairs:
        r = raw[p.meta["row"] - 1]
        c, j = r["chosen"]["value"], r["rejected"]["value"]
        if template:
            msgs = [{"role": _LF_ROLE[t["from"]][0], "content": t["value"]} for t in r["conversations"]]
            out.append({"prompt": msgs, "chosen": [{"role": "assistant", "content": c}],
                        "rejected": [{"role": "assistant", "content": j}]})
        else:  # docs: "System: {s}\nHuman: {u}\nAssistant: {a}\n...Assistant:", then " {r}"
            text = "".join(f"{_LF_ROLE[t['from']][1]}: {t['value']}\n" for t in r["conversations"]) + "Assistant:"
            out.append({"prompt": text, "chosen": " " + c, "rejected": " " + j})
    return out


def single_turn_rows() -> list[dict]:
    """LLaMA-Factory demo rows with one human turn and no system turn."""
    raw = json.loads(llamafactory_file().read_text())
    return [r for r in raw if [t["from"] for t in r["conversations"]] == ["human"]][:ROWS]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def source_rows(source: str, template: bool, tmp_path: Path):
    """(our pairs, TRL rows) for one format, or None when TRL has no form for it."""
    if source == "hh-rlhf":
        pairs = load(HH_FILE, "hh-rlhf", ROWS)
        return pairs, hh_trl_rows(pairs, template)
    if source == "sharegpt":
        pairs = load(llamafactory_file(), "sharegpt", ROWS)
        return pairs, lf_trl_rows(pairs, template)
    if source == "conversational":
        if not template:
            return None  # TRL needs a chat template for conversational rows
        rows = trl_conversational_rows(ROWS)
        return load(write_jsonl(tmp_path / "conv.jsonl", rows), "conversational"), rows
    single = single_turn_rows()
    if source == "pairs":
        rows = [{"prompt": r["conversations"][0]["value"], "chosen": r["chosen"]["value"],
                 "rejected": r["rejected"]["value"]} for r in single]
        trl = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows] if template else rows
        return load(write_jsonl(tmp_path / "pairs.jsonl", rows), "pairs"), trl
    assert source == "ultrafeedback"
    rows = [{"prompt": r["conversations"][0]["value"],
             "chosen": [{"role": "user", "content": r["conversations"][0]["value"]},
                        {"role": "assistant", "content": r["chosen"]["value"]}],
             "rejected": [{"role": "user", "content": r["conversations"][0]["value"]},
                          {"role": "assistant", "content": r["rejected"]["value"]}],
             "score_chosen": 8.0, "score_rejected": 3.0} for r in single]
    trl = ([{"chosen": r["chosen"], "rejected": r["rejected"]} for r in rows] if template else
           [{"prompt": f"User: {r['prompt']}\nAssistant:", "chosen": " " + r["chosen"][1]["content"],
             "rejected": " " + r["rejected"][1]["content"]} for r in rows])
    return load(write_jsonl(tmp_path / "uf.jsonl", rows), "ultrafeedback"), trl


CASES = [(s, t) for s in ("hh-rlhf", "sharegpt", "conversational", "pairs", "ultrafeedback")
         for t in ("chatml", "llama3", "gemma", "plain")
         if not (t == "gemma" and s == "sharegpt")]  # Gemma's template refuses system turns


@pytest.mark.parametrize("source,template", CASES, ids=[f"{s}-{t}" for s, t in CASES])
def test_tokenization_equals_trl_on_real_rows(source, template, tmp_path):
    tok = TOKENIZERS[template]()
    got = source_rows(source, template != "plain", tmp_path)
    if got is None:
        pytest.skip("TRL has no plain-text form for conversational rows")
    pairs, trl_rows = got
    assert len(pairs) == len(trl_rows) >= 40
    trl_full = trl_reference(trl_rows, tok, *UNTRUNCATED)
    trl_cut = trl_reference(trl_rows, tok, *TRUNCATED)
    full = tokenize(pairs, tok, *UNTRUNCATED)
    cut = tokenize(pairs, tok, *TRUNCATED)
    assert ours(full) == trl_full
    assert ours(cut) == trl_cut
    # the truncated setting did cut prompts and responses, and never touched a response's start
    assert cut.stats["prompt_truncated"] > 0 and cut.stats["response_truncated"] > 0
    for a, b in zip(ours(full), ours(cut)):
        assert b[1] == a[1][:len(b[1])] and b[2] == a[2][:len(b[2])]


# =========================================================== issue 12's defects, one by one
def test_truncated_prompt_keeps_the_templates_end_markers():
    """Defect 1: a cut prompt used to change the response's tokens (plain tokens + EOS instead
    of the template's own end of turn). Every response ends as its template ends a turn."""
    pairs = load(HH_FILE, "hh-rlhf", 100)
    for name, end in (("chatml", "<|im_end|>\n"), ("gemma", "<end_of_turn>\n"), ("llama3", "<|eot_id|>")):
        tok = TOKENIZERS[name]()
        end_ids = tok(end, add_special_tokens=False)["input_ids"]
        full = tokenize(pairs, tok, 100_000, 100_000)
        cut = tokenize(pairs, tok, 100_000, 64)
        assert cut.stats["prompt_truncated"] > 30
        assert cut.chosen == full.chosen and cut.rejected == full.rejected
        assert all(len(p) <= 64 for p in cut.prompts)
        for ids in cut.chosen + cut.rejected:
            assert ids[-len(end_ids):] == end_ids, (name, tok.decode(ids[-4:]))
        # keep_end: the cut prompt still ends with the generation prompt ...
        gen = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False)
        tail = gen[gen.rindex("x") + 1:]
        if name == "llama3":
            # ... except its last "\n\n", which SmolLM2's BPE merges with the response's first
            # token (Llama-3's own tokenizer would not): a real instance of the merge case
            assert cut.stats["prompt_prefix_shortened"] == len(pairs) and tail.endswith("\n\n")
            tail = tail[:-2]
        gen_tail = tok(tail, add_special_tokens=False)["input_ids"]
        assert all(p[-len(gen_tail):] == gen_tail for p in cut.prompts)


def test_keep_start_prompt_truncation_is_the_named_option():
    tok = TOKENIZERS["chatml"]()
    pairs = load(HH_FILE, "hh-rlhf")[:20]
    full = tokenize(pairs, tok, 100_000, 100_000)
    start = tokenize(pairs, tok, 100_000, 16, prompt_truncation="keep_start")
    assert start.prompts == [p[:16] for p in full.prompts] and start.chosen == full.chosen
    with pytest.raises(ValueError, match="keep_end, keep_start"):
        tokenize(pairs, tok, 100, 16, prompt_truncation="middle")


def test_generation_prompt_merging_with_the_first_response_token_matches_trl():
    """Defect 1, second case: "<|im_start|>assistant\\n" + a response starting "\\n\\n" encode
    as one "\\n\\n\\n" token. TRL (and now the harness) split where the encodings diverge."""
    tok = smollm2_tokenizer()
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": "\n\n" + r["chosen"]}],
             "rejected": [{"role": "assistant", "content": "\n" + r["rejected"]}]}
            for r in ({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
                      {"prompt": "2+2?", "chosen": "4", "rejected": "5"})]
    pairs = [PreferencePair(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"])
             for r in rows]
    got = tokenize(pairs, tok, 100, 50)
    assert ours(got) == trl_reference(rows, tok, 100, 50)
    gen_ids = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True)["input_ids"]
    assert got.prompts[1] == gen_ids[:-1]  # the generation prompt's "\n" went into the response's first token
    assert got.stats["prompt_prefix_shortened"] == 2
    assert tok.decode(got.chosen[1]).startswith("\n\n\n4")
    # plain text ending in a space merges with the response's first word the same way
    plain = [PreferencePair("Q: capital of France? A: ", "Paris", "Lyon")]
    tok.chat_template = None
    trl = trl_reference([{"prompt": "Q: capital of France? A: ", "chosen": "Paris", "rejected": "Lyon"}], tok, 100, 50)
    assert ours(tokenize(plain, tok, 100, 50)) == trl


def test_plain_rendering_keeps_hh_markers_and_is_the_same_for_single_and_multi_turn():
    """Defect 2: without a chat template, HH pairs lost their "\\n\\nHuman: ... \\n\\nAssistant:"
    framing (single-turn ones were glued to the response). Now every HH pair reads as its raw
    transcript, and every format frames one turn as it frames several."""
    raw = hh_rows()
    pairs = load(HH_FILE, "hh-rlhf")
    singles = sum(isinstance(p.prompt, str) for p in pairs)
    assert 50 < singles < len(pairs)
    for p in pairs:
        r = raw[p.meta["row"] - 1]
        assert plain_prompt(p.prompt, p.framing) + plain_response(p.chosen, p.prompt, p.framing) == r["chosen"]
        assert plain_prompt(p.prompt, p.framing) + plain_response(p.rejected, p.prompt, p.framing) == r["rejected"]
    assert plain_prompt("Hi", "sharegpt") == "Human: Hi\nAssistant:"
    multi = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Bye"}]
    assert plain_prompt(multi, "sharegpt") == "System: S\nHuman: Hi\nAssistant: Yo\nHuman: Bye\nAssistant:"
    assert plain_prompt(multi[1:2], "roles") == plain_prompt("Hi", "roles") == "User: Hi\nAssistant:"
    assert plain_response("Paris.", "Hi", "roles") == " Paris."
    assert plain_prompt("Q? ", "text") + plain_response("A", "Q? ", "text") == "Q? A"  # `pairs` text verbatim


def test_byte_tokenizer_puts_no_eos_inside_sequences():
    """Defect 3: ByT5 appends </s> to every encoding, so the prompt carried one:
    'Capital of France?</s>' + 'Paris.</s>'. Now only the response's end has an EOS."""
    from harness.models import byte_tokenizer

    tok = byte_tokenizer()
    d = tokenize([PreferencePair("Capital of France?", "Paris.", "Lyon.")], tok, 64, 32)
    assert tok.decode(d.prompts[0]) == "Capital of France?"
    assert d.chosen[0] == [b + 3 for b in b"Paris."] + [tok.eos_token_id]  # byte + 3; </s> = 1
    assert tok.eos_token_id not in d.prompts[0]
    assert encode_prompt(tok, "Capital of France?") == [b + 3 for b in b"Capital of France?"]
    pairs = load(HH_FILE, "hh-rlhf")[:30]
    got = tokenize(pairs, tok, 100_000, 100_000)
    assert ours(got) == trl_reference(hh_trl_rows(pairs, False), tok, *UNTRUNCATED)
    assert all(tok.eos_token_id not in p for p in got.prompts)
    assert all(c[-1] == 1 and 1 not in c[:-1] for c in got.chosen + got.rejected)


def _real_dataset(rows: list[dict], tmp_path: Path, **kw):
    from harness.data.loading import load_dataset

    path = write_jsonl(tmp_path / "d.jsonl", rows)
    return load_dataset(DatasetSpec(name="d", path=str(path), heldout_size=2, **kw), None, "chosen")


def test_tiny_tokenizers_see_every_side_and_no_repr(tmp_path):
    """Defect 4: tiny tokenizers were built from the prompt's Python repr and the chosen text
    only, so a character only in rejected responses became <unk> on the rejected side only."""
    from harness.models import make_tokenizer
    from harness.runner import tiny_texts
    from harness.schema import TinyModelSpec

    rows = [{"prompt": [{"role": "user", "content": f"Pick {i}"}], "chosen": f"ok {i}", "rejected": f"né {i} ∑"}
            for i in range(8)]
    data = _real_dataset(rows, tmp_path)
    texts = tiny_texts(data)
    assert not any("{'role'" in t or "[{" in t for t in texts)
    assert "User: Pick 0\nAssistant:" in texts and " né 0 ∑" in texts
    tok = make_tokenizer(TinyModelSpec(tokenizer="char"), None, texts)
    d = tokenize(data.train + data.heldout, tok, 64, 32, use_chat_template=False)
    assert all(tok.unk_token_id not in ids for ids in d.prompts + d.chosen + d.rejected)
    # the vocabulary does not depend on which side a label-noise flip put a response on
    noisy = _real_dataset(rows, tmp_path, label_noise=0.5)
    assert tiny_texts(noisy) == texts


def test_label_noise_flips_labels_only_and_sft_is_the_clean_sets():
    """Defect 5: label noise also corrupted the SFT data (SFT on the flipped chosen side), so
    the reference differed between noise levels."""
    rows = hh_rows()
    from harness.data.loading import load_dataset

    spec = dict(name="hh", path=str(HH_FILE), format="hh-rlhf", on_bad_rows="drop", heldout_size=20)
    clean = load_dataset(DatasetSpec(**spec), None, "chosen")
    noisy = load_dataset(DatasetSpec(**spec, label_noise=0.3), None, "chosen")
    n_flip = sum(p.meta["flipped"] for p in noisy.train)
    assert n_flip == round(0.3 * len(noisy.train)) and n_flip > 50
    assert noisy.sft == clean.sft
    assert [s.response for s in noisy.sft] == [p.chosen for p in clean.train]
    for a, b in zip(clean.train, noisy.train):
        assert (b.chosen, b.rejected) == ((a.rejected, a.chosen) if b.meta["flipped"] else (a.chosen, a.rejected))
    tok = smollm2_tokenizer()
    assert tokenize(noisy.sft[:60], tok, 256, 128).chosen == tokenize(clean.sft[:60], tok, 256, 128).chosen
    # embedded tasks with sft.data: chosen too
    from harness.data.tasks import make_task  # noqa: F401
    t0 = load_dataset(DatasetSpec(name="a", task="addition", label_noise=0.0), None, "chosen")
    t4 = load_dataset(DatasetSpec(name="a", task="addition", label_noise=0.4), None, "chosen")
    assert [tuple(s)[:2] for s in t4.sft] == [tuple(s)[:2] for s in t0.sft]
    assert rows  # the fixture is there


def test_gzipped_json_lines_load_like_the_plain_file(tmp_path):
    """Defect 8: `.jsonl.gz` (how HH-RLHF ships) was refused."""
    gz = tmp_path / (HH_FILE.name + ".gz")  # the same data, gzipped: the same rows and split
    gz.write_bytes(gzip.compress(HH_FILE.read_bytes()))
    a = load_pairs(DatasetSpec(name="h", path=str(gz), on_bad_rows="drop", heldout_size=10))
    b = load_pairs(DatasetSpec(name="h", path=str(HH_FILE), on_bad_rows="drop", heldout_size=10))
    assert [(p.prompt, p.chosen) for p in a.train] == [(p.prompt, p.chosen) for p in b.train]
    assert a.stats["file_format"] == "jsonl.gz" and a.stats["format"] == "hh-rlhf"
    js = tmp_path / "rows.json.gz"
    js.write_bytes(gzip.compress(json.dumps(json.loads(llamafactory_file().read_text())[:10]).encode()))
    assert load_pairs(DatasetSpec(name="l", path=str(js), heldout_size=2)).stats["format"] == "sharegpt"
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip")
    from harness.errors import DataError

    with pytest.raises(DataError, match="cannot decompress as gzip"):
        load_pairs(DatasetSpec(name="b", path=str(bad)))
    with pytest.raises(DataError, match=r"unsupported file type '\.txt\.gz'.*\.jsonl\.gz"):
        (tmp_path / "x.txt.gz").write_bytes(gzip.compress(b"{}"))
        load_pairs(DatasetSpec(name="b", path=str(tmp_path / "x.txt.gz")))


def test_no_sequence_length_warning(caplog):
    """Defect 8: every real-data run printed transformers' "Token indices sequence length is
    longer than the specified maximum" (text is encoded before it is truncated)."""
    tok = smollm2_tokenizer()
    tok.model_max_length = 32
    pairs = load(HH_FILE, "hh-rlhf")[:10]
    with caplog.at_level(logging.WARNING):
        tokenize(pairs, tok, 64, 24)
        encode_prompt(tok, pairs[0], max_prompt_length=24)
        tok.chat_template = None
        tokenize(pairs, tok, 64, 24)
    assert "sequence length is longer" not in caplog.text
    assert tok.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum") is None


def test_sft_examples_are_split_like_pairs():
    tok = TOKENIZERS["chatml"]()
    pairs = load(HH_FILE, "hh-rlhf")[:10]
    d = tokenize(pairs, tok, 200, 100)
    s = tokenize([SFTExample(p.prompt, p.chosen, p.framing) for p in pairs], tok, 200, 100)
    t = tokenize([(p.prompt, p.chosen) for p in pairs], tok, 200, 100)
    assert s.prompts == d.prompts and s.chosen == d.chosen and t.chosen == d.chosen
    assert s.rejected == [[]] * len(pairs)
