"""Per-token features computed on demand from ``method.needs``.

* ``reference``: per-token log-probs of the frozen reference. When nothing else needs the
  reference model every step, they are computed once for the whole training set and cached
  on disk under a key of (data + tokenization fingerprint, reference weights fingerprint),
  so every method and seed of a suite — and every rerun — shares one reference pass.
* ``token_kl``: KL(pi_ref(.|prefix) || pi_theta(.|prefix)) over the full vocabulary at each
  response position (a reference forward every step), computed row by row so that no more
  than one [rows, T, V] float32 temporary exists at a time.
* ``token_weights``: TI-DPO's gradient-attribution weights (``importance.py``), from the
  policy (recomputed every step, as released) or from the reference (computed once per
  example and cached).
* ``anchor``: a response sampled from the current policy (``anchors.py``) — its policy
  log-probs come from the same forward as chosen/rejected, its reference log-probs from the
  reference forward.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .batch import Rows, collate, gather_logps, pad_stack, response_logits, selected_logits, sequence_logps


class CountingModel(torch.nn.Module):
    """Wraps the frozen reference and counts its forward passes (the cache test counts them)."""

    def __init__(self, model, counters: dict):
        super().__init__()
        self.model = model
        self.counters = counters
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

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


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _ragged_save(path: Path, seqs: dict[str, list[torch.Tensor]], meta: dict) -> None:
    from ..results import atomic_write_bytes

    arrays = {}
    for name, lst in seqs.items():
        arrays[f"{name}_lens"] = np.array([len(s) for s in lst], dtype=np.int64)
        arrays[f"{name}_flat"] = (torch.cat(lst).numpy().astype(np.float32) if lst else np.zeros(0, np.float32))
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _npz_bytes(arrays))


def _ragged_load(path: Path, names: tuple[str, ...], meta: dict) -> dict[str, list[torch.Tensor]] | None:
    if not path.is_file():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        if json.loads(bytes(z["meta"]).decode()) != json.loads(json.dumps(meta, sort_keys=True)):
            return None  # key collision or stale entry: never reuse
        out = {}
        for name in names:
            lens, flat = z[f"{name}_lens"], torch.from_numpy(z[f"{name}_flat"].copy())
            out[name] = list(torch.split(flat, lens.tolist()))
        return out
    except Exception:
        return None


def cache_key(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:20]


class Features:
    """Fills the TokenBatch fields a method needs. One instance per training run."""

    def __init__(self, method, data, *, ref_model=None, ref_loader=None, cache_dir: Path | None,
                 device, pad_id: int, tokenizer=None, counters: dict | None = None, ref_batch_size: int = 32):
        self.method = method
        self.needs = method.needs
        self.data = data
        self.device = device
        self.pad_id = pad_id
        self.tok = tokenizer
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.counters = counters if counters is not None else {}
        self.ref_batch_size = ref_batch_size
        hp = method.hparams
        self.weight_source = hp.get("importance_source", "policy")
        # The reference model is needed every step for KL and anchors; otherwise only to
        # fill caches (and not at all when the caches are warm).
        self.per_step_ref = bool(self.needs & {"token_kl", "anchor"})
        self._ref = ref_model
        self._ref_loader = ref_loader
        self._ref_fp: str | None = None
        self.ref_logps: dict[str, list[torch.Tensor]] | None = None
        self.ref_weights: dict[str, list[torch.Tensor]] | None = None
        if "reference" in self.needs and not self.per_step_ref:
            self.ref_logps = self._cached_reference_logps()
        if "token_weights" in self.needs and self.weight_source == "reference":
            self.ref_weights = self._cached_reference_weights()
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
        meta = {"kind": kind, "data": self.data.fingerprint, "ref": self._ref_id(), "extra": extra, "v": 1}
        if self.cache_dir is None:
            return None, meta
        return self.cache_dir / f"{kind}-{cache_key(json.dumps(meta, sort_keys=True))}.npz", meta

    def _ref_id(self) -> str:
        # Callers may supply the fingerprint up front (e.g. the SFT stage records it), so a
        # warm cache needs no reference model at all.
        return getattr(self, "ref_id", None) or self.ref_fingerprint()

    def _cached_reference_logps(self):
        path, meta = self._cache_path("ref-logps")
        got = _ragged_load(path, ("chosen", "rejected"), meta) if path else None
        if got is not None:
            self.counters["ref_cache_hit"] = 1
            return got
        self.counters["ref_cache_hit"] = 0
        ref = self.ref()
        d = self.data
        out = {
            "chosen": sequence_logps(ref, d.prompts, d.chosen, self.pad_id, self.ref_batch_size, self.device),
            "rejected": sequence_logps(ref, d.prompts, d.rejected, self.pad_id, self.ref_batch_size, self.device),
        }
        if path:
            _ragged_save(path, out, meta)
        return out

    def _cached_reference_weights(self):
        from .importance import token_weights

        hp = self.method.hparams
        extra = json.dumps({k: hp.get(k) for k in sorted(hp) if k.startswith(("importance", "prior", "weight"))})
        path, meta = self._cache_path("ref-weights", extra)
        got = _ragged_load(path, ("chosen", "rejected"), meta) if path else None
        if got is not None:
            return got
        # "uniform" needs no model; "random" draws are frozen into the cache (documented)
        model = self.ref().model if hp.get("weight_scheme", "importance") == "importance" else None
        d = self.data
        out = {side: [] for side in ("chosen", "rejected")}
        for s in range(0, len(d), self.ref_batch_size):
            ps = d.prompts[s: s + self.ref_batch_size]
            c, r = d.chosen[s: s + self.ref_batch_size], d.rejected[s: s + self.ref_batch_size]
            w = token_weights(model, ps + ps, c + r, hp, self.pad_id, self.device)
            out["chosen"].extend(x.cpu() for x in w[: len(ps)])
            out["rejected"].extend(x.cpu() for x in w[len(ps):])
        if path:
            _ragged_save(path, out, meta)
        return out

    # ------------------------------------------------------------------ per step
    def anchors(self, model, prompts, idx, ctx) -> list[list[int]]:
        from .anchors import sample_anchors

        hp = self.method.hparams
        return sample_anchors(model, prompts, tokenizer=self.tok, pad_id=self.pad_id, device=self.device,
                              max_new_tokens=hp.get("anchor_max_new_tokens", 64),
                              temperature=hp.get("anchor_temperature", 0.8),
                              top_k=hp.get("anchor_top_k", 50), top_p=hp.get("anchor_top_p", 0.95))

    def weights(self, model, idx, prompts, chosen, rejected) -> tuple[list, list] | None:
        """Token weights for chosen and rejected (one attribution pass for both sides).
        Called before the policy forward so the two graphs never coexist."""
        if "token_weights" not in self.needs:
            return None
        if self.ref_weights is not None:
            return [self.ref_weights["chosen"][i] for i in idx], [self.ref_weights["rejected"][i] for i in idx]
        from .importance import token_weights

        w = token_weights(model, prompts + prompts, chosen + rejected, self.method.hparams, self.pad_id, self.device)
        self.counters["importance_passes"] = self.counters.get("importance_passes", 0) + 1
        return w[: len(idx)], w[len(idx):]

    def fill(self, kw: dict, model, logits, rows: Rows, idx, prompts, chosen, rejected, anchors, ctx,
             weights=None) -> None:
        B = len(idx)
        Tc, Tr = kw["chosen_mask"].shape[1], kw["rejected_mask"].shape[1]
        if self.per_step_ref:
            with torch.no_grad():
                ref_logits = response_logits(self.ref(), rows)
                ref_lp = gather_logps(ref_logits, rows)
            kw["ref_chosen_logps"] = ref_lp[:B, :Tc]
            kw["ref_rejected_logps"] = ref_lp[B:2 * B, :Tr]
            if anchors is not None:
                kw["ref_anchor_logps"] = ref_lp[2 * B:, : kw["anchor_mask"].shape[1]]
            if "token_kl" in self.needs:
                pol_sel = selected_logits(logits[: 2 * B], _slice_rows(rows, 0, 2 * B))
                with torch.no_grad():
                    ref_sel = selected_logits(ref_logits[: 2 * B], _slice_rows(rows, 0, 2 * B))
                kl = token_kl(pol_sel, ref_sel, rows.resp_mask[: 2 * B])
                kw["chosen_kl"] = kl[:B, :Tc]
                kw["rejected_kl"] = kl[B:, :Tr]
        elif "reference" in self.needs:
            kw["ref_chosen_logps"] = pad_stack([self.ref_logps["chosen"][i] for i in idx], Tc).to(self.device)
            kw["ref_rejected_logps"] = pad_stack([self.ref_logps["rejected"][i] for i in idx], Tr).to(self.device)
        if weights is not None:
            wc, wr = weights
            kw["chosen_weights"] = pad_stack([w.float().cpu() for w in wc], Tc).to(self.device)
            kw["rejected_weights"] = pad_stack([w.float().cpu() for w in wr], Tr).to(self.device)


def _slice_rows(rows: Rows, a: int, b: int) -> Rows:
    return Rows(rows.input_ids[a:b], rows.attention_mask[a:b], rows.resp_pos[a:b], rows.resp_ids[a:b],
                rows.resp_mask[a:b], rows.keep, rows.n_tokens)
