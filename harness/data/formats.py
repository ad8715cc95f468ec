"""Loaders for real preference data: local JSON / JSONL / Parquet files and hub data sets.

Every row is read into one :class:`~harness.data.pairs.PreferencePair` (prompt, chosen
response, rejected response). Five row formats are accepted (``FORMATS``); ``format: auto``
picks the one that the first parseable row fits and records it in ``stats["format"]``:

* ``pairs``: ``{prompt: str, chosen: str, rejected: str}`` (TRL's "standard" explicit-prompt
  form; a prompt may also be a list of chat messages).
* ``conversational``: TRL's conversational form, ``{prompt: [messages], chosen: [messages],
  rejected: [messages]}``, or its implicit-prompt form ``{chosen: [conversation], rejected:
  [conversation]}`` where everything before the last (assistant) message is the prompt and
  must be the same on both sides.
* ``hh-rlhf`` (Anthropic/hh-rlhf): ``{chosen: "\\n\\nHuman: ...\\n\\nAssistant: ...",
  rejected: ...}``. Each side is split at its LAST ``"\\n\\nAssistant:"``; the dialogue before
  it becomes the prompt (Human -> user, Assistant -> assistant) and must match on both sides;
  the text after it, less one leading space, is the response.
* ``ultrafeedback`` (HuggingFaceH4/ultrafeedback_binarized): ``{prompt: str, chosen:
  [messages incl. the user turn], rejected: [...], score_chosen, score_rejected}``; the
  response is the last (assistant) message, scores go to ``meta``.
* ``sharegpt`` (LLaMA-Factory, e.g. ``dpo_en_demo.json``): ``{conversations: [{from:
  human|gpt|system, value}], chosen: {from: gpt, value}, rejected: {from: gpt, value}}``.

Prompts are normalised the same way for all formats: a single user turn without a system
message stays a plain string; anything else is a list of ``{"role", "content"}`` messages
ending with a user turn (a system message only first). Nothing is tokenized here
(``harness.data.tokenize`` does that, and checks prompt lengths).

Row validation. A row is bad when a field is missing or null (``missing_field``), has the
wrong type, e.g. non-string content (``wrong_type``), the prompt is empty
(``empty_prompt``), chosen or rejected is empty after stripping whitespace
(``empty_response``), both are the same after stripping (``identical_responses``), the row is
not a JSON object (``not_an_object``), or its structure does not fit the format
(``format_mismatch``: no assistant turn to split at, prompts that differ between chosen and
rejected, a conversation that does not end with a user turn, ...). ``on_bad_rows: error``
reports every bad row (the first ``MAX_REPORTED``, then a count) in one ``DataError``;
``drop`` skips them and counts them per reason in ``stats["dropped"]``.

Held-out split. With ``heldout_split`` (hub data sets) the held-out pairs come from that
split. Otherwise they are a deterministic slice of the usable rows: rows are grouped by
prompt (so no prompt is in both train and held-out: several pairs per prompt are common in
UltraFeedback-style data), the groups are shuffled with a seed derived from the source name
(``split_seed``: SHA-256 of ``"prefopt-split:" + file name``, or of the hub id and split),
and whole groups are taken from the end of that order into held-out while they fit in
``heldout_size``. With one pair per prompt this is exactly "the last ``heldout_size`` rows
after a seeded shuffle". The seed does not depend on the suite's ``seeds`` on purpose: every
training seed sees the same split, so seeds measure training variance only. It does depend on
the set of usable rows (dropping rows changes the shuffle). ``train_size`` then keeps the
first pairs of the shuffled train order, and ``label_noise`` swaps chosen and rejected in
``round(label_noise * len(train))`` train pairs chosen with a second derived seed
(``meta["flipped"] = True``); held-out pairs are never flipped.
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.errors import DataError, UserError
from harness.hub import offline as hub_offline

from .pairs import PreferencePair

# One line per format, shown when a format cannot be detected or is wrong.
FORMATS: dict[str, str] = {
    "pairs": "{prompt: str, chosen: str, rejected: str}",
    "conversational": "{prompt: [messages], chosen: [assistant message], rejected: [assistant message]} "
                      "or {chosen: [conversation], rejected: [conversation]} (TRL)",
    "hh-rlhf": '{chosen: "\\n\\nHuman: ...\\n\\nAssistant: ...", rejected: "..."} (Anthropic/hh-rlhf)',
    "ultrafeedback": "{prompt: str, chosen: [user and assistant messages], rejected: [...], "
                     "score_chosen, score_rejected} (HuggingFaceH4/ultrafeedback_binarized)",
    "sharegpt": "{conversations: [{from: human|gpt|system, value}], chosen: {from: gpt, value}, "
                "rejected: {from: gpt, value}} (LLaMA-Factory)",
}

REASONS: dict[str, str] = {
    "not_an_object": "row is not a JSON object",
    "missing_field": "a required field is missing or null",
    "wrong_type": "a field has the wrong type",
    "empty_prompt": "the prompt is empty",
    "empty_response": "chosen or rejected is empty",
    "identical_responses": "chosen and rejected are identical",
    "format_mismatch": "the row's structure does not fit the format",
}

MAX_REPORTED = 20  # bad rows listed in one error; the rest are counted
HUB_CHECK_TIMEOUT_S = 10.0  # reachability check before datasets.load_dataset (which retries for ~25 s)
FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet")
ROLES = ("system", "user", "assistant")


@dataclass
class LoadedData:
    """What :func:`load_pairs` returns. ``stats`` keys: ``source``, ``file_format``,
    ``format``, ``format_detected``, ``rows_read``, ``rows_valid``, ``dropped`` (reason ->
    count), ``dropped_total``, ``train``, ``heldout``, ``train_before_cap``,
    ``heldout_from`` (``"slice"`` or ``"split:<name>"``), ``split_seed``,
    ``prompts_with_several_pairs``, ``heldout_prompts_in_train`` (hub splits only),
    ``label_flipped``."""

    train: list[PreferencePair]
    heldout: list[PreferencePair]
    stats: dict = field(default_factory=dict)


class BadRow(Exception):
    """One row's problem: ``reason`` (a key of ``REASONS``), the ``field`` and a detail."""

    def __init__(self, reason: str, field: str, detail: str):
        self.reason, self.field, self.detail = reason, field, detail
        super().__init__(f"field '{field}': {detail}")


