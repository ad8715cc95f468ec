"""Rows of (prompt, response) token ids -> one padded model input, and per-token log-probs.

Response token t of a row sits at absolute position ``p = len(prompt) + t`` and is predicted
by the logits at ``p - 1``. Responses are at the end of each row (right padding after them),
so the model only needs logits for the last ``keep`` positions (``logits_to_keep``): the
LM head never runs on most prompt tokens, and no [N, T, V] gather copy is made.

``room_for`` caps a generation so prompt + response stays inside the model's position table
(anchor sampling here, evaluation's greedy and sampled answers in ``harness.evaluate``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..results.progress import counted


@dataclass
class Rows:
    input_ids: torch.Tensor  # [N, L] long
    attention_mask: torch.Tensor  # [N, L] long
    resp_pos: torch.Tensor  # [N, T] long: logit position (within the kept window) predicting token t
    resp_ids: torch.Tensor  # [N, T] long: response token ids (pad_id on padding)
    resp_mask: torch.Tensor  # [N, T] float
    keep: int  # number of trailing positions whose logits are needed
    n_tokens: int  # real (non-pad) tokens in the batch

    def to(self, device) -> "Rows":
        return Rows(self.input_ids.to(device), self.attention_mask.to(device), self.resp_pos.to(device),
                    self.resp_ids.to(device), self.resp_mask.to(device), self.keep, self.n_tokens)


def collate(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
            holes: list[list[bool]] | None = None) -> Rows:
    """One right-padded batch of prompt + response rows. ``holes[i][t]`` (optional) marks
    response token t of row i as a hole: it keeps its position slot but is neither attended
    to nor scored (mask 0), as the released TI-DPO code scores its anchors (``anchors.py``)."""
    # Built as Python lists and converted once: per-row tensor writes cost more than the
    # tiny models' forward pass.
    if any(len(p) == 0 for p in prompts):
        # The logits predicting response token 0 sit at the prompt's last position.
        raise ValueError("every prompt needs at least one token (an empty prompt has no position "
                         "that predicts the first response token)")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    L = max(lengths)
    T = max(len(r) for r in responses)
    first = min(len(p) for p in prompts) - 1  # earliest logit position we need
    ids, att, rid, rmask, pos = [], [], [], [], []
    for i, (p, r, n) in enumerate(zip(prompts, responses, lengths)):
        real = [0.0 if h else 1.0 for h in holes[i]] if holes is not None and holes[i] else [1.0] * len(r)
        ids.append(p + r + [pad_id] * (L - n))
        att.append([1] * len(p) + [int(x) for x in real] + [0] * (L - n))
        rid.append(r + [pad_id] * (T - len(r)))
        rmask.append(real + [0.0] * (T - len(r)))
        start = len(p) - 1 - first
        # padded slots point at a valid position; the mask zeroes them
        pos.append(list(range(start, start + len(r))) + [start] * (T - len(r)))
    return Rows(torch.tensor(ids), torch.tensor(att), torch.tensor(pos), torch.tensor(rid),
                torch.tensor(rmask), L - first, int(sum(lengths)))


def compact(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's values at its real positions (mask > 0), moved to the front in order, and
    the matching mask: [N, T] -> [N, T'] with T' the most real positions of a row. Keeps the
    gradient. Rows without holes come back unchanged (up to the width)."""
    keep = mask > 0
    n = keep.sum(-1)
    width = int(n.max()) if n.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[:, :width]
    out_mask = (torch.arange(width, device=mask.device)[None, :] < n[:, None]).to(mask.dtype)
    return x.gather(1, order) * out_mask.to(x.dtype), out_mask


_KEEP_CACHE: dict[type, bool] = {}


def _supports_keep(model) -> bool:
    model = getattr(model, "wrapped_model", model)  # the core's counting wrapper of the reference
    base = getattr(model, "get_base_model", lambda: model)()
    cls = type(base)
    if cls not in _KEEP_CACHE:
        _KEEP_CACHE[cls] = "logits_to_keep" in inspect.signature(cls.forward).parameters
    return _KEEP_CACHE[cls]


def response_logits(model, rows: Rows) -> torch.Tensor:
    """Logits of the last ``rows.keep`` positions, [N, keep, V]."""
    kw = {}
    if _supports_keep(model):
        kw["logits_to_keep"] = rows.keep
    out = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask, use_cache=False, **kw)
    logits = out.logits
    if logits.shape[1] != rows.keep:
        logits = logits[:, -rows.keep:]
    return logits


def gather_logps(logits: torch.Tensor, rows: Rows) -> torch.Tensor:
    """Per-token log-probs of the response tokens, [N, T] float32, 0 on padding.

    log p(y_t) = logit[y_t] - logsumexp(logits), evaluated only at response positions."""
    idx = rows.resp_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    # Select the response positions first (T <= keep), then normalize in float32.
    sel = logits.gather(1, idx).float()
    logp = sel.gather(-1, rows.resp_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(sel, dim=-1)
    return logp * rows.resp_mask


def selected_logits(logits: torch.Tensor, rows: Rows) -> torch.Tensor:
    """Logits at the response positions, [N, T, V] (for full-distribution features)."""
    idx = rows.resp_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, idx)


def by_length(lengths: list[int]) -> list[int]:
    """Indices ordered longest first (ties in input order): batches of similar lengths carry
    little padding, and the largest batch comes first, so running out of memory shows at once."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def sequence_logps(model, prompts, responses, pad_id: int, batch_size: int, device,
                   holes: list[list[bool]] | None = None) -> list[torch.Tensor]:
    """Per-token log-probs of each response (no grad), in input order, as CPU float32 tensors
    (with ``holes``: of its scored tokens only, see ``collate``). Rows are batched by length
    (``by_length``); each row's values do not depend on its batch beyond float rounding."""
    out: list[torch.Tensor | None] = [None] * len(prompts)
    order = by_length([len(p) + len(r) for p, r in zip(prompts, responses)])
    with torch.no_grad():
        for s in counted(range(0, len(order), batch_size)):  # batches of the job's stage (progress.json)
            part = order[s: s + batch_size]
            h = [holes[i] for i in part] if holes is not None else None
            rows = collate([prompts[i] for i in part], [responses[i] for i in part], pad_id, h).to(device)
            lp = gather_logps(response_logits(model, rows), rows).cpu()
            mask = rows.resp_mask.cpu()
            for k, i in enumerate(part):
                out[i] = lp[k][mask[k] > 0].clone()
    return out


def pad_stack(seqs: list[torch.Tensor], T: int | None = None) -> torch.Tensor:
    T = T or max(len(s) for s in seqs)
    out = torch.zeros((len(seqs), T), dtype=torch.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


# ------------------------------------------------------------------ position limits
def position_limit(model) -> int | None:
    """How many positions the model can attend over (learned position tables end there;
    rotary models are still only trained up to it)."""
    cfg = getattr(getattr(model, "get_base_model", lambda: model)(), "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def room_for(model, prompt_len: int, max_new_tokens: int) -> int:
    """``max_new_tokens`` capped so prompt + generation stays inside the position table."""
    limit = position_limit(model)
    return max_new_tokens if limit is None else max(0, min(max_new_tokens, limit - prompt_len))
