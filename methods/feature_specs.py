"""Feature settings: how the training core should compute a feature a method ``needs``.

A method that needs ``token_weights`` or ``anchor`` (or wants its prompts fed differently)
returns typed specs from ``PreferenceMethod.feature_settings()``, keyed by what they set up:

    {"token_weights": TokenWeightSpec(...), "anchor": AnchorSpec(...), "prompt": PromptSpec(...)}

The core reads these fields and nothing else of the method: it never looks a method's
hyperparameters up by name, so a method may call its knobs what its paper calls them and map
them onto a spec. A missing entry means the defaults of that spec. Every field is part of
the spec's ``cache_key()``, so anything the core caches from a spec (reference-model token
weights, reference anchors) is recomputed when any setting changes, a setting added later
included.

This module imports no torch (the report and ``validate`` read it). Value checks: each spec
checks its fields against their annotations when built (``Literal`` choices, ``Range``
bounds), with the one typed checker of ``methods.settings``; the method's own
hyperparameters are checked by the method class as usual.

The two conventions (``"paper"`` / ``"released"``) exist because TI-DPO's paper (arXiv
2505.19653 v3) and its released code (gracefulning/TIDPO @ e04a0926) compute the weights and
anchors differently; ``harness/core/importance.py`` and ``harness/core/anchors.py`` document
each named behaviour, and REFERENCE.md ("TI-DPO") the sources.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Annotated, Literal

from .settings import Range, SettingError, check_value

__all__ = ["AnchorSpec", "PromptSpec", "SpecError", "TokenWeightSpec", "spec_for"]


class SpecError(SettingError):
    """A feature setting outside its declared choices or range (``path``: spec name, field)."""


def _check_fields(spec) -> None:
    """Check every field of a spec dataclass against its annotation (choices, range, type)
    with the one typed checker every setting goes through (``methods.settings``)."""
    hints = typing.get_type_hints(type(spec), include_extras=True)
    for f in dataclasses.fields(spec):
        ann, rng = hints[f.name], None
        if typing.get_origin(ann) is Annotated:
            ann, *meta = typing.get_args(ann)
            rng = next((m for m in meta if isinstance(m, Range)), None)
        try:
            check_value(getattr(spec, f.name), ann, rng, path=(type(spec).__name__, f.name))
        except SettingError as e:
            raise SpecError(e.reason, e.path) from None


class _Spec:
    def __post_init__(self):
        _check_fields(self)

    def cache_key(self) -> str:
        """Every field with its value, and the spec's name: two specs share cached results
        only when they are equal field for field (a field added later changes the key)."""
        return json.dumps({"spec": type(self).__name__, **dataclasses.asdict(self)}, sort_keys=True)


@dataclass(frozen=True)
class TokenWeightSpec(_Spec):
    """How the core computes ``TokenBatch.chosen_weights`` / ``rejected_weights``.

    scheme: "importance" (gradient attribution), or the paper's Table 2 ablations "uniform"
      (all ones, no model pass) and "random" (Uniform[0, 1) draws instead of attribution).
    source: the model whose gradient is attributed: "policy" (every step) or "reference"
      (frozen, so computed once per example and cached).
    convention: "paper" (Eqs. 5-8: normalized over the response, unnormalized prior
      sigma = T/div, a non-finite row -> ones) or "released" (the released code: normalized
      over the whole prompt + response span S and rescaled to sum S, normalized prior with
      sigma = max(1, S/div) and div = max(1, prior_sigma_div), its NaN / zero / inf fallbacks).
    mix: lambda in ``w = lambda I + (1 - lambda) P``.
    prior: "gaussian", or the Table 2 ablations "none" (w = I) and "softmax" (I normalized
      with a softmax).
    prior_sigma_div: sigma = length / prior_sigma_div.
    """

    scheme: Literal["importance", "uniform", "random"] = "importance"
    source: Literal["policy", "reference"] = "policy"
    convention: Literal["paper", "released"] = "paper"
    mix: Annotated[float, Range(ge=0, le=1)] = 0.7
    prior: Literal["gaussian", "none", "softmax"] = "gaussian"
    prior_sigma_div: Annotated[float, Range(gt=0)] = 4.0


@dataclass(frozen=True)
class AnchorSpec(_Spec):
    """How the core obtains the anchor response of each pair (TI-DPO's triplet term).

    source: "policy" samples one response per prompt from the current policy every step
      (the paper and the released code); "reference" samples it once per training example
      from the frozen reference (fixed seed) and caches it with its reference log-probs, so a
      step pays no sampling and no reference forward for it (a cheaper, documented departure).
    convention: "paper" (eval mode, stops at every EOS id the tokenizer and the model declare,
      the stop token is scored) or "released" (the model's own train/eval mode, so dropout is
      on during training; stops only at the tokenizer's EOS; every generated token equal to
      the pad id is left unscored, so with pad == eos the anchor's EOS is not scored).
    max_new_tokens, temperature, top_k (0 = off), top_p: the sampling settings.
    """

    source: Literal["policy", "reference"] = "policy"
    convention: Literal["paper", "released"] = "paper"
    max_new_tokens: Annotated[int, Range(ge=1)] = 64
    temperature: Annotated[float, Range(gt=0)] = 0.8
    top_k: Annotated[int, Range(ge=0)] = 50
    top_p: Annotated[float, Range(gt=0, le=1)] = 0.95


@dataclass(frozen=True)
class PromptSpec(_Spec):
    """How the core feeds each prompt to the models for this method.

    special_tokens: "keep" uses the tokenized prompt as is; "drop" removes the special
      tokens the tokenizer adds to a bare text (BOS, or an appended EOS) from the start and
      end of every prompt, as the released TI-DPO pipeline tokenizes prompts with
      ``add_special_tokens=False``. A prompt is never emptied.
    """

    special_tokens: Literal["keep", "drop"] = "keep"


_DEFAULTS = {"token_weights": TokenWeightSpec, "anchor": AnchorSpec, "prompt": PromptSpec}


def spec_for(method, key: str):
    """The method's spec for ``key`` (``"token_weights"``, ``"anchor"`` or ``"prompt"``), or
    that spec's defaults when the method declares none."""
    if key not in _DEFAULTS:
        raise KeyError(f"unknown feature setting {key!r}; known: {', '.join(_DEFAULTS)}")
    get = getattr(method, "feature_settings", None)
    got = (get() if callable(get) else {}).get(key)
    if got is None:
        return _DEFAULTS[key]()
    if not isinstance(got, _DEFAULTS[key]):
        raise SpecError(f"{getattr(method, 'name', method)}.feature_settings()[{key!r}] must be a "
                        f"{_DEFAULTS[key].__name__}, got {type(got).__name__}")
    return got