@dataclass
class _Record:
    where: str  # "line 7", "row 3 (line 17)", "row 12", "split 'test' row 5": what a user looks up
    index: int  # 1-based row number among the data rows
    row: Any
    extra_meta: dict = field(default_factory=dict)


# ======================================================================== row parsing
def _get(row: dict, key: str, types: tuple, type_name: str) -> Any:
    if key not in row:
        raise BadRow("missing_field", key, "missing")
    value = row[key]
    if value is None:
        raise BadRow("missing_field", key, "is null")
    if not isinstance(value, types) or isinstance(value, bool):
        raise BadRow("wrong_type", key, f"expected {type_name}, got {type(value).__name__}")
    return value


def _text(value: Any, name: str) -> str:
    if value is None:
        raise BadRow("missing_field", name, "is null")
    if not isinstance(value, str):
        raise BadRow("wrong_type", name, f"expected a string, got {type(value).__name__}")
    return value


def _messages(value: Any, name: str) -> list[dict]:
    """A list of ``{"role", "content"}`` chat messages, checked and copied."""
    if value is None:
        raise BadRow("missing_field", name, "is null")
    if not isinstance(value, list):
        raise BadRow("wrong_type", name, f"expected a list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise BadRow("wrong_type", where, f"expected a message {{role, content}}, got {type(m).__name__}")
        for key in ("role", "content"):
            if m.get(key) is None:
                raise BadRow("missing_field", f"{where}.{key}", "missing")
        role = _text(m["role"], f"{where}.role")
        if role not in ROLES:
            raise BadRow("format_mismatch", f"{where}.role", f"role '{role}' is not one of {', '.join(ROLES)}")
        out.append({"role": role, "content": _text(m["content"], f"{where}.content")})
    return out


def _prompt(messages: list[dict], name: str):
    """Normalise prompt messages: one user turn -> its text; else the message list, which
    must end with a user turn and may start with one system message."""
    if not messages:
        raise BadRow("empty_prompt", name, "no prompt messages before the response")
    if messages[-1]["role"] != "user":
        raise BadRow("format_mismatch", name, f"the prompt must end with a user turn, not '{messages[-1]['role']}'")
    for i, m in enumerate(messages):
        if m["role"] == "system" and i > 0:
            raise BadRow("format_mismatch", name, f"a system message may only come first (found at turn {i + 1})")
    if not messages[-1]["content"].strip():
        raise BadRow("empty_prompt", name, "the last user turn is empty")
    if len(messages) == 1:
        return messages[0]["content"]
    return messages


def _split_last_assistant(chosen: list[dict], rejected: list[dict], names=("chosen", "rejected")):
    """For two full conversations: (shared prompt messages, chosen text, rejected text)."""
    responses = []
    for conv, name in zip((chosen, rejected), names):
        if not conv:
            raise BadRow("empty_response", name, "empty message list")
        if conv[-1]["role"] != "assistant":
            raise BadRow("format_mismatch", f"{name}[{len(conv) - 1}].role",
                         f"the last message must be the assistant's response, not '{conv[-1]['role']}'")
        responses.append(conv[-1]["content"])
    if chosen[:-1] != rejected[:-1]:
        raise BadRow("format_mismatch", f"{names[0]}/{names[1]}",
                     "the conversations differ before the last assistant turn (the prompt must be shared)")
    return chosen[:-1], responses[0], responses[1]


def _parse_pairs(row: dict):
    prompt = _get(row, "prompt", (str, list), "a string or a list of messages")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise BadRow("empty_prompt", "prompt", "empty")
    else:
        prompt = _prompt(_messages(prompt, "prompt"), "prompt")
    chosen = _get(row, "chosen", (str,), "a string")
    rejected = _get(row, "rejected", (str,), "a string")
    return prompt, chosen, rejected, {}


def _parse_conversational(row: dict):
    chosen = _messages(_get(row, "chosen", (list,), "a list of messages"), "chosen")
    rejected = _messages(_get(row, "rejected", (list,), "a list of messages"), "rejected")
    # Explicit prompt: chosen/rejected hold the assistant turn (after any shared turns);
    # implicit prompt: they hold whole conversations. Either way the last message is the
    # response and everything before it is the (shared) prompt.
    prefix, c, r = _split_last_assistant(chosen, rejected)
    if row.get("prompt") is not None:
        prompt = _messages(_get(row, "prompt", (list,), "a list of messages"), "prompt")
        return _prompt(prompt + prefix, "prompt"), c, r, {}
    return _prompt(prefix, "chosen"), c, r, {}


_HH_LAST = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _hh_messages(dialogue: str, name: str) -> list[dict]:
    if dialogue.startswith(("Human:", "Assistant:")):
        dialogue = "\n\n" + dialogue
    parts = _HH_TURN.split(dialogue)
    # parts = [text before the first turn, speaker, text, speaker, text, ...]
    if parts[0].strip():
        raise BadRow("format_mismatch", name, "text before the first '\\n\\nHuman:' turn")
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant",
                         "content": text[1:] if text.startswith(" ") else text})
    return messages


