"""The published LLaDA sampling loop (ML-GSAI/LLaDA generate.py) as a step-wise runner.

Per sequence: canvas = prompt + gen_length masks, cut into blocks of `block_length`; each block
gets `steps_per_block` steps and commits a fixed number of tokens per step (the block's masks
split evenly, remainder first). Every step runs the model over the whole canvas with no cache,
picks x0 = argmax of the (Gumbel-noised at T > 0) logits and commits the `k` masked positions of
the current block with the highest confidence (softmax probability of x0, or uniform noise for
`random` remasking). Sequences of different lengths and parameters share one forward
(the core's `dserve.batch.forward`: canvases right-padded, pads hidden from attention).

Two deliberate differences from the published code, neither changing what it computes: logits
are computed only for each sequence's current block (the published loop computes the whole
canvas and then masks everything outside the block with -inf), and equal confidences are
broken towards the lower position (a stable sort), where the published `topk` leaves the order
to the platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from dserve.batch import Row, readback
from dserve.engine import AlgorithmRunner, StepResult
from dserve.logprobs import TokenLogprob, token_logprobs
from dserve.sampling import gumbel_argmax, make_generator, request_seed, split_steps
from dserve.sequence import Sequence
from dserve_llada.params import ReferenceParams


@dataclass
class _State:
    canvas: torch.Tensor  # [prompt_len + gen_length] token ids
    generator: torch.Generator
    steps_per_block: int
    block: int = 0  # current block index
    step_in_block: int = 0
    schedule: list[int] | None = None  # tokens to commit at each step of the current block

    def block_span(self, seq: Sequence) -> tuple[int, int]:
        start = seq.prompt_len + self.block * seq.params.block_length
        return start, min(start + seq.params.block_length, len(self.canvas))


def _params(seq: Sequence) -> ReferenceParams:
    """The sequence's parameters as this plugin's model (Sequence types them DecodingParams; the
    service validates each request with its algorithm's own params model)."""
    return cast(ReferenceParams, seq.params)


class ReferenceRunner(AlgorithmRunner):
    graphable = True
    reports_logprobs = True

    def init_state(self, seq: Sequence) -> _State:
        device = self.model.device
        canvas = self.new_canvas(seq)
        return _State(
            canvas,
            make_generator(request_seed(seq.seed, seq.params.temperature), device),
            seq.params.steps_per_block(seq.gen_length),
        )

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = list(self.sequences)
        if not seqs:
            return []
        logits = iter(self.forward([row for seq in seqs for row in self._rows(seq)]))
        picks, step_logprobs = [], []
        for seq in seqs:
            cond = next(logits)
            cfg_scale = _params(seq).cfg_scale
            if cfg_scale > 0:
                un = next(logits)
                cond = un + (cfg_scale + 1) * (cond - un)
            pick, logprobs = self._commit(seq, cond)
            picks.append(pick)
            step_logprobs.append(logprobs)
        # the step's one host sync: every sequence's committed offsets and tokens
        flat = [t for pick in picks if pick is not None for t in pick]
        host = iter(readback(*flat))
        results = []
        for seq, pick, logprobs in zip(seqs, picks, step_logprobs):
            committed = list(zip(next(host), next(host))) if pick is not None else []
            results.append(self._advance(seq, committed, logprobs))
        return results

    def _rows(self, seq: Sequence) -> list[Row]:
        """The whole canvas, logits at the current block; with classifier-free guidance also
        the unconditional copy (the prompt masked out)."""
        st: _State = seq.engine_state
        start, end = st.block_span(seq)
        rows = [Row(st.canvas, logits=(start, end))]
        if _params(seq).cfg_scale > 0:
            un = st.canvas.clone()
            un[: seq.prompt_len] = self.model.info.mask_id
            rows.append(Row(un, logits=(start, end)))
        return rows

    def _commit(
        self, seq: Sequence, block_logits: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, list[TokenLogprob | None] | None]:
        """Commit this step's tokens on the device: ((generation offsets, tokens) to read back,
        or None when the schedule commits nothing; their logprobs when the request asked)."""
        st: _State = seq.engine_state
        p = _params(seq)
        start, end = st.block_span(seq)
        block = st.canvas[start:end]
        masked = block == self.model.info.mask_id
        if st.step_in_block == 0:
            # the published count of the block's masks: all of it (blocks are decoded in order,
            # and only this step's block is ever written), known without reading the canvas
            st.schedule = split_steps(end - start, st.steps_per_block)
        assert st.schedule is not None  # set at the block's first step, just above
        k = st.schedule[st.step_in_block]
        if k == 0:
            return None, None
        logits = block_logits[: end - start]
        x0 = gumbel_argmax(logits, p.temperature, st.generator)
        if p.remasking == "low_confidence":
            conf = torch.softmax(logits, dim=-1).gather(-1, x0[:, None]).squeeze(-1)
        else:
            conf = torch.rand(x0.shape, generator=st.generator, device=x0.device)
        conf = conf.masked_fill(~masked, -float("inf"))
        picked = torch.sort(conf, descending=True, stable=True).indices[:k]
        block[picked] = x0[picked]
        # logprobs are opt-in: reading them back is a sync only a request that asks pays for
        logprobs = token_logprobs(logits[picked], x0[picked], seq.logprobs) if seq.logprobs is not None else None
        return (picked + (start - seq.prompt_len), x0[picked]), logprobs

    def _advance(
        self, seq: Sequence, committed: list[tuple[int, int]], logprobs: list[TokenLogprob | None] | None = None
    ) -> StepResult:
        st: _State = seq.engine_state
        p = _params(seq)
        st.step_in_block += 1
        if st.step_in_block == st.steps_per_block:
            st.block += 1
            st.step_in_block = 0
        finished = st.block * p.block_length >= seq.gen_length
        return StepResult(seq, committed, finished, nfe=1, logprobs=logprobs)
