"""LLaDA2's published `generate` (block diffusion, threshold / low-confidence commits per block)
as a step-wise runner over a block-causal KV cache.

The published loop, per sequence (prompt length P, gen_length G, block length b):
- the canvas is the prompt then masks, rounded up to whole absolute blocks [j*b, (j+1)*b);
- blocks P // b .. are decoded in order; each step forwards the canvas up to the current block's
  end under the block-causal mask and commits in the current block by the rule (rules.py), at
  most `steps` times, until the block has no mask;
- after a block, decoding stops if the generated part holds EOS; the output is the canvas from P,
  cut to G and after the first EOS.

Under a block-causal mask the K/V of a finished block never change, so the runner keeps them in
the sequence's cache row and forwards only what is new: its first forward covers the prompt's
whole blocks plus the first block (block-causal, logits of the block only); a denoising step
forwards the block over the cache; the step after a block ends forwards the finished block
(writing its final K/V) together with the next block, block-causally, with logits for the next
block only. So a sequence costs exactly the published number of forwards, each one narrower.

Batching: one forward for sequences making their first forward (one-off prompt shapes, eager)
and one for all others; everything after the forward is per row, so a sequence's tokens do not
depend on its batch-mates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from dserve.batch import Row
from dserve.engine import CachedRunner, StepResult
from dserve.logprobs import committed_logprobs
from dserve.sampling import make_generator
from dserve.sequence import Sequence
from dserve_llada2.params import LLaDA2EditingParams, LLaDA2Params
from dserve_llada2.rules import commit_rule, sample_tokens, transfer_schedule


@dataclass
class _State:
    canvas: torch.Tensor  # [num_blocks * block_length]: prompt, then masks
    generator: torch.Generator
    prompt_len: int
    gen_length: int
    block_length: int
    num_blocks: int
    steps: int
    schedule: list[int]
    cache_row: int | None
    block: int  # the block being denoised (absolute index)
    editing: bool = False  # LLaDA2.1's loop (token editing)
    fresh_from: int = 0  # first position whose K/V are not yet final in the cache
    step_in_block: int = 0
    post_steps: int = 0  # editing: steps begun with no mask left in the block

    @property
    def block_range(self) -> tuple[int, int]:
        start = self.block * self.block_length
        return start, start + self.block_length


class LLaDA2BlockDiffusionRunner(CachedRunner):
    # denoising forwards repeat their shapes (a block, or two blocks after a block ends)
    graphable = True
    reports_logprobs = True

    def __init__(self, model, *, max_batch_size: int = 16):
        super().__init__(model, max_batch_size=max_batch_size)
        self.stop_ids = frozenset(model.info.stop_ids)

    def init_state(self, seq: Sequence) -> _State:
        p = seq.params
        editing = isinstance(p, LLaDA2EditingParams)
        if not editing and not isinstance(p, LLaDA2Params):
            raise TypeError(f"the llada2 runner takes LLaDA2Params or LLaDA2EditingParams, not {type(p).__name__}")
        b = p.block_length
        num_blocks = -(-(seq.prompt_len + seq.gen_length) // b)
        device = self.model.device
        canvas = torch.full((num_blocks * b,), self.model.info.mask_id, dtype=torch.long, device=device)
        canvas[: seq.prompt_len] = torch.tensor(seq.prompt_ids, dtype=torch.long, device=device)
        steps = 0 if editing else cast(LLaDA2Params, p).block_steps(seq.gen_length)
        return _State(
            canvas=canvas,
            generator=make_generator(seq.seed, device),
            prompt_len=seq.prompt_len,
            gen_length=seq.gen_length,
            block_length=b,
            num_blocks=num_blocks,
            steps=steps,
            schedule=transfer_schedule(b, steps) if steps else [],
            cache_row=self.take_cache_row(len(canvas)),
            block=seq.prompt_len // b,
            editing=editing,
        )

    def _row(self, st: _State) -> Row:
        assert st.cache_row is not None  # taken at admission, given back only at release
        s, e = st.block_range
        a = st.fresh_from
        return Row(st.canvas[a:e], start=a, block=st.block_length, cache_row=st.cache_row, logits=(s - a, e - a))

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = list(self.sequences)
        logits: dict[int, torch.Tensor] = {}
        first = [s for s in seqs if s.engine_state.fresh_from == 0]
        rest = [s for s in seqs if s.engine_state.fresh_from != 0]
        for group, graphable in ((first, False), (rest, True)):
            out = self.forward([self._row(s.engine_state) for s in group], graphable=graphable)
            logits.update({s.seq_id: row_logits for s, row_logits in zip(group, out)})
        return [(self._edit if s.engine_state.editing else self._denoise)(s, logits[s.seq_id]) for s in seqs]

    def _is_stop(self, seq: Sequence, token: int) -> bool:
        return not seq.ignore_eos and token in self.stop_ids

    @staticmethod
    def _result(
        seq: Sequence, committed: list[tuple[int, int]], block_logits: torch.Tensor, s: int, *, finished: bool
    ) -> StepResult:
        """The step's result; with `logprobs` asked, each committed token's log-probability under
        this step's logits of its block (block_logits row 0 is canvas position s)."""
        logprobs = committed_logprobs(seq.logprobs, committed, block_logits, s - seq.prompt_len)
        return StepResult(seq, committed, finished=finished, nfe=1, logprobs=logprobs)

    def _denoise(self, seq: Sequence, block_logits: torch.Tensor) -> StepResult:
        st: _State = seq.engine_state
        p = cast(LLaDA2Params, seq.params)
        mask_id = self.model.info.mask_id
        s, e = st.block_range
        st.fresh_from = s  # the cache now holds final K/V of everything before this block
        block = st.canvas[s:e]
        masked = block == mask_id
        x0, confidence = sample_tokens(
            block_logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, generator=st.generator
        )
        transfer = commit_rule(confidence, masked, quota=st.schedule[st.step_in_block], threshold=p.threshold)
        st.canvas[s:e] = torch.where(transfer, x0, block)
        st.step_in_block += 1

        tokens = st.canvas[s:e].tolist()  # one host sync per sequence and step
        flags = transfer.tolist()
        P, G = st.prompt_len, st.gen_length

        def out(j: int) -> bool:  # a generated position the caller sees
            return P <= s + j < P + G

        # a predicted mask token "commits" nothing: the slot stays masked, as published
        committed = [(s + j - P, t) for j, (f, t) in enumerate(zip(flags, tokens)) if f and t != mask_id and out(j)]

        if p.eos_early_stop and not seq.ignore_eos and any(f and self._is_stop(seq, t) for f, t in zip(flags, tokens)):
            # published: stop once the first EOS has no mask before it (searched from the
            # prompt end; the published code searches from position 0, which returns an empty
            # answer whenever the prompt holds the EOS id)
            generated = st.canvas[P:e].tolist()
            eos_at = next(i for i, t in enumerate(generated) if self._is_stop(seq, t))
            if mask_id not in generated[:eos_at]:
                return self._result(seq, committed, block_logits, s, finished=True)

        if mask_id in tokens and st.step_in_block < st.steps:
            return self._result(seq, committed, block_logits, s, finished=False)

        # the block is final: masks the step budget left stay mask tokens, as published
        committed += [(s + j - P, t) for j, t in enumerate(tokens) if t == mask_id and out(j)]
        holds_eos = any(self._is_stop(seq, t) for t in st.canvas[P:e].tolist())
        finished = holds_eos or st.block + 1 >= st.num_blocks or e >= P + G
        st.block += 1
        st.step_in_block = 0
        return self._result(seq, committed, block_logits, s, finished=finished)

    def _edit(self, seq: Sequence, block_logits: torch.Tensor) -> StepResult:
        """One step of LLaDA2.1's loop (mask -> token and token -> token) for the current block;
        the block's tokens are committed when it ends (they may change until then)."""
        st: _State = seq.engine_state
        p = cast(LLaDA2EditingParams, seq.params)  # editing sequences carry LLaDA2EditingParams
        mask_id = self.model.info.mask_id
        s, e = st.block_range
        st.fresh_from = s
        block = st.canvas[s:e]
        masked = block == mask_id
        x0, confidence = sample_tokens(
            block_logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, generator=st.generator
        )
        had_masks = bool(masked.any())  # one host sync per sequence and step
        fill = commit_rule(confidence, masked, quota=p.num_to_transfer, threshold=p.threshold) if had_masks else masked
        in_prompt = torch.arange(s, e, device=block.device) < st.prompt_len
        edits = ~masked & ~in_prompt & (confidence > p.editing_threshold) & (x0 != block)
        st.canvas[s:e] = torch.where(fill | edits, x0, block)
        st.step_in_block += 1

        tokens = st.canvas[s:e].tolist()
        done = not had_masks and not bool(edits.any())
        if not done and mask_id not in tokens:
            st.post_steps += 1  # the next step would begin with no mask: an editing step
            done = st.post_steps > p.max_post_steps
        if not done:
            return StepResult(seq, [], finished=False, nfe=1)

        P, G = st.prompt_len, st.gen_length
        committed = [(s + j - P, t) for j, t in enumerate(tokens) if P <= s + j < P + G]
        # the published loop runs every block (or, with eos_early_stop, stops here); blocks after
        # one holding EOS cannot change the answer cut at it, so dserve stops here in both cases
        holds_eos = any(self._is_stop(seq, t) for t in st.canvas[P:e].tolist())
        finished = holds_eos or st.block + 1 >= st.num_blocks or e >= P + G
        st.block += 1
        st.step_in_block = st.post_steps = 0
        return self._result(seq, committed, block_logits, s, finished=finished)