def _parse_hh(row: dict):
    sides = []
    for name in ("chosen", "rejected"):
        text = _get(row, name, (str,), "a string")
        cut = text.rfind(_HH_LAST)
        if cut < 0:
            raise BadRow("format_mismatch", name, "no '\\n\\nAssistant:' turn to split the response at")
        response = text[cut + len(_HH_LAST):]
        sides.append((text[:cut], response[1:] if response.startswith(" ") else response))
    (c_dialogue, chosen), (r_dialogue, rejected) = sides
    if c_dialogue != r_dialogue:
        raise BadRow("format_mismatch", "chosen/rejected",
                     "the dialogues before the last '\\n\\nAssistant:' differ (the prompt must be shared)")
    return _prompt(_hh_messages(c_dialogue, "chosen"), "chosen"), chosen, rejected, {}


def _parse_ultrafeedback(row: dict):
    prompt_text = _get(row, "prompt", (str,), "a string")
    chosen = _messages(_get(row, "chosen", (list,), "a list of messages"), "chosen")
    rejected = _messages(_get(row, "rejected", (list,), "a list of messages"), "rejected")
    prefix, c, r = _split_last_assistant(chosen, rejected)
    if prefix:
        prompt = _prompt(prefix, "chosen")
        if prefix[-1]["content"].strip() != prompt_text.strip():
            raise BadRow("format_mismatch", "prompt", "differs from the last user turn in chosen/rejected")
    else:
        if not prompt_text.strip():
            raise BadRow("empty_prompt", "prompt", "empty")
        prompt = prompt_text
    meta = {}
    for key in ("score_chosen", "score_rejected"):
        value = row.get(key)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise BadRow("wrong_type", key, f"expected a number, got {type(value).__name__}")
            meta[key] = float(value)
    return prompt, c, r, meta


