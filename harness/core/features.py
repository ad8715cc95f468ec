"""Per-token features computed on demand from ``method.needs``, set up by the method's specs.

What to compute comes from ``method.needs``; how, from the typed specs the method returns
from ``feature_settings()`` (``methods.feature_specs``: ``TokenWeightSpec``, ``AnchorSpec``,
``PromptSpec``). This module reads those specs' fields and never a method's hyperparameter.

* ``reference``: per-token log-probs of the frozen reference. Unless the method needs the
  reference's full distribution every step (``token_kl``), they are computed once for the
  examples the run's steps use (``indices``; all by default) and cached on disk under a key of
  (data + tokenization fingerprint, reference weights fingerprint, prompt spec), so every
  method and seed of a suite — and every rerun — shares one reference pass; a run that uses
  examples the cache lacks computes only those and adds them to it. Given up front
  (``ref_logps``, as evaluation does with the held-out pairs' log-probs it has), they are used
  as they are.
* ``token_kl``: KL(pi_ref(.|prefix) || pi_theta(.|prefix)) over the full vocabulary at each
  response position (a reference forward every step over chosen and rejected), computed
  row by row so that no more than one [rows, T, V] float32 temporary exists at a time.
* ``token_weights``: TI-DPO's gradient-attribution weights (``importance.py``). From the
  policy: recomputed every step, taken from the training forward itself when that gives the
  same numbers (``attribution_in_forward``), else from a separate attribution pass before
  it. From the reference: computed once per example the run uses and cached (as the
  reference log-probs are), under a key holding the whole ``TokenWeightSpec`` and ``PromptSpec``.
* ``anchor``: a response per prompt (``anchors.py``). ``AnchorSpec.source="policy"``: sampled
  from the current policy every step; its policy log-probs come from the same forward as
  chosen/rejected, its reference log-probs from a reference forward over the anchor rows
  alone (chosen and rejected come from the cache unless ``token_kl`` runs the reference
  over them anyway). ``source="reference"``: sampled once per training example from the
  reference with a fixed seed and cached with its reference log-probs, so a step runs
  neither sampling nor reference.
* ``PromptSpec.special_tokens="drop"``: every prompt loses the special tokens the tokenizer
  adds to a bare text (``prompts_of``), in every row, sample and cache of this method.

Counts (reference forwards, attribution passes, sampled anchor tokens) accumulate in
``counters``, the run's totals; the training objective logs each step's increase as
``count/*``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from methods.feature_specs import spec_for

from .batch import (Rows, collate, compact, gather_logps, pad_stack, response_logits, selected_logits,
                    sequence_logps)
from ..results.progress import counted, current
from .cache import indexed_load, indexed_save, ragged_load, ragged_save

ANCHOR_SEED = 0  # reference anchors: one fixed seed, so every cell sharing the reference shares them


class CountingModel(torch.nn.Module):
    """Wraps the frozen reference and counts its forward passes (the cache test counts them)."""

    def __init__(self, model, counters: dict):
        super().__init__()
        self.model = model
        self.counters = counters
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

    @property
    def wrapped_model(self):
        return self.model

    def forward(self, *a, **kw):
        self.counters["ref_forward"] = self.counters.get("ref_forward", 0) + 1
        return self.model(*a, **kw)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def token_kl(policy_sel: torch.Tensor, ref_sel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_theta) per position from logits at the response positions [N, T, V].

    Row by row, so one [T, V] float32 temporary at a time; gradient flows into policy_sel."""
    out = []
    for i in range(policy_sel.shape[0]):
        lp = torch.log_softmax(policy_sel[i].float(), dim=-1)
        lr = torch.log_softmax(ref_sel[i].detach().float(), dim=-1)
        out.append((lr.exp() * (lr - lp)).sum(-1))
    return torch.stack(out) * mask


def cache_key(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:20]


def prompt_specials(tokenizer) -> frozenset[int]:
    """The ids a tokenizer adds around a bare text (BOS; ByT5's EOS; BERT's CLS/SEP)."""
    if tokenizer is None:
        return frozenset()
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return frozenset(int(i) for i in ids)


