"""The one in-memory form of a preference example that every loader produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Union

# A prompt is either a plain string (used verbatim, or wrapped as one user turn when the
# tokenizer has a chat template) or a list of chat messages [{"role": ..., "content": ...}]
# ending with a user turn. chosen/rejected are the assistant responses (plain strings).
Prompt = Union[str, list]


@dataclass
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str
    # Free-form: the embedded tasks keep what their oracle needs here (e.g. the correct
    # answer); loaders keep the source file and row for error messages.
    meta: dict[str, Any] = field(default_factory=dict)
    # How the pair reads as plain text when no chat template applies (harness.data.render):
    # "text" (prompt and response verbatim), "hh" (Anthropic HH-RLHF's "\n\nHuman:" /
    # "\n\nAssistant:" turns), "sharegpt" (LLaMA-Factory's Human/Assistant/System roles) or
    # "roles" (User/Assistant/System). None: "text" for a string prompt, "roles" otherwise.
    framing: Optional[str] = None


class SFTExample(NamedTuple):
    """One SFT example: a prompt, the response to learn, and the plain-text framing (as
    :class:`PreferencePair`'s). Plain ``(prompt, response)`` tuples are accepted too."""

    prompt: Prompt
    response: str
    framing: Optional[str] = None