_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def _parse_sharegpt(row: dict):
    turns = _get(row, "conversations", (list,), "a list of {from, value} turns")
    messages = []
    if row.get("system") is not None:
        system = _text(row["system"], "system")
        if system.strip():
            messages.append({"role": "system", "content": system})
    for i, t in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(t, dict):
            raise BadRow("wrong_type", where, f"expected a turn {{from, value}}, got {type(t).__name__}")
        for key in ("from", "value"):
            if t.get(key) is None:
                raise BadRow("missing_field", f"{where}.{key}", "missing")
        speaker = _text(t["from"], f"{where}.from")
        if speaker not in _SHAREGPT_ROLES:
            raise BadRow("format_mismatch", f"{where}.from",
                         f"'{speaker}' is not one of human, gpt, system (tool turns are not supported)")
        messages.append({"role": _SHAREGPT_ROLES[speaker], "content": _text(t["value"], f"{where}.value")})
    responses = []
    for name in ("chosen", "rejected"):
        turn = _get(row, name, (dict,), "a turn {from: gpt, value}")
        if turn.get("value") is None:
            raise BadRow("missing_field", f"{name}.value", "missing")
        if turn.get("from", "gpt") != "gpt":
            raise BadRow("format_mismatch", f"{name}.from", f"expected 'gpt', got {turn.get('from')!r}")
        responses.append(_text(turn["value"], f"{name}.value"))
    return _prompt(messages, "conversations"), responses[0], responses[1], {}


_PARSERS = {
    "pairs": _parse_pairs,
    "conversational": _parse_conversational,
    "hh-rlhf": _parse_hh,
    "ultrafeedback": _parse_ultrafeedback,
    "sharegpt": _parse_sharegpt,
}
assert set(_PARSERS) == set(FORMATS)


def parse_row(row: Any, fmt: str) -> tuple:
    """Parse one row in format ``fmt`` into ``(prompt, chosen, rejected, extra_meta)``;
    raises :class:`BadRow` naming the reason and the field."""
    if not isinstance(row, dict):
        raise BadRow("not_an_object", "(row)", f"expected a JSON object, got {type(row).__name__}")
    prompt, chosen, rejected, meta = _PARSERS[fmt](row)
    if not chosen.strip():
        raise BadRow("empty_response", "chosen", "empty (after stripping whitespace)")
    if not rejected.strip():
        raise BadRow("empty_response", "rejected", "empty (after stripping whitespace)")
    if chosen.strip() == rejected.strip():
        raise BadRow("identical_responses", "chosen/rejected", "chosen and rejected are the same text")
    return prompt, chosen, rejected, meta


def _formats_help() -> str:
    return "; ".join(f"{name}: {keys}" for name, keys in FORMATS.items())


