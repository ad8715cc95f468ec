"""The one in-memory form of a preference example that every loader produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

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
