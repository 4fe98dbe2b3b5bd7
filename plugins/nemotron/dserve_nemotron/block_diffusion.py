"""Nemotron block diffusion (the published `generate` / `generate_with_prefix_cache_block_diff`
of chat_utils.py, causal_context=True for Nemotron-Labs) as a step-wise runner.

Per sequence, with blocks counted from the prompt end:
1. prefill: encode the prompt into the cache (causally); the argmax of its last logit seeds
   slot 0 of block 0 (committed at once: it is final).
2. denoise: forward the block [seed, MASK, ...] over the cache, bidirectional inside the block;
   commit by the unmasking rule (rules.py). The block is done when it has no mask, when its
   step budget is spent (`steps` / blocks; by default block_length, never binding with a
   threshold), or when it holds EOS with no mask before it.
3. encode: re-run the finished block causally, writing its K/V; its last logit seeds the next
   block. A block holding EOS ends the sequence (the published loop stops once every row has
   EOS and cuts after the first one; per row that is this), and so does the last block; the
   re-encoding of such a block changes no token, so it is skipped.

Without a causal context (the research variant) the prompt and finished blocks are encoded
bidirectionally inside themselves (block-causal) and blocks start fully masked.

Batching: each step makes at most two forwards, one for the sequences in prefill (their
prompts) and one for all the others (their blocks, denoising or encoding, each row with its own
attention pattern); each sequence takes part in exactly one, and everything after the forward is
per row, so a sequence's tokens do not depend on its batch-mates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from dserve.batch import Row
from dserve.engine import StepResult
from dserve.logprobs import committed_logprobs
from dserve.sampling import make_generator, split_steps
from dserve.sequence import Sequence
from dserve_nemotron.params import BlockDiffusionParams
from dserve_nemotron.rules import unmask_step
from dserve_nemotron.runner_base import NemotronRunner, over_cache, sample

PREFILL, DENOISE, ENCODE = "prefill", "denoise", "encode"


@dataclass
class _State:
    canvas: torch.Tensor  # [prompt_len + gen_length]
    generator: torch.Generator
    prompt_len: int
    block_length: int
    num_blocks: int
    steps_per_block: int
    causal: bool
    cache_row: int | None
    phase: str = PREFILL
    block: int = 0
    step_in_block: int = 0
    quota: list[int] | None = None  # fixed split: tokens per step of the current block

    @property
    def block_range(self) -> tuple[int, int]:
        start = self.prompt_len + self.block * self.block_length
        return start, start + self.block_length


class BlockDiffusionRunner(NemotronRunner):
    reports_logprobs = True

    def init_state(self, seq: Sequence) -> _State:
        p = cast(BlockDiffusionParams, seq.params)  # block_diffusion sequences carry BlockDiffusionParams
        device = self.model.device
        canvas = self.new_canvas(seq)
        causal = p.causal_context if p.causal_context is not None else getattr(self.model, "causal_prefix", True)
        return _State(
            canvas=canvas,
            generator=make_generator(seq.seed, device),
            prompt_len=seq.prompt_len,
            block_length=p.block_length,
            num_blocks=seq.gen_length // p.block_length,
            steps_per_block=p.steps_per_block(seq.gen_length),
            causal=causal,
            cache_row=self.take_cache_row(len(canvas)),
        )

    def _row(self, st: _State) -> Row:
        assert st.cache_row is not None  # taken at admission, given back only at release
        if st.phase == PREFILL:
            return over_cache(st.canvas[: st.prompt_len], 0, causal=st.causal, cache_row=st.cache_row, all_logits=False)
        s, e = st.block_range
        if st.phase == DENOISE:
            return over_cache(st.canvas[s:e], s, causal=False, cache_row=st.cache_row, all_logits=True)
        return over_cache(st.canvas[s:e], s, causal=st.causal, cache_row=st.cache_row, all_logits=False)

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = list(self.sequences)
        logits: dict[int, torch.Tensor] = {}
        for group, graphable in (
            ([s for s in seqs if s.engine_state.phase == PREFILL], False),
            ([s for s in seqs if s.engine_state.phase != PREFILL], True),
        ):
            out = self.forward([self._row(s.engine_state) for s in group], graphable=graphable)
            logits.update({s.seq_id: row_logits for s, row_logits in zip(group, out)})
        results = []
        for seq in seqs:
            phase = seq.engine_state.phase
            if phase == DENOISE:
                results.append(self._denoise(seq, logits[seq.seq_id]))
            else:
                results.append(self._next_block(seq, logits[seq.seq_id][-1]))
        return results

    def _next_block(self, seq: Sequence, last_logits: torch.Tensor) -> StepResult:
        """After prefill or a block's encoding: move to the next block, seeded when causal."""
        st: _State = seq.engine_state
        if st.phase == ENCODE:
            st.block += 1
        st.phase, st.step_in_block, st.quota = DENOISE, 0, None
        if not st.causal:
            return StepResult(seq, [], finished=False, nfe=1)
        s, _ = st.block_range
        token = int(sample(last_logits, seq.params.temperature, st.generator))
        st.canvas[s] = token
        # the published loop would still denoise this block, but its output ends at this EOS
        committed = [(s - st.prompt_len, token)]
        logprobs = committed_logprobs(seq.logprobs, committed, last_logits[None], s - st.prompt_len)
        return StepResult(seq, committed, finished=self.is_stop(seq, token), nfe=1, logprobs=logprobs)

    def _denoise(self, seq: Sequence, block_logits: torch.Tensor) -> StepResult:
        st: _State = seq.engine_state
        p = cast(BlockDiffusionParams, seq.params)  # block_diffusion sequences carry BlockDiffusionParams
        mask_id = self.model.info.mask_id
        s, e = st.block_range
        block = st.canvas[s:e]
        if st.quota is None:
            st.quota = split_steps(int((block == mask_id).sum()), st.steps_per_block)
        x0, transfer = unmask_step(
            block_logits,
            block,
            mask_id=mask_id,
            temperature=p.temperature,
            generator=st.generator,
            threshold=p.threshold,
            quota=st.quota[st.step_in_block],
        )
        st.canvas[s:e] = torch.where(transfer, x0, block)
        st.step_in_block += 1

        tokens = st.canvas[s:e].tolist()  # one host sync per sequence and step
        flags = transfer.tolist()
        # a predicted mask token "commits" nothing: the slot stays masked, as published
        committed = [(s - st.prompt_len + j, t) for j, (f, t) in enumerate(zip(flags, tokens)) if f and t != mask_id]
        masks_left = mask_id in tokens
        stop_at = next((j for j, t in enumerate(tokens) if self.is_stop(seq, t)), None)
        eos_closes = stop_at is not None and mask_id not in tokens[:stop_at]
        if masks_left and not eos_closes and st.step_in_block < st.steps_per_block:
            logprobs = committed_logprobs(seq.logprobs, committed, block_logits, s - st.prompt_len)
            return StepResult(seq, committed, finished=False, nfe=1, logprobs=logprobs)

        # the block is final: masks the step budget left stay mask tokens, as published
        committed += [(s - st.prompt_len + j, t) for j, t in enumerate(tokens) if t == mask_id]
        finished = stop_at is not None or st.block + 1 >= st.num_blocks
        st.phase = ENCODE
        logprobs = committed_logprobs(seq.logprobs, committed, block_logits, s - st.prompt_len)
        return StepResult(seq, committed, finished=finished, nfe=1, logprobs=logprobs)
