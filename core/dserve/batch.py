"""The batch every engine forwards, and the one forward over it.

An engine plans a step as rows: each `Row` is some tokens at consecutive positions, the keys
they may attend to, the KV-cache row they read and write (if any) and the input offsets whose
logits the engine will read. `forward(model, batch, pool)` turns the rows into one model call
(ids, positions and masks built on the device, ragged rows right-padded, cache rows selected as
a view when they are consecutive) and hands back each row's logits.

Attention patterns, per row:
- bidirectional (the default): every query sees the keys at positions [0, keys); `keys`
  defaults to the input's end, so a full canvas sees itself, a block over a cache sees the
  cached prefix plus the block, and a cached suffix/block sees the whole canvas with
  `keys=len(canvas)` (Fast-dLLM's and dInfer's prefix and dual caches).
- causal: each query sees the keys up to its own position (autoregressive decoding, a
  causal prefill, a verify pass).
- block-causal (`block=b`): a query sees the keys of its own block and every earlier one,
  blocks being the absolute positions [j*b, (j+1)*b), never past the key limit (LLaDA2's
  prefill of whole prompt blocks, a finished block re-encoded with the next one).
Without a cache the keys are the inputs themselves; with one they are the cache row's slots,
and the inputs' K/V are written at their positions first.

Padding: a row shorter than the longest gets pad inputs whose positions continue past the
row's reach (its input end, or its key limit if that is further), so the K/V a pad writes land
in slots no real query of the row attends to; over a cache they stop at its last slot, which
the pool keeps past every reach (a runner whose rows are ragged asks for it when it takes a
cache row, `take_cache_row(canvas + 1)`, so the cache is big enough from its first forward on). Pads see the row's keys (finite values, never a
NaN). The mask is left out when nobody needs one (equal-length uncached rows that see all their
inputs, or equal-length cached rows that see every slot of the cache: SDPA then takes the flash
kernel), it is a key mask [B, Lk] when no row is causal, else per query [B, T, Lk]; logits are
gathered (`logits_index`) only when some row wants fewer than all its inputs. These choices
depend on host-side lengths only: building the batch adds no host synchronisation, and a step
that repeats its shapes repeats the model call's shapes (what CUDA graphs need).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dserve.modeling import DiffusionModel
from dserve.modeling.cache_pool import CachePool
from dserve.modeling.cuda_graphs import eager_model


@dataclass
class Row:
    """One sequence's part of a forward."""

    tokens: torch.Tensor  # [n] token ids, or [n, d] input embeddings (soft tokens), on the model's device
    start: int = 0  # position of tokens[0]; the input covers [start, start + n)
    causal: bool = False  # each query sees keys up to its own position (else every key below `keys`)
    keys: int | None = None  # bidirectional: keys at positions [0, keys); None = up to the input's end
    cache_row: int | None = None  # the pool's cache row this row reads and writes (None: no cache)
    logits: tuple[int, int] | None = None  # input offsets [a, b) whose logits are wanted; None = all
    block: int | None = None  # block-causal over absolute blocks of this size (with causal=False)

    @property
    def width(self) -> int:
        return self.tokens.shape[0]

    @property
    def end(self) -> int:
        return self.start + self.width

    @property
    def key_limit(self) -> int:
        """Bidirectional queries see positions below this; causal ones their own and earlier."""
        return self.end if self.keys is None or self.causal else self.keys

    @property
    def reach(self) -> int:
        """The first position past everything the row holds: its pads go here and after."""
        return max(self.end, self.key_limit)

    @property
    def wanted(self) -> tuple[int, int]:
        return (0, self.width) if self.logits is None else self.logits


@dataclass
class RowBatch:
    """The rows of one model call: all cached (each with its own cache row) or none."""

    rows: list[Row]
    # False: a one-off shape (a prompt's prefill) that runs eagerly even under a CUDA-graph
    # wrapper; capturing it would cost a capture per prompt length and save nothing
    graphable: bool = True


