"""Fast-dLLM's three LLaDA loops (NVlabs/Fast-dLLM llada/generate.py, revision f6b35ec) as
step-wise runners.

Per sequence: canvas = prompt + gen_length masks in blocks of `block_length`. Every step scores
the current block and commits by the sequence's rule (rules.py); the block is done when it has
no mask left (checked after every step, as f6b35ec does), and the sequence when its last block
is. What a step forwards:

- `basic`: the whole canvas, no cache.
- `prefix_cache`: at a block start the whole canvas, writing the sequence's cache row; later
  steps forward `canvas[s:]` (block and everything after it) over the cached K/V of `[0, s)`.
- `dual_cache`: block start as above; later steps forward only the block `canvas[s:e]`, over
  the prefix and suffix K/V as computed at block start (the block's own slots are rewritten).

Batching: sequences of any prompt length, block, block length and rule share a step. Without a
cache the canvases are right-padded into one forward with a key mask. With a cache a step makes
at most two forwards: one for the sequences at a block start (full canvases) and one for the
rest (their suffix or block); each row uses its own cache row, ragged inputs are right-padded,
and the key mask admits only the row's canvas slots. Pad inputs get positions past their row's
canvas end, so the K/V they write land in slots nobody attends to. Each sequence takes part in
exactly one forward per step (NFE 1 per step, as the published code counts it), and everything
after the forward is per row, so a sequence's output does not depend on its batch-mates.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from dserve.engine import AlgorithmRunner, StepResult
from dserve.modeling import KVCache
from dserve.sampling import make_generator, split_steps
from dserve.sequence import Sequence
from dserve.modeling.cache_pool import CachePool
from dserve_fastdllm.params import FastDLLMParams
from dserve_fastdllm.rules import predict, transfer_mask


@dataclass
class _State:
    canvas: torch.Tensor  # [prompt_len + gen_length] token ids
    generator: torch.Generator
    prompt_len: int
    block_length: int
    num_blocks: int
    steps_per_block: int
    block: int = 0  # current block index
    step_in_block: int = 0  # 0 = block start
    masks_left: int = 0  # masked positions left in the current block
    quota: list[int] | None = None  # fixed schedule: tokens per step of the current block
    cache_row: int | None = None

    @property
    def block_range(self) -> tuple[int, int]:
        start = self.prompt_len + self.block * self.block_length
        return start, start + self.block_length


class BasicRunner(AlgorithmRunner):
    """`basic`: every step forwards every full canvas (no cache)."""

    graphable = True

    def init_state(self, seq: Sequence) -> _State:
        p: FastDLLMParams = seq.params
        device = self.model.device
        canvas = torch.full((seq.prompt_len + seq.gen_length,), self.model.info.mask_id, dtype=torch.long, device=device)
        canvas[: seq.prompt_len] = torch.tensor(seq.prompt_ids, dtype=torch.long, device=device)
        return _State(
            canvas=canvas,
            generator=make_generator(seq.seed, device),
            prompt_len=seq.prompt_len,
            block_length=p.block_length,
            num_blocks=seq.gen_length // p.block_length,
            steps_per_block=p.steps_per_block(seq.gen_length),
            masks_left=p.block_length,
        )

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        done = [s for s in self.sequences if s.engine_state.block >= s.engine_state.num_blocks]
        seqs = [s for s in self.sequences if s not in done]  # a finished one not yet released
        results = [StepResult(s, [], finished=True, nfe=0) for s in done]
        if seqs:
            results += self._commit(seqs, self._block_logits(seqs))
        return results

    # ---- forwards ----------------------------------------------------------------------------

    def _block_logits(self, seqs: list[Sequence]) -> dict[int, torch.Tensor]:
        """Logits [block_length, V] of each sequence's current block, keyed by seq_id."""
        return self._forward(seqs, [(0, len(s.engine_state.canvas)) for s in seqs], cache=None)

    def _forward(
        self, seqs: list[Sequence], spans: list[tuple[int, int]], cache: KVCache | None
    ) -> dict[int, torch.Tensor]:
        """One forward over canvas[a:b] of each sequence (right-padded); returns block logits.

        With `cache`, the inputs' K/V are written into each sequence's cache row and queries
        attend over the row's slots [0, canvas length)."""
        device = self.model.device
        widths = [b - a for a, b in spans]
        T = max(widths)
        ids = torch.full((len(seqs), T), self.model.info.mask_id, dtype=torch.long, device=device)
        positions = torch.empty((len(seqs), T), dtype=torch.long)
        lengths = torch.tensor([len(s.engine_state.canvas) for s in seqs])
        for r, (seq, (a, b)) in enumerate(zip(seqs, spans)):
            ids[r, : b - a] = seq.engine_state.canvas[a:b]
            positions[r, : b - a] = torch.arange(a, b)
            # pads sit past the canvas end: never attended, and their cache writes land there
            positions[r, b - a :] = torch.arange(int(lengths[r]), int(lengths[r]) + T - (b - a))
        positions = positions.to(device)
        lengths = lengths.to(device)

        # logits only at each row's current block (the LM head over the whole input is costly)
        blocks = [seq.engine_state.block_range for seq in seqs]
        n = max(e - s for s, e in blocks)
        index = torch.tensor(
            [[min(s - a + j, e - a - 1) for j in range(n)] for (s, e), (a, _) in zip(blocks, spans)], device=device
        )
        if cache is None:
            ragged = any(w != T for w in widths)
            key_mask = positions < lengths[:, None] if ragged else None
            logits = self.model(ids, positions, attention_mask=key_mask, logits_index=index)
        else:
            rows = [s.engine_state.cache_row for s in seqs]
            consecutive = rows == list(range(rows[0], rows[0] + len(rows)))
            use = slice(rows[0], rows[0] + len(rows)) if consecutive else torch.tensor(rows, device=device)
            key_mask = torch.arange(cache.capacity, device=device)[None, :] < lengths[:, None]
            logits = self.model(ids, positions, attention_mask=key_mask, kv_cache=cache.use_rows(use), logits_index=index)
            cache.use_rows(None)

        return {seq.seq_id: logits[r, : e - s] for r, (seq, (s, e)) in enumerate(zip(seqs, blocks))}

    # ---- commits -----------------------------------------------------------------------------

    def _commit(self, seqs: list[Sequence], block_logits: dict[int, torch.Tensor]) -> list[StepResult]:
        mask_id = self.model.info.mask_id
        picks = []
        for seq in seqs:
            st: _State = seq.engine_state
            p: FastDLLMParams = seq.params
            s, e = st.block_range
            if st.step_in_block == 0 and p.rule == "fixed":
                st.quota = split_steps(st.masks_left, st.steps_per_block)
            block = st.canvas[s:e]
            masked = block == mask_id
            x0, conf = predict(
                block_logits[seq.seq_id],
                temperature=p.temperature,
                remasking=p.remasking,
                mask_id=mask_id,
                generator=st.generator,
            )
            conf = conf.masked_fill(~masked, -float("inf"))
            quota = None
            if p.rule == "fixed":
                quota = st.quota[st.step_in_block] if st.step_in_block < len(st.quota) else 1
            transfer = transfer_mask(conf, st.masks_left, quota=quota, threshold=p.threshold, factor=p.factor)
            transfer &= masked
            st.canvas[s:e] = torch.where(transfer, x0, block)
            picks.append(torch.stack((transfer.long(), x0)))

        # one host sync for the whole batch
        picked = torch.cat(picks, dim=1).tolist()
        results, col = [], 0
        for seq in seqs:
            st = seq.engine_state
            s, e = st.block_range
            width = e - s
            flags, tokens = picked[0][col : col + width], picked[1][col : col + width]
            col += width
            offset = s - st.prompt_len
            committed = [(offset + j, tok) for j, (f, tok) in enumerate(zip(flags, tokens)) if f]
            st.masks_left -= len(committed)
            st.step_in_block += 1
            if st.masks_left == 0:
                st.block += 1
                st.step_in_block = 0
                st.masks_left = st.block_length
            results.append(StepResult(seq, committed, finished=st.block >= st.num_blocks, nfe=1))
        return results


