"""What a prompt and a response are as chat messages, or as plain text when no chat template applies.

With a chat template (the tokenizer has one and the model's ``chat_template`` is on), a pair
is a conversation: the prompt's messages (a string prompt is one user turn), then the response
as one assistant turn; the template decides every marker. This is TRL's *conversational* form.

Without one, the pair is rendered as plain text in its format's own framing (TRL's *standard*
form: the prompt text, then the response text, then the tokenizer's EOS), the same way for
single- and multi-turn prompts. ``PreferencePair.framing`` names it:

========== ===================================================================================
framing    prompt text, then response text (``{u}`` user, ``{a}`` earlier assistant turn,
           ``{s}`` system message, ``{r}`` the response)
========== ===================================================================================
text       the prompt string verbatim, then the response verbatim (``pairs`` rows with a
           string prompt, embedded tasks): the data carry their own separators
hh         ``"\\n\\nHuman: {u}\\n\\nAssistant: {a}\\n\\nHuman: {u}\\n\\nAssistant:"``, then
           ``" {r}"``: Anthropic HH-RLHF's own transcript, byte for byte (a ``hh-rlhf`` row's
           ``chosen`` is exactly prompt + response)
sharegpt   ``"System: {s}\\nHuman: {u}\\nAssistant: {a}\\nHuman: {u}\\nAssistant:"``, then
           ``" {r}"``: the role names of LLaMA-Factory's ``default`` template, one turn per
           line, without the EOS tokens that template puts between turns (an EOS inside the
           prompt would read as "the conversation ended")
roles      as ``sharegpt`` with ``User`` for the user role (``conversational`` and
           ``ultrafeedback`` rows, and message-list prompts of ``pairs`` rows)
========== ===================================================================================

The prompt text ends right after ``Assistant:`` and the response starts with its space, so the
boundary never falls inside a word (a BPE tokenizer would merge ``": "`` + ``"Paris"``
differently from ``":"`` + ``" Paris"``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from .pairs import PreferencePair, Prompt, SFTExample


@dataclass(frozen=True)
class Framing:
    """Plain-text turn markers: each turn is ``sep + label + ": " + content``; the prompt ends
    with ``sep + assistant + ":"`` and the response is ``" " + response``. The first turn
    has no ``sep`` when ``lead`` is False."""

    user: str
    assistant: str
    system: str
    sep: str
    lead: bool  # the first turn also starts with ``sep``


FRAMINGS: dict[str, Optional[Framing]] = {
    "text": None,  # verbatim
    "hh": Framing("Human", "Assistant", "System", "\n\n", lead=True),
    "sharegpt": Framing("Human", "Assistant", "System", "\n", lead=False),
    "roles": Framing("User", "Assistant", "System", "\n", lead=False),
}


def framing_of(framing: Optional[str], prompt: Prompt) -> str:
    """The framing that applies: ``framing`` as given, else ``text`` for a string prompt and
    ``roles`` for a message list (a message list cannot be verbatim text)."""
    if framing is None or (framing == "text" and not isinstance(prompt, str)):
        return "text" if isinstance(prompt, str) else "roles"
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; one of {', '.join(FRAMINGS)}")
    return framing


def messages(prompt: Prompt) -> list[dict]:
    """The prompt as chat messages: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def plain_prompt(prompt: Prompt, framing: Optional[str] = None) -> str:
    """The prompt as plain text in ``framing`` (see the module docstring)."""
    name = framing_of(framing, prompt)
    f = FRAMINGS[name]
    if f is None:
        return prompt
    labels = {"user": f.user, "assistant": f.assistant, "system": f.system}
    turns = [f"{labels[m['role']]}: {m['content']}" for m in messages(prompt)] + [f"{f.assistant}:"]
    return (f.sep if f.lead else "") + f.sep.join(turns)


def plain_response(response: str, prompt: Prompt, framing: Optional[str] = None) -> str:
    """The response as plain text in ``framing`` (EOS not included)."""
    return response if FRAMINGS[framing_of(framing, prompt)] is None else " " + response


def examples_of(examples: Iterable) -> Iterable[tuple[Prompt, list[str], Optional[str]]]:
    """``(prompt, responses, framing)`` for PreferencePairs (two responses: chosen,
    rejected) and SFT examples (one), the latter as :class:`SFTExample` or plain tuples."""
    for ex in examples:
        if isinstance(ex, PreferencePair):
            yield ex.prompt, [ex.chosen, ex.rejected], ex.framing
        else:
            ex = SFTExample(*ex)
            yield ex.prompt, [ex.response], ex.framing


def plain_texts(*groups: Iterable) -> list[str]:
    """Every rendered prompt and response text of the examples in ``groups`` (pairs and SFT
    examples), sorted and without duplicates: what a tiny tokenizer's vocabulary is built
    from. Both sides of every pair count, so no character or merge exists on one side only;
    the order of the data (and which side a label-noise flip put a response on) does not
    change the result."""
    out: set[str] = set()
    for group in groups:
        for prompt, responses, framing in examples_of(group):
            out.add(plain_prompt(prompt, framing))
            out.update(plain_response(r, prompt, framing) for r in responses)
    return sorted(out)