def strip_specials(prompt: list[int], specials: frozenset[int]) -> list[int]:
    """``prompt`` without those ids at its start and end; never empty."""
    a, b = 0, len(prompt)
    while b - a > 1 and prompt[a] in specials:
        a += 1
    while b - a > 1 and prompt[b - 1] in specials:
        b -= 1
    return list(prompt[a:b])


def dropout_active(model) -> bool:
    """Whether a forward of ``model`` in its current modes draws dropout: a dropout module
    with p > 0 in training mode, or a module in training mode holding a positive
    ``*dropout`` rate it applies functionally (Llama's ``attention_dropout``)."""
    for m in model.modules():
        if not m.training:
            continue
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        for name in ("attention_dropout", "dropout", "attn_dropout", "hidden_dropout", "activation_dropout"):
            v = getattr(m, name, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                return True
    return False


def _checkpointing(net) -> bool:
    """Activation (gradient) checkpointing enabled on a transformers model (or none known)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5, 4
        if hasattr(type(net), name) or name in getattr(net, "__dict__", {}):
            return bool(getattr(net, name))
    base = getattr(net, "get_base_model", None)
    return _checkpointing(base()) if callable(base) and base() is not net else False


class _Capture:
    """Forward hook on the input embeddings that keeps their output (made differentiable
    when the embedding table is frozen, e.g. under LoRA)."""

    emb: torch.Tensor | None = None

    def __call__(self, module, args, out):
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
        self.emb = out
        return out


class Features:
    """Fills the TokenBatch fields a method needs. One instance per training run."""

    def __init__(self, method, data, *, ref_model=None, ref_loader=None, cache_dir: Path | None,
                 device, pad_id: int, tokenizer=None, counters: dict | None = None, ref_batch_size: int = 32,
                 indices: Sequence[int] | None = None, ref_logps: dict | None = None, ref_id: str | None = None):
        self.method = method
        # the reference's fingerprint when known up front (the SFT stage records it): a warm
        # cache then needs no reference model, nor hashing its weights
        self.ref_id = ref_id
        # the examples training will read (``train.used_indices``): per-example caches cover these
        self.indices = sorted(set(indices)) if indices is not None else list(range(len(data.prompts)))
        self.needs = method.needs
        self.data = data
        self.device = device
        self.pad_id = pad_id
        self.tok = tokenizer
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.counters = counters if counters is not None else {}
        self.ref_batch_size = ref_batch_size
        self.wspec = spec_for(method, "token_weights") if "token_weights" in self.needs else None
        self.aspec = spec_for(method, "anchor") if "anchor" in self.needs else None
        self.pspec = spec_for(method, "prompt")
        self._specials = prompt_specials(tokenizer) if self.pspec.special_tokens == "drop" else frozenset()
        self.policy_anchors = self.aspec is not None and self.aspec.source == "policy"
        # The reference model runs every step for KL and for policy anchors; otherwise only
        # to fill caches (and not at all when the caches are warm).
        self.per_step_ref = "token_kl" in self.needs or self.policy_anchors
        self._ref = ref_model
        self._ref_loader = ref_loader
        self._ref_fp: str | None = None
        self.ref_logps = self.ref_weights = self.ref_anchors = None
        if "reference" in self.needs and "token_kl" not in self.needs:
            self.ref_logps = ref_logps if ref_logps is not None else self._cached_reference_logps()
        if self.wspec is not None and self.wspec.source == "reference":
            self.ref_weights = self._cached_reference_weights()
        if self.aspec is not None and self.aspec.source == "reference":
            self.ref_anchors = self._cached_reference_anchors()
        if not self.per_step_ref and self._ref is not None and ref_model is None:
            # Everything the reference gives is cached now: free its memory for training.
            self._ref = None

    # ------------------------------------------------------------- reference model
    def ref(self):
        if self._ref is None:
            if self._ref_loader is None:
                raise RuntimeError(f"method {self.method.name!r} needs a reference model but none was given")
            self._ref = self._ref_loader()
        if not isinstance(self._ref, CountingModel):
            self._ref = CountingModel(self._ref, self.counters).to(self.device)
        return self._ref

    def ref_fingerprint(self) -> str:
        if self._ref_fp is None:
            from ..models import weights_fingerprint

            self._ref_fp = weights_fingerprint(self.ref().model)
        return self._ref_fp

    def _cache_path(self, kind: str, extra: str = "") -> tuple[Path | None, dict]:
        meta = {"kind": kind, "data": self.data.fingerprint, "ref": self._ref_id(), "extra": extra, "v": 3}
        if self.cache_dir is None:
            return None, meta
        return self.cache_dir / f"{kind}-{cache_key(json.dumps(meta, sort_keys=True))}.npz", meta

    def _ref_id(self) -> str:
        return self.ref_id or self.ref_fingerprint()

    def spec_key(self, *specs) -> str:
        """Cache key part of whole specs: every field of each (``_Spec.cache_key``)."""
        return json.dumps([s.cache_key() for s in specs])

    def prompts_of(self, prompts: list[list[int]]) -> list[list[int]]:
        """The prompts as this method feeds them (``PromptSpec``)."""
        if not self._specials:
            return prompts
        return [strip_specials(p, self._specials) for p in prompts]

    def _cached_reference_logps(self):
        """``{"chosen": {i: logps}, "rejected": {i: logps}}`` for the examples of ``indices``."""
        path, meta = self._cache_path("ref-logps", self.spec_key(self.pspec))

        def compute(idx):
            d, ref = self.data, self.ref()
            ps = self.prompts_of([d.prompts[i] for i in idx])
            chosen, rejected = [d.chosen[i] for i in idx], [d.rejected[i] for i in idx]
            self.count("ref_pass_tokens", sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(ps, chosen, rejected)))
            # progress.json: the pass's batches, chosen then rejected
            with current().section("reference pass", 2 * -(-len(idx) // self.ref_batch_size)):
                return {"chosen": sequence_logps(ref, ps, chosen, self.pad_id, self.ref_batch_size, self.device),
                        "rejected": sequence_logps(ref, ps, rejected, self.pad_id, self.ref_batch_size, self.device)}

        got, missing = self._indexed(path, meta, compute)
        self.counters["ref_cache_hit"] = int(not missing)
        return got

    def _indexed(self, path, meta, compute) -> tuple[dict, list[int]]:
        """Per-example values for ``self.indices``: what the cache at ``path`` holds, plus
        ``compute(missing indices)`` (``{name: [tensor per index]}``) added to it."""
        have = indexed_load(path, ("chosen", "rejected"), meta)
        missing = [i for i in self.indices if i not in have["chosen"]]
        if missing:
            new = compute(missing)
            for name in have:
                have[name].update(zip(missing, new[name]))
            if path:
                indexed_save(path, have, meta)
        return {name: {i: have[name][i] for i in self.indices} for name in have}, missing

    def _cached_reference_weights(self):
        """Reference-model weights of the examples of ``indices``, before the fallbacks (applied
        per training batch in ``weights``); keyed by the whole weight and prompt specs."""
        from .importance import token_weights

        path, meta = self._cache_path("ref-weights", self.spec_key(self.wspec, self.pspec))

        def compute(idx):
            # "uniform" needs no model; "random" draws are frozen into the cache (documented)
            model = self.ref().model if self.wspec.scheme == "importance" else None
            d, bs = self.data, self.ref_batch_size
            out = {side: [] for side in ("chosen", "rejected")}
            with current().section("reference pass (token weights)", -(-len(idx) // bs)):
                for s in counted(range(0, len(idx), bs)):
                    part = idx[s: s + bs]
                    ps = self.prompts_of([d.prompts[i] for i in part])
                    w = token_weights(model, ps + ps, [d.chosen[i] for i in part] + [d.rejected[i] for i in part],
                                      self.wspec, self.pad_id, self.device, fallback=False)
                    if model is not None:
                        self.count("ref_attribution_passes")
                    out["chosen"].extend(x.cpu() for x in w[: len(ps)])
                    out["rejected"].extend(x.cpu() for x in w[len(ps):])
            return out

        return self._indexed(path, meta, compute)[0]

    def _cached_reference_anchors(self):
        """One anchor per training example sampled from the reference (seed ``ANCHOR_SEED``,
        one seeded draw per batch of ``ref_batch_size`` prompts), with its reference
        log-probs; keyed by the whole anchor and prompt specs and the seed."""
        from .anchors import sample_anchors

        extra = json.dumps([self.spec_key(self.aspec, self.pspec), ANCHOR_SEED, self.ref_batch_size])
        path, meta = self._cache_path("ref-anchors", extra)
        got = ragged_load(path, ("anchor", "ref_logps"), meta) if path else None
        if got is not None:
            return {"anchor": [t.tolist() for t in got["anchor"]], "ref_logps": got["ref_logps"]}
        ref, bs = self.ref(), self.ref_batch_size
        prompts = self.prompts_of(self.data.prompts)
        anchors: list[list[int]] = []
        devices = [self.device] if torch.device(self.device).type == "cuda" else []
        # the random state: the caller's is left as it was; progress.json: sampling, then scoring
        with torch.random.fork_rng(devices=devices), current().section("reference pass (anchors)",
                                                                       2 * -(-len(prompts) // bs)):
            for s in counted(range(0, len(prompts), bs)):
                torch.manual_seed(ANCHOR_SEED * 1_000_003 + s)
                anchors += sample_anchors(ref.model, prompts[s: s + bs], self.aspec, tokenizer=self.tok,
                                          pad_id=self.pad_id, device=self.device)
            logps = sequence_logps(ref, prompts, anchors, self.pad_id, bs, self.device, self.anchor_holes(anchors))
        self.counters["ref_anchor_tokens"] = sum(map(len, anchors))
        if path:
            ragged_save(path, {"anchor": [torch.tensor(a, dtype=torch.long) for a in anchors],
                                "ref_logps": logps}, meta)
        return {"anchor": anchors, "ref_logps": logps}

    # ------------------------------------------------------------------ per step
    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def anchor_holes(self, anchors: list[list[int]]) -> list[list[bool]] | None:
        from .anchors import holes

        return holes(anchors, self.pad_id, self.aspec)

    def anchors(self, model, prompts, idx) -> list[list[int]]:
        if self.ref_anchors is not None:
            return [list(self.ref_anchors["anchor"][i]) for i in idx]
        from .anchors import sample_anchors

        out = sample_anchors(model, prompts, self.aspec, tokenizer=self.tok, pad_id=self.pad_id, device=self.device)
        self.count("anchor_tokens", sum(map(len, out)))
        return out

    def attribution_in_forward(self, model) -> bool:
        """Whether this step's token weights come from the training forward: policy-source
        gradient attribution, with gradients on, and a forward that equals the attribution's
        own eval-mode forward (no dropout drawn; no activation checkpointing, whose
        recomputation ``autograd.grad`` cannot drive)."""
        from .importance import unwrap

        s = self.wspec
        if s is None or self.ref_weights is not None or s.scheme != "importance" or s.source != "policy":
            return False
        net = unwrap(model)
        ckpt = net.training and _checkpointing(net)
        return torch.is_grad_enabled() and not ckpt and not dropout_active(net)

    @contextlib.contextmanager
    def capture_embeddings(self, model, on: bool):
        """Keeps the input embeddings of the forward run inside (``on``); yields the capture."""
        cap = _Capture()
        if not on:
            yield cap
            return
        from .importance import unwrap

        handle = unwrap(model).get_input_embeddings().register_forward_hook(cap)
        try:
            yield cap
        finally:
            handle.remove()

    def weights(self, model, idx, prompts, chosen, rejected) -> tuple[list, list] | None:
        """Token weights for chosen and rejected (one attribution pass for both sides), when
        they do not come from the training forward. Called before the policy forward so the
        two graphs never coexist."""
        if self.wspec is None:
            return None
        B = len(idx)
        if self.ref_weights is not None:
            w = [self.ref_weights["chosen"][i] for i in idx] + [self.ref_weights["rejected"][i] for i in idx]
        else:
            from .importance import token_weights

            w = token_weights(model, prompts + prompts, chosen + rejected, self.wspec, self.pad_id, self.device,
                              fallback=False)
            if self.wspec.scheme == "importance":
                self.count("importance_passes")
        from .importance import apply_fallback

        w = apply_fallback(w, self.wspec)
        return w[:B], w[B:]

    def weights_from_forward(self, cap: _Capture, logits, rows: Rows, prompts, chosen, rejected):
        """Policy weights from the training forward's own graph: ``dL/de`` of its captured
        input embeddings (``importance.raw_from_forward``), then the usual combination."""
        from .importance import apply_fallback, combine, raw_from_forward, span

        B = len(chosen)
        full = raw_from_forward(cap.emb, logits, rows, 2 * B)
        resp = chosen + rejected
        w = [combine(f[len(f) - span(p, r, self.wspec):], len(r), self.wspec)
             for f, p, r in zip(full, prompts + prompts, resp)]
        self.count("importance_from_forward")
        w = apply_fallback(w, self.wspec)
        return w[:B], w[B:]

    def fill(self, kw: dict, logits, rows: Rows, idx, prompts, anchors, weights) -> None:
        """Adds the reference, KL, anchor-reference and weight tensors to ``kw``."""
        B = len(idx)
        Tc, Tr = kw["chosen_mask"].shape[1], kw["rejected_mask"].shape[1]
        if "token_kl" in self.needs:
            # KL needs the reference's logits over chosen and rejected; per-step anchors ride along
            n = rows.input_ids.shape[0] if self.policy_anchors else 2 * B
            with torch.no_grad():
                ref_logits = response_logits(self.ref(), _slice_rows(rows, 0, n))
                ref_lp = gather_logps(ref_logits, _slice_rows(rows, 0, n))
            kw["ref_chosen_logps"] = ref_lp[:B, :Tc]
            kw["ref_rejected_logps"] = ref_lp[B:2 * B, :Tr]
            if anchors is not None and self.policy_anchors:
                kw["ref_anchor_logps"] = compact(ref_lp[2 * B:], rows.resp_mask[2 * B:])[0]
            pol_sel = selected_logits(logits[: 2 * B], _slice_rows(rows, 0, 2 * B))
            with torch.no_grad():
                ref_sel = selected_logits(ref_logits[: 2 * B], _slice_rows(rows, 0, 2 * B))
            kl = token_kl(pol_sel, ref_sel, rows.resp_mask[: 2 * B])
            kw["chosen_kl"] = kl[:B, :Tc]
            kw["rejected_kl"] = kl[B:, :Tr]
        elif "reference" in self.needs:
            kw["ref_chosen_logps"] = pad_stack([self.ref_logps["chosen"][i] for i in idx], Tc).to(self.device)
            kw["ref_rejected_logps"] = pad_stack([self.ref_logps["rejected"][i] for i in idx], Tr).to(self.device)
        if anchors is not None and "ref_anchor_logps" not in kw:
            kw["ref_anchor_logps"] = self._ref_anchor_logps(idx, prompts, anchors, kw["anchor_mask"].shape[1])
        if weights is not None:
            wc, wr = weights
            kw["chosen_weights"] = pad_stack([w.float().cpu() for w in wc], Tc).to(self.device)
            kw["rejected_weights"] = pad_stack([w.float().cpu() for w in wr], Tr).to(self.device)

    def _ref_anchor_logps(self, idx, prompts, anchors, Ta: int) -> torch.Tensor:
        """Reference log-probs of the anchors: from the anchor cache, or a reference forward
        over the anchor rows alone."""
        if self.ref_anchors is not None:
            return pad_stack([self.ref_anchors["ref_logps"][i] for i in idx], Ta).to(self.device)
        if Ta == 0:
            return torch.zeros((len(idx), 0), device=self.device)
        rows = collate(prompts, anchors, self.pad_id, self.anchor_holes(anchors)).to(self.device)
        with torch.no_grad():
            lp = gather_logps(response_logits(self.ref(), rows), rows)
        return compact(lp, rows.resp_mask)[0]


def _slice_rows(rows: Rows, a: int, b: int) -> Rows:
    return Rows(rows.input_ids[a:b], rows.attention_mask[a:b], rows.resp_pos[a:b], rows.resp_ids[a:b],
                rows.resp_mask[a:b], rows.keep, rows.n_tokens)