class _CachedRunner(BasicRunner):
    """Shared by the cached loops: full-canvas forward with cache writes at a block start,
    cached forwards of `_cached_span` otherwise."""

    def __init__(self, model, *, max_batch_size: int = 16):
        super().__init__(model, max_batch_size=max_batch_size)
        self.pool = CachePool(model, max_batch_size)

    def init_state(self, seq: Sequence) -> _State:
        st = super().init_state(seq)
        st.cache_row = self.pool.take()
        return st

    def free_state(self, seq: Sequence) -> None:
        st: _State | None = seq.engine_state
        if st is not None and st.cache_row is not None:
            self.pool.give(st.cache_row)
            st.cache_row = None

    @abstractmethod
    def _cached_span(self, st: _State) -> tuple[int, int]:
        """The canvas range a cached step forwards."""

    def _block_logits(self, seqs: list[Sequence]) -> dict[int, torch.Tensor]:
        by_row = sorted(seqs, key=lambda s: s.engine_state.cache_row)  # consecutive rows: no copy
        fresh = [s for s in by_row if s.engine_state.step_in_block == 0]
        warm = [s for s in by_row if s.engine_state.step_in_block > 0]
        out: dict[int, torch.Tensor] = {}
        for group, spans in (
            (fresh, [(0, len(s.engine_state.canvas)) for s in fresh]),
            (warm, [self._cached_span(s.engine_state) for s in warm]),
        ):
            if not group:
                continue
            T = max(b - a for a, b in spans)
            # every row's canvas plus its pads' slots must fit
            need = max(len(s.engine_state.canvas) + T - (b - a) for s, (a, b) in zip(group, spans))
            out.update(self._forward(group, spans, cache=self.pool.reserve(need)))
        return out


class PrefixCacheRunner(_CachedRunner):
    """`prefix_cache`: later steps forward the block and everything after it."""

    def _cached_span(self, st: _State) -> tuple[int, int]:
        return st.block_range[0], len(st.canvas)


class DualCacheRunner(_CachedRunner):
    """`dual_cache`: later steps forward only the block."""

    def _cached_span(self, st: _State) -> tuple[int, int]:
        return st.block_range