def detect_format(records: list[_Record], source: str) -> str:
    """The format that the first parseable row fits. Rows that fit no format are skipped
    (they are reported as bad rows of the detected format); a row that fits several formats
    is ambiguous and stops the load."""
    for rec in records:
        if not isinstance(rec.row, dict):
            continue
        fits = []
        for fmt in FORMATS:
            try:
                parse_row(rec.row, fmt)
                fits.append(fmt)
            except BadRow:
                pass
        if len(fits) == 1:
            return fits[0]
        if len(fits) > 1:
            raise DataError(
                f"{source}: {rec.where}: the row fits several formats ({', '.join(fits)}) and format is auto; "
                f"set `format:` to one of them in the data set entry")
    first = next((r for r in records if isinstance(r.row, dict)), None)
    problems = [f"{source}: no row fits any accepted format, so `format: auto` cannot pick one"]
    if first is not None:
        problems.append(f"{source}: {first.where}: keys {sorted(first.row)}")
        for fmt in FORMATS:
            try:
                parse_row(first.row, fmt)
            except BadRow as e:
                problems.append(f"  as {fmt}: field '{e.field}': {e.detail}")
    problems.append("accepted formats: " + _formats_help())
    problems.append("fix: convert the rows to one of these formats, or set `format:` to check the rows against one")
    raise DataError(problems=problems)


# ======================================================================== file reading
_WS = re.compile(r"[ \t\n\r]*")


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}: line {line}, column {col} (byte offset {e.start}): invalid UTF-8 "
            f"(byte 0x{data[e.start]:02x}: {e.reason}); re-encode the file as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 IN > OUT`") from None
    return text[1:] if text.startswith("\ufeff") else text


def _json_error(path: Path, e: json.JSONDecodeError, what: str = "invalid JSON") -> DataError:
    return DataError(f"{path}: line {e.lineno}, column {e.colno}: {what}: {e.msg}; fix the JSON syntax there")


def _read_json_array(path: Path, text: str, start: int) -> list[_Record]:
    """Scan a top-level JSON list element by element, so each row knows its line."""
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    decoder = json.JSONDecoder()
    records: list[_Record] = []
    i = _WS.match(text, start + 1).end()
    if i < len(text) and text[i] == "]":
        i = _WS.match(text, i + 1).end()
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise _json_error(path, e) from None
            n = len(records) + 1
            line = line_of(i)
            records.append(_Record(f"row {n} (line {line})", n, obj, {"line": line}))
            i = _WS.match(text, end).end()
            if i < len(text) and text[i] == ",":
                i = _WS.match(text, i + 1).end()
                continue
            if i < len(text) and text[i] == "]":
                i = _WS.match(text, i + 1).end()
                break
            e = json.JSONDecodeError("expected ',' or ']' after a row", text, min(i, len(text)))
            raise _json_error(path, e) from None
    if i < len(text):
        raise _json_error(path, json.JSONDecodeError("extra data after the list", text, i))
    return records


def _read_jsonl(path: Path, text: str) -> list[_Record]:
    records = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (and a final newline) are not rows
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}, column {e.colno}: invalid JSON: {e.msg}; "
                            f"each line of a .jsonl file must hold one JSON object") from None
        n = len(records) + 1
        records.append(_Record(f"line {lineno}", n, obj, {"line": lineno}))
    return records


def read_rows(path: Path) -> tuple[list[_Record], str]:
    """Read a data file into records; returns ``(records, file_format)``. File-level
    problems (unknown suffix, invalid UTF-8, JSON syntax, no rows) raise ``DataError``."""
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{suffix or '(none)'}'; "
                        f"use one of {', '.join(FILE_SUFFIXES)}")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged or non-Parquet file
            raise DataError(f"{path}: cannot read as Parquet: {e}") from None
        records = [_Record(f"row {i}", i, r) for i, r in enumerate(rows, start=1)]
        file_format = "parquet"
    else:
        text = _decode(path, path.read_bytes())
        start = _WS.match(text).end()
        if start == len(text):
            raise DataError(f"{path}: the file is empty (0 rows)")
        if suffix == ".json" and text[start] == "[":
            records, file_format = _read_json_array(path, text, start), "json"
        elif suffix == ".json":
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                if e.msg != "Extra data":
                    raise _json_error(path, e) from None
                doc = None  # several JSON values: JSON Lines under a .json name (common on the hub)
            if doc is None:
                records, file_format = _read_jsonl(path, text), "jsonl"
            elif isinstance(doc, dict) and isinstance(doc.get("data"), list):
                records = [_Record(f"data row {i}", i, r) for i, r in enumerate(doc["data"], start=1)]
                file_format = "json"
            else:
                raise DataError(f"{path}: expected a list of rows or {{\"data\": [rows]}} at the top level, "
                                f"got {type(doc).__name__}" + (f" with keys {sorted(doc)[:8]}" if isinstance(doc, dict) else ""))
        else:
            records, file_format = _read_jsonl(path, text), "jsonl"
    if not records:
        raise DataError(f"{path}: no rows (the file holds an empty list or table)")
    return records, file_format


