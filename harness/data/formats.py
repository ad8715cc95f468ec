"""Row formats of real preference data: parsing and checking one row.

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
ending with a user turn (a system message only first). Each format has a plain-text
*framing* (``PreferencePair.framing``, :mod:`harness.data.render`) used when no chat template
applies. Nothing is tokenized here (``harness.data.tokenize`` does that). Files are read by
:mod:`harness.data.files`, hub splits by :mod:`harness.data.hub`, and :mod:`harness.data.realdata`
puts it together (validation of every row, the held-out split, label noise).

Row validation. A row is bad when a field is missing or null (``missing_field``), has the
wrong type, e.g. non-string content (``wrong_type``), the prompt is empty
(``empty_prompt``), chosen or rejected is empty after stripping whitespace
(``empty_response``), both are the same after stripping (``identical_responses``), the row is
not a JSON object (``not_an_object``), or its structure does not fit the format
(``format_mismatch``: no assistant turn to split at, prompts that differ between chosen and
rejected, a conversation that does not end with a user turn, ...). ``on_bad_rows: error``
reports every bad row (the first ``MAX_REPORTED``, then a count) in one ``DataError``;
``drop`` skips them and counts them per reason in ``stats["dropped"]``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from harness.errors import DataError

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

# The plain-text framing of each format (harness.data.render); a `pairs` row whose prompt is a
# message list is framed "roles" (a message list cannot be verbatim text).
FRAMING: dict[str, str] = {
    "pairs": "text",
    "conversational": "roles",
    "hh-rlhf": "hh",
    "ultrafeedback": "roles",
    "sharegpt": "sharegpt",
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
ROLES = ("system", "user", "assistant")


class BadRow(Exception):
    """One row's problem: ``reason`` (a key of ``REASONS``), the ``field`` and a detail."""

    def __init__(self, reason: str, field: str, detail: str):
        self.reason, self.field, self.detail = reason, field, detail
        super().__init__(f"field '{field}': {detail}")


@dataclass
class Record:
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
assert set(_PARSERS) == set(FORMATS) == set(FRAMING)


class Parsed(NamedTuple):
    prompt: Any  # a string, or a list of {"role", "content"} messages ending with a user turn
    chosen: str
    rejected: str
    meta: dict
    framing: str  # see FRAMING


def parse_row(row: Any, fmt: str) -> Parsed:
    """Parse one row in format ``fmt``; raises :class:`BadRow` naming the reason and the field."""
    if not isinstance(row, dict):
        raise BadRow("not_an_object", "(row)", f"expected a JSON object, got {type(row).__name__}")
    prompt, chosen, rejected, meta = _PARSERS[fmt](row)
    if not chosen.strip():
        raise BadRow("empty_response", "chosen", "empty (after stripping whitespace)")
    if not rejected.strip():
        raise BadRow("empty_response", "rejected", "empty (after stripping whitespace)")
    if chosen.strip() == rejected.strip():
        raise BadRow("identical_responses", "chosen/rejected", "chosen and rejected are the same text")
    framing = "roles" if fmt == "pairs" and isinstance(row.get("prompt"), list) else FRAMING[fmt]
    return Parsed(prompt, chosen, rejected, meta, framing)


def _formats_help() -> str:
    return "; ".join(f"{name}: {keys}" for name, keys in FORMATS.items())


def detect_format(records: list[Record], source: str) -> str:
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