def forward(model: DiffusionModel, batch: RowBatch, pool: CachePool | None = None) -> list[torch.Tensor]:
    """Per row, the logits [b - a, V] of its wanted input offsets [a, b), in the rows' order.

    Cached rows need `pool`: its cache is grown to hold every row's reach and pads
    (`CachePool.reserve`), and rows are forwarded in cache-row order (consecutive rows are a
    view of the cache, not a copy). The logits may live in a CUDA graph's output buffer: read
    them before the next forward."""
    rows = batch.rows
    if not rows:
        return []
    cache_rows_in = [r.cache_row for r in rows]
    cached_rows = [c for c in cache_rows_in if c is not None]
    cached = bool(cached_rows)
    if cached and len(cached_rows) != len(rows):
        raise ValueError("a RowBatch's rows are either all cached or none")
    if cached and pool is None:
        raise ValueError("cached rows need the runner's CachePool")
    order = sorted(range(len(rows)), key=lambda i: cached_rows[i]) if cached else list(range(len(rows)))
    ordered = [rows[i] for i in order]
    device = model.device
    B = len(ordered)
    widths = [r.width for r in ordered]
    T = max(widths)
    ragged = any(w != T for w in widths)
    any_causal = any(r.causal or r.block for r in ordered)
    wanted = [r.wanted for r in ordered]
    subset = any(w != (0, r.width) for w, r in zip(wanted, ordered))
    n_out = max(b - a for a, b in wanted)

    per_row = _upload(
        device,
        [r.start for r in ordered],
        widths,
        [r.reach for r in ordered],
        [r.key_limit for r in ordered],
        [int(r.causal) for r in ordered],
        [a for a, _ in wanted],
        [b for _, b in wanted],
        [r.block or 0 for r in ordered],
    )
    starts, lengths, reach, key_limit, causal, want_a, want_b, block = per_row
    column = torch.arange(T, device=device)
    inside = column[None, :] < lengths[:, None]
    positions = torch.where(inside, starts[:, None] + column[None, :], reach[:, None] + column[None, :] - lengths[:, None])

    kwargs: dict = {}
    if ordered[0].tokens.dim() == 2:  # input embeddings
        embeds = ordered[0].tokens.new_zeros((B, T, ordered[0].tokens.shape[-1]))
        for i, r in enumerate(ordered):
            embeds[i, : r.width] = r.tokens
        ids, kwargs["inputs_embeds"] = None, embeds
    elif not ragged:
        ids = torch.stack([r.tokens for r in ordered])
    else:
        ids = torch.full((B, T), model.info.mask_id, dtype=torch.long, device=device)
        for i, r in enumerate(ordered):
            ids[i, : r.width] = r.tokens

    index = None
    if subset:
        index = torch.minimum(want_a[:, None] + torch.arange(n_out, device=device)[None, :], want_b[:, None] - 1)

    cache = None
    if cached:
        assert pool is not None  # checked above
        # pads need one slot past every row's reach (they all write there: nobody attends to it),
        # not one per pad: a cache sized for its canvases plus that slot never has to grow, and
        # growing mid-run drops every CUDA graph captured over the old cache
        cache = pool.reserve(max(r.reach for r in ordered) + int(ragged))
        if ragged:
            positions = torch.clamp(positions, max=cache.capacity - 1)
        if not any_causal and not ragged and all(r.key_limit >= cache.capacity for r in ordered):
            mask = None  # every query sees every slot: no mask, so SDPA may take the flash kernel
        else:
            key_positions = torch.arange(cache.capacity, device=device)
            mask = _mask(key_positions[None, :], positions, key_limit, causal, inside, any_causal, block)
        cache_rows = [cached_rows[i] for i in order]
        consecutive = cache_rows == list(range(cache_rows[0], cache_rows[0] + B))
        use = slice(cache_rows[0], cache_rows[0] + B) if consecutive else _upload(device, cache_rows)[0]
        cache.use_rows(use)
    elif ragged or any_causal or any(r.key_limit < r.end for r in ordered):
        mask = _mask(positions, positions, key_limit, causal, inside, any_causal, block)
    else:
        mask = None  # every row sees all of its own inputs

    call = model if batch.graphable else eager_model(model)
    try:
        logits = call(ids, positions, attention_mask=mask, kv_cache=cache, logits_index=index, **kwargs)
    finally:
        if cache is not None:
            cache.use_rows(None)

    out: list[torch.Tensor] = [logits] * len(rows)  # placeholders, all replaced below
    for i, row_index, (a, b) in zip(order, range(B), wanted):
        out[i] = logits[row_index, : b - a]
    return out


def _mask(
    key_positions: torch.Tensor,
    positions: torch.Tensor,
    key_limit: torch.Tensor,
    causal: torch.Tensor,
    inside: torch.Tensor,
    per_query: bool,
    block: torch.Tensor,
) -> torch.Tensor:
    """Boolean attention mask, True = attend. key_positions: [B or 1, Lk]. A key mask [B, Lk]
    when no row is causal or block-causal, else per query [B, T, Lk] (causal queries and pads of
    causal or block-causal rows see keys up to their own position; a block-causal query up to
    its block's end or the key limit, whichever comes first)."""
    if not per_query:
        return key_positions < key_limit[:, None]
    bidirectional = inside & (causal[:, None] == 0) & (block[:, None] == 0)
    limit = torch.where(bidirectional, (key_limit - 1)[:, None], positions)
    blocked = inside & (block[:, None] > 0)
    block_end = (positions // block.clamp(min=1)[:, None] + 1) * block[:, None]
    limit = torch.where(blocked, torch.minimum(block_end, key_limit[:, None]) - 1, limit)
    return key_positions[:, None, :] <= limit[:, :, None]


def readback(*tensors: torch.Tensor) -> list[list]:
    """The step's one device-to-host transfer: each tensor as (nested) Python lists.

    A runner plans, forwards and commits on the device, then reads what it committed back here,
    once per step, where the scheduler needs host values. On CUDA the copies go into pinned
    memory without blocking and the host waits on one event after the last of them: one wait
    for all tensors (a `.tolist()` each would wait once each), and not a synchronisation that
    `torch.cuda.set_sync_debug_mode` reports, so the GPU test that runs steps under it finds
    every other one (tests/gpu/test_host_sync.py)."""
    if not tensors or tensors[0].device.type != "cuda":
        return [t.tolist() for t in tensors]
    hosts = []
    for t in tensors:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        hosts.append(host)
    done = torch.cuda.Event()
    done.record()
    done.synchronize()
    return [h.tolist() for h in hosts]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device through pinned memory: the copy does not wait for the GPU to
    drain (a pageable host-to-device copy would)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _upload(device: torch.device, *columns: list[int]) -> tuple[torch.Tensor, ...]:
    """Host lists of ints (equal lengths) to device tensors, in one copy."""
    return tuple(to_device(torch.tensor(columns, dtype=torch.long), device).unbind(0))