def resolve_path(path: str, base_dir: Optional[Path]) -> Path:
    """``path`` as given if absolute; else relative to ``base_dir`` (the suite file's folder),
    then to the working directory."""
    p = Path(path).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = ([Path(base_dir) / p] if base_dir is not None else []) + [Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    hint = ""
    if Path(path).name == "dpo_en_demo.json":
        hint = "; scripts/fetch_llamafactory_demo.sh downloads it"
    raise DataError(f"data file '{path}' not found (looked in: {', '.join(str(c) for c in candidates)}){hint}")


# ============================================================================== hub
def _hub_fix(hub: str, split: str) -> str:
    return (f"fix: on a connected machine run `python -c \"import datasets; "
            f"datasets.load_dataset('{hub}', split='{split}').to_json('data.jsonl')\"`, copy the file here "
            f"and set `path: data.jsonl` instead of `hub:` (or fill the hub cache there and set HF_DATASETS_OFFLINE=1)")


def _check_hub_reachable(hub: str, name: str, split: str) -> None:
    """Fail in seconds, not after datasets' ~25 s of retries, when the hub is unreachable."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi().dataset_info(hub, timeout=HUB_CHECK_TIMEOUT_S)
    except GatedRepoError:
        return  # exists; datasets will ask for a token itself
    except RepositoryNotFoundError:
        raise UserError(f"data set '{name}': hub data set '{hub}' not found (or private without a token); "
                        f"check the id, or run `huggingface-cli login`") from None
    except HFValidationError as e:
        raise UserError(f"data set '{name}': '{hub}' is not a valid hub id: {e}") from None
    except HfHubHTTPError:
        return  # the hub answered; let datasets report anything else
    except Exception as e:  # connection errors come from several libraries (httpx, socket, ssl)
        raise UserError(problems=[
            f"data set '{name}': cannot reach the Hugging Face hub to load '{hub}' "
            f"({type(e).__name__}: {str(e)[:200]})",
            _hub_fix(hub, split)]) from None


@contextlib.contextmanager
def _offline_libraries(offline: bool):
    """Make datasets *and* huggingface_hub offline for one call when the user asked for it.
    Both read their flags once, at import, and HF_DATASETS_OFFLINE=1 alone leaves
    huggingface_hub online: any request that reaches it would then go through its retries
    (an online ``load_dataset`` without a network takes ~25 s to fail, measured)."""
    if not offline:
        yield
        return
    import datasets.config as dc
    import huggingface_hub.constants as hc

    saved = hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = dc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE = saved


def _load_hub_split(hub: str, split: str, name: str) -> list[dict]:
    offline = hub_offline()  # harness.hub: the one answer
    if not offline and not Path(hub).exists():
        _check_hub_reachable(hub, name, split)
    import datasets

    try:
        with _offline_libraries(offline):
            ds = datasets.load_dataset(hub, split=split)
    except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, ValueError (split), ...
        why = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local cache" \
            if offline else f"{type(e).__name__}"
        raise UserError(problems=[
            f"data set '{name}': cannot load hub data set '{hub}' split '{split}': {why}: {str(e)[:300]}",
            _hub_fix(hub, split)]) from None
    return ds.to_list()


# ======================================================================== the loader
def split_seed(key: str) -> int:
    """A 64-bit seed from a name (stable across runs and machines, unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(("prefopt-split:" + key).encode("utf-8")).digest()[:8], "big")


def _validate(records: list[_Record], fmt: str, source: str, extra_meta: dict):
    pairs, bad = [], []
    for rec in records:
        try:
            prompt, chosen, rejected, meta = parse_row(rec.row, fmt)
        except BadRow as e:
            bad.append((rec, e))
            continue
        pairs.append(PreferencePair(prompt, chosen, rejected,
                                    {"source": source, "row": rec.index, **rec.extra_meta, **extra_meta, **meta}))
    return pairs, bad


def _prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _heldout_slice(pairs: list[PreferencePair], size: int, seed: int):
    """(train, heldout, prompts with several pairs): whole prompt groups, shuffled, filled
    from the end into held-out while they fit in ``size``."""
    groups: dict[str, list[PreferencePair]] = {}
    for p in pairs:
        groups.setdefault(_prompt_key(p.prompt), []).append(p)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    heldout_groups, train_groups, n_held = [], [], 0
    for g in reversed(order):
        if n_held + len(g) <= size:
            heldout_groups.append(g)
            n_held += len(g)
        else:
            train_groups.append(g)
    heldout_groups.reverse()
    train_groups.reverse()
    flat = lambda gs: [p for g in gs for p in g]  # noqa: E731
    return flat(train_groups), flat(heldout_groups), sum(1 for g in order if len(g) > 1)


def _bad_rows_error(bad: list, source: str, fmt: str, name: str) -> DataError:
    counts: dict[str, int] = {}
    for _, e in bad:
        counts[e.reason] = counts.get(e.reason, 0) + 1
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.items())
    problems = [f"{source}: {len(bad)} bad row(s) in data set '{name}' (format {fmt}): {summary}"]
    for rec, e in bad[:MAX_REPORTED]:
        problems.append(f"{source}: {rec.where}: field '{e.field}': {e.detail} [{e.reason}]")
    if len(bad) > MAX_REPORTED:
        problems.append(f"... and {len(bad) - MAX_REPORTED} more bad rows")
    problems.append("fix: correct these rows, or set `on_bad_rows: drop` in the data set entry to skip such rows "
                    "(they are counted in the run's data stats)")
    return DataError(problems=problems)


