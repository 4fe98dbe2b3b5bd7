"""One batched forward over per-sequence KV-cache rows, each row with its own attention pattern.

Every Nemotron forward is "these tokens, at these positions, over the row's cached prefix": the
prompt (prefill), a block being denoised, a finished block re-encoded, one AR token, a draft or a
verify block. A row's queries see the whole valid prefix `[0, start)` of its cache row, plus,
inside the input, either every input position (bidirectional) or those up to their own
(causal). Both are "keys at positions <= limit(query)", so the per-query mask is one comparison.

The model writes every input's K/V at its positions. The published code's "attend to the cache
without appending" (denoising steps, drafts) is the same computation: the block's slots are
written, seen only by the block itself, and overwritten by the causal pass that later encodes
the finished block; slots past a row's valid prefix are never attended to before they are
rewritten. Rows are right-padded with pads at the positions after their input; a pad query sees
the keys up to its own position (finite values, so no NaN can reach a cache slot).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dserve.modeling import DiffusionModel
from dserve.modeling.cache_pool import CachePool
from dserve.modeling.cuda_graphs import eager_model


@dataclass
class RowInput:
    tokens: torch.Tensor  # [n] token ids on the model's device
    start: int  # absolute position of tokens[0]; the cache row holds valid K/V for [0, start)
    causal: bool  # causal inside the input (else bidirectional)
    cache_row: int
    all_logits: bool  # logits for every input position (else only the last one)


def forward_over_cache(model: DiffusionModel, pool: CachePool, rows: list[RowInput], *, graphed: bool = True) -> list[torch.Tensor]:
    """Per row: logits [n, V] (all_logits) or [V] (the last position's).

    graphed=False runs the forward eagerly even when the model is a CUDA-graph wrapper: a
    prompt's prefill runs once per sequence in a shape of its own, so capturing it would cost
    a capture per prompt length and save nothing."""
    device = model.device
    order = sorted(range(len(rows)), key=lambda i: rows[i].cache_row)  # consecutive rows: no copy
    ordered = [rows[i] for i in order]
    T = max(len(r.tokens) for r in ordered)
    cache = pool.reserve(max(r.start + T for r in ordered))

    ids = torch.full((len(ordered), T), model.info.mask_id, dtype=torch.long, device=device)
    for i, r in enumerate(ordered):
        ids[i, : len(r.tokens)] = r.tokens
    starts = torch.tensor([r.start for r in ordered], device=device)
    lengths = torch.tensor([len(r.tokens) for r in ordered], device=device)
    bidirectional = torch.tensor([not r.causal for r in ordered], device=device)
    column = torch.arange(T, device=device)
    positions = starts[:, None] + column[None, :]
    # the last key each query may see: its own position (causal, pads), or the input's end
    inside = column[None, :] < lengths[:, None]
    limit = torch.where(inside & bidirectional[:, None], (starts + lengths - 1)[:, None], positions)
    mask = torch.arange(cache.capacity, device=device)[None, None, :] <= limit[:, :, None]

    n_out = max(len(r.tokens) if r.all_logits else 1 for r in ordered)
    index = torch.tensor(
        [[min(j, len(r.tokens) - 1) if r.all_logits else len(r.tokens) - 1 for j in range(n_out)] for r in ordered],
        device=device,
    )
    cache_rows = [r.cache_row for r in ordered]
    consecutive = cache_rows == list(range(cache_rows[0], cache_rows[0] + len(cache_rows)))
    use = slice(cache_rows[0], cache_rows[0] + len(cache_rows)) if consecutive else torch.tensor(cache_rows, device=device)
    forward = model if graphed else eager_model(model)
    logits = forward(ids, positions, attention_mask=mask, kv_cache=cache.use_rows(use), logits_index=index)
    cache.use_rows(None)

    out: list[torch.Tensor] = [None] * len(rows)  # type: ignore[list-item]
    for i, r in zip(order, range(len(ordered))):
        row = ordered[r]
        out[i] = logits[r, : len(row.tokens)] if row.all_logits else logits[r, 0]
    return out
