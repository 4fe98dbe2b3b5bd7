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

Batching: sequences of any prompt length, block, block length and rule share a step. Each row
is a `dserve.batch.Row` (the forwarded range, attending to the whole canvas, logits at the
block) and the core's forward pads and masks them. With a cache a step makes at most two
forwards: one for the sequences at a block start (full canvases) and one for the rest (their
suffix or block), each row over its own cache row. Each sequence takes part in
exactly one forward per step (NFE 1 per step, as the published code counts it), and everything
after the forward is per row, so a sequence's output does not depend on its batch-mates.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import cast

import torch

from dserve.batch import Row, readback, to_device
from dserve.engine import AlgorithmRunner, CachedRunner, StepResult
from dserve.logprobs import committed_logprobs
from dserve.sampling import make_generator, request_seed, split_steps
from dserve.sequence import Sequence
from dserve_fastdllm.params import APDParams, FastDLLMParams
from dserve_fastdllm.rules import leftmost_confident_run, predict_rows, transfer_masks


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


def _params(seq: Sequence) -> FastDLLMParams:
    """The sequence's parameters as this plugin's model (Sequence types them DecodingParams; the
    service validates each request with its algorithm's own params model)."""
    return cast(FastDLLMParams, seq.params)


class BasicRunner(AlgorithmRunner):
    """`basic`: every step forwards every full canvas (no cache)."""

    graphable = True
    reports_logprobs = True

    def init_state(self, seq: Sequence) -> _State:
        p = _params(seq)
        device = self.model.device
        canvas = self.new_canvas(seq)
        return _State(
            canvas=canvas,
            generator=make_generator(request_seed(seq.seed, p.temperature), device),
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
            results += self._commit(self._block_logits(seqs))
        return results

    # ---- forwards ----------------------------------------------------------------------------

    def _block_logits(self, seqs: list[Sequence]) -> list[tuple[list[Sequence], list[torch.Tensor]]]:
        """(sequences, logits [block length, V] of each one's current block) for each forward of
        the step."""
        return [(seqs, self.forward([self._row(s, 0, len(s.engine_state.canvas)) for s in seqs]))]

    @staticmethod
    def _row(seq: Sequence, a: int, b: int) -> Row:
        """canvas[a:b] forwarded over the sequence's cache row (if it has one), attending to the
        whole canvas; logits at the current block."""
        st: _State = seq.engine_state
        s, e = st.block_range
        return Row(st.canvas[a:b], start=a, keys=len(st.canvas), cache_row=st.cache_row, logits=(s - a, e - a))

    # ---- commits -----------------------------------------------------------------------------

    def _commit(self, groups: list[tuple[list[Sequence], list[torch.Tensor]]]) -> list[StepResult]:
        mask_id = self.model.info.mask_id
        order, picks = [], []
        for seqs, logits in groups:
            for seq in seqs:
                st = seq.engine_state
                if st.step_in_block == 0 and _params(seq).rule == "fixed":
                    st.quota = split_steps(st.masks_left, st.steps_per_block)
            widths = {s.engine_state.block_length for s in seqs}
            modes = {_params(s).remasking for s in seqs}
            if len(widths) == 1 and len(modes) == 1:
                transfer, x0 = self._pick_rows(seqs, logits, mask_id)
            else:  # rows of different block lengths or remasking modes: one row at a time
                transfer, x0 = self._pick_each(seqs, logits, mask_id)
            order += [(seq, transfer.shape[1]) for seq in seqs]
            picks.append(torch.stack((transfer.long(), x0)).flatten(1))

        # the step's one host sync, for the whole batch
        (picked,) = readback(torch.cat(picks, dim=1))
        block_logits = {s.seq_id: lg for seqs, logits in groups for s, lg in zip(seqs, logits)}
        results, col = [], 0
        for seq, stride in order:
            st = seq.engine_state
            s, e = st.block_range
            flags, tokens = picked[0][col : col + e - s], picked[1][col : col + e - s]
            col += stride
            offset = s - st.prompt_len
            committed = [(offset + j, tok) for j, (f, tok) in enumerate(zip(flags, tokens)) if f]
            st.masks_left -= len(committed)
            st.step_in_block += 1
            if st.masks_left == 0:
                st.block += 1
                st.step_in_block = 0
                st.masks_left = st.block_length
            logprobs = committed_logprobs(seq.logprobs, committed, block_logits[seq.seq_id], offset)
            results.append(StepResult(seq, committed, finished=st.block >= st.num_blocks, nfe=1, logprobs=logprobs))
        return results

    @staticmethod
    def _quota(seq: Sequence) -> int:
        """Tokens this step commits under the fixed split (the whole scope for other rules)."""
        st: _State = seq.engine_state
        if _params(seq).rule != "fixed":
            return st.masks_left
        assert st.quota is not None  # set by _commit at the block start under the fixed rule
        return st.quota[st.step_in_block] if st.step_in_block < len(st.quota) else 1

    def _pick_rows(self, seqs: list[Sequence], logits: list[torch.Tensor], mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's commit at once (rows share block length and remasking): transfer, x0 [B, n]."""
        states = [s.engine_state for s in seqs]
        blocks = torch.stack([st.canvas[slice(*st.block_range)] for st in states])
        masked = blocks == mask_id
        x0, conf = predict_rows(
            torch.stack(logits),
            temperatures=[s.params.temperature for s in seqs],
            remasking=_params(seqs[0]).remasking,
            mask_id=mask_id,
            generators=[st.generator for st in states],
        )
        conf = conf.masked_fill(~masked, -float("inf"))
        transfer = self._rule_mask(conf, masked, seqs) & masked
        updated = torch.where(transfer, x0, blocks)
        for r, st in enumerate(states):
            st.canvas[slice(*st.block_range)] = updated[r]
        return transfer, x0

    def _rule_mask(self, conf: torch.Tensor, masked: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Which positions each row commits [B, n], from its confidences (-inf where not masked)."""
        nan = float("nan")
        per_row = []
        for s in seqs:
            p = _params(s)
            per_row.append(
                [
                    s.engine_state.masks_left,
                    self._quota(s),
                    nan if p.threshold is None else p.threshold,
                    nan if p.factor is None else p.factor,
                ]
            )
        n, quota, threshold, factor = to_device(torch.tensor(per_row, dtype=torch.float64), conf.device).T
        return transfer_masks(conf, n.long(), quota=quota.long(), threshold=threshold, factor=factor)

    def _pick_each(self, seqs: list[Sequence], logits: list[torch.Tensor], mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row by row (block lengths or remasking modes differ): transfer, x0 [B, widest]."""
        n = max(row.shape[0] for row in logits)
        device = logits[0].device
        transfers = torch.zeros(len(seqs), n, dtype=torch.bool, device=device)
        x0s = torch.zeros(len(seqs), n, dtype=torch.long, device=device)
        for r, seq in enumerate(seqs):
            transfer, x0 = self._pick_rows([seq], logits[r : r + 1], mask_id)
            width = transfer.shape[1]
            transfers[r, :width], x0s[r, :width] = transfer[0], x0[0]
        return transfers, x0s


class _CachedRunner(BasicRunner, CachedRunner):
    """Shared by the cached loops: full-canvas forward with cache writes at a block start,
    cached forwards of `_cached_span` otherwise (the core's CachedRunner owns the cache rows)."""

    # the prefix cache's suffixes differ in width between sequences in different blocks: one
    # slot past the canvas for the pads, reserved from the start (dserve.batch); the dual cache's
    # blocks are equal-width in the usual batch and keep a cache of exactly the canvas (no mask:
    # SDPA's flash kernel)
    scratch_slot = 0

    def init_state(self, seq: Sequence) -> _State:
        st = super().init_state(seq)
        st.cache_row = self.take_cache_row(len(st.canvas) + self.scratch_slot)
        return st

    @abstractmethod
    def _cached_span(self, st: _State) -> tuple[int, int]:
        """The canvas range a cached step forwards."""

    def _block_logits(self, seqs: list[Sequence]) -> list[tuple[list[Sequence], list[torch.Tensor]]]:
        by_row = sorted(seqs, key=lambda s: s.engine_state.cache_row)  # consecutive rows: no copy
        fresh = [s for s in by_row if s.engine_state.step_in_block == 0 and self._full_refresh(s)]
        partial = [s for s in by_row if s.engine_state.step_in_block == 0 and not self._full_refresh(s)]
        warm = [s for s in by_row if s.engine_state.step_in_block > 0]
        out = []
        for group, span in (
            (fresh, lambda st: (0, len(st.canvas))),
            (partial, self._partial_span),
            (warm, self._cached_span),
        ):
            if group:
                out.append((group, self.forward([self._row(s, *span(s.engine_state)) for s in group])))
        return out

    @staticmethod
    def _full_refresh(seq: Sequence) -> bool:
        """Whether this block start refreshes the whole canvas (every block under the published
        schedule; every `refresh_every`-th one otherwise, the first always: it is the prefill)."""
        return seq.engine_state.block % _params(seq).refresh_every == 0

    def _partial_span(self, st: _State) -> tuple[int, int]:
        """A block start without a full refresh: the previous block (committed since the K/V of
        its positions were last written) up to the end of the usual cached span."""
        return st.block_range[0] - st.block_length, self._cached_span(st)[1]


class PrefixCacheRunner(_CachedRunner):
    """`prefix_cache`: later steps forward the block and everything after it."""

    scratch_slot = 1

    def _cached_span(self, st: _State) -> tuple[int, int]:
        return st.block_range[0], len(st.canvas)


class DualCacheRunner(_CachedRunner):
    """`dual_cache`: later steps forward only the block."""

    def _cached_span(self, st: _State) -> tuple[int, int]:
        return st.block_range


class APDRunner(DualCacheRunner):
    """`apd`: the dual cache with the confidence-adaptive left-to-right rule (params.APDParams)."""

    def _rule_mask(self, conf: torch.Tensor, masked: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        params = [cast(APDParams, s.params) for s in seqs]  # apd sequences carry APDParams
        rows = torch.tensor([[p.apd_threshold, p.apd_max_parallel] for p in params], dtype=torch.float64)
        threshold, max_parallel = to_device(rows, conf.device).T
        return leftmost_confident_run(conf, masked, threshold, max_parallel.long())