def load_pairs(spec, base_dir: Optional[Path] = None) -> LoadedData:
    """Load, validate and split the preference pairs of a ``harness.schema.DatasetSpec``
    whose source is ``path`` (resolved against ``base_dir``, the suite file's folder, then the
    working directory) or ``hub``. See the module docstring for formats, validation and the
    split. Raises ``DataError`` (bad file, bad rows, nothing left) or ``UserError`` (hub
    unreachable, inconsistent spec)."""
    name = spec.name or spec.path or spec.hub or "?"
    if spec.path and spec.hub:
        raise UserError(f"data set '{name}': set either `path:` or `hub:`, not both")
    if spec.format != "auto" and spec.format not in FORMATS:
        raise UserError(f"data set '{name}': unknown format '{spec.format}'; accepted: auto, " + ", ".join(FORMATS))

    heldout_records = None
    if spec.path:
        if spec.heldout_split:
            raise UserError(f"data set '{name}': `heldout_split` applies to hub data sets only; a local file's "
                            f"held-out pairs are a slice of its rows (set `heldout_size`), so remove heldout_split")
        path = resolve_path(spec.path, base_dir)
        records, file_format = read_rows(path)
        source, seed_key, split_meta = str(path), Path(spec.path).name, {}
    elif spec.hub:
        source = spec.hub
        rows = _load_hub_split(spec.hub, spec.split, name)
        records = [_Record(f"split '{spec.split}' row {i}", i, r) for i, r in enumerate(rows, start=1)]
        if spec.heldout_split:
            rows = _load_hub_split(spec.hub, spec.heldout_split, name)
            heldout_records = [_Record(f"split '{spec.heldout_split}' row {i}", i, r)
                               for i, r in enumerate(rows, start=1)]
        file_format, seed_key, split_meta = "hub", f"{spec.hub}:{spec.split}", {"split": spec.split}
        if not records:
            raise DataError(f"{source}: split '{spec.split}' has no rows")
    else:
        raise UserError(f"data set '{name}': no `path:` or `hub:` to load (embedded `task:` data sets are "
                        f"generated by harness.data.tasks)")

    detected = spec.format == "auto"
    fmt = detect_format(records, source) if detected else spec.format
    pairs, bad = _validate(records, fmt, source, split_meta)
    held_pairs, held_bad = [], []
    if heldout_records is not None:
        held_pairs, held_bad = _validate(heldout_records, fmt, source, {"split": spec.heldout_split})
    all_bad = bad + held_bad
    if all_bad and spec.on_bad_rows == "error":
        raise _bad_rows_error(all_bad, source, fmt, name)

    dropped: dict[str, int] = {}
    for _, e in all_bad:
        dropped[e.reason] = dropped.get(e.reason, 0) + 1
    rows_read = len(records) + len(heldout_records or [])
    counts = f"read {rows_read} rows, dropped {len(all_bad)} ({', '.join(f'{k}: {v}' for k, v in dropped.items()) or 'none'})"
    if not pairs:
        raise DataError(f"{source}: no usable pairs left in data set '{name}' (format {fmt}): {counts}")

    seed = split_seed(seed_key)
    stats: dict[str, Any] = {"source": source, "file_format": file_format, "format": fmt,
                             "format_detected": detected, "rows_read": rows_read,
                             "rows_valid": len(pairs) + len(held_pairs), "dropped": dropped,
                             "dropped_total": len(all_bad), "split_seed": seed}
    if heldout_records is not None:
        if not held_pairs:
            raise DataError(f"{source}: no usable pairs in held-out split '{spec.heldout_split}': {counts}")
        train = list(pairs)
        random.Random(seed).shuffle(train)
        heldout = list(held_pairs)
        random.Random(split_seed(f"{spec.hub}:{spec.heldout_split}")).shuffle(heldout)
        heldout = heldout[:spec.heldout_size]
        per_prompt: dict[str, int] = {}
        for p in train:
            per_prompt[_prompt_key(p.prompt)] = per_prompt.get(_prompt_key(p.prompt), 0) + 1
        stats["heldout_from"] = f"split:{spec.heldout_split}"
        # official splits are used as published; the overlap is reported, not removed
        stats["heldout_prompts_in_train"] = sum(_prompt_key(p.prompt) in per_prompt for p in heldout)
        stats["prompts_with_several_pairs"] = sum(1 for n in per_prompt.values() if n > 1)
    else:
        train, heldout, shared = _heldout_slice(pairs, spec.heldout_size, seed)
        stats["heldout_from"] = "slice"
        stats["prompts_with_several_pairs"] = shared
        if not heldout:
            raise DataError(f"{source}: cannot hold out pairs: every prompt has more than heldout_size="
                            f"{spec.heldout_size} pairs; raise heldout_size")
        if not train:
            raise DataError(f"{source}: data set '{name}' has {len(pairs)} usable pairs and heldout_size="
                            f"{spec.heldout_size} takes them all ({counts}); set heldout_size below {len(pairs)}")

    stats["train_before_cap"] = len(train)
    if spec.train_size is not None:
        train = train[:spec.train_size]

    n_flip = math.floor(spec.label_noise * len(train) + 0.5)  # round half up
    flip = set(random.Random(split_seed("label-noise:" + seed_key)).sample(range(len(train)), n_flip))
    train = [PreferencePair(p.prompt, p.rejected, p.chosen, {**p.meta, "flipped": True}) if i in flip
             else PreferencePair(p.prompt, p.chosen, p.rejected, {**p.meta, "flipped": False})
             for i, p in enumerate(train)]
    stats.update(train=len(train), heldout=len(heldout), label_flipped=n_flip)
    return LoadedData(train=train, heldout=heldout, stats=stats)


__all__ = ["FORMATS", "REASONS", "LoadedData", "BadRow", "load_pairs", "parse_row", "detect_format",
           "read_rows", "resolve_path", "split_seed"]
