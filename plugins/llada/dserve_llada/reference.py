"""The published LLaDA sampling loop (ML-GSAI/LLaDA generate.py) as a step-wise runner.

Per sequence: canvas = prompt + gen_length masks, cut into blocks of `block_length`; each block
gets `steps_per_block` steps and commits a fixed number of tokens per step (the block's masks
split evenly, remainder first). Every step runs the model over the whole canvas with no cache,
picks x0 = argmax of the (Gumbel-noised at T > 0) logits and commits the `k` masked positions of
the current block with the highest confidence (softmax probability of x0, or uniform noise for
`random` remasking). Sequences of different lengths and parameters share one forward:
canvases are right-padded and pads are hidden from attention.

Two deliberate differences from the published code, neither changing what it computes: logits
are computed only for each sequence's current block (the published loop computes the whole
canvas and then masks everything outside the block with -inf), and equal confidences are
broken towards the lower position (a stable sort), where the published `topk` leaves the order
to the platform.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dserve.engine import AlgorithmRunner, StepResult
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


class ReferenceRunner(AlgorithmRunner):
    graphable = True

    def init_state(self, seq: Sequence) -> _State:
        device = self.model.device
        canvas = self.new_canvas(seq)
        return _State(canvas, make_generator(request_seed(seq.seed, seq.params.temperature), device), seq.params.steps_per_block(seq.gen_length))

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = list(self.sequences)
        if not seqs:
            return []
        mask_id = self.model.info.mask_id
        rows, spans, cond_row, uncond_row = [], [], {}, {}
        for seq in seqs:
            st: _State = seq.engine_state
            span = st.block_span(seq)
            cond_row[seq.seq_id] = len(rows)
            rows.append(st.canvas)
            spans.append(span)
            if seq.params.cfg_scale > 0:
                un = st.canvas.clone()
                un[: seq.prompt_len] = mask_id  # the unconditional copy: the prompt masked out
                uncond_row[seq.seq_id] = len(rows)
                rows.append(un)
                spans.append(span)
        logits = self._forward(rows, spans)
        results = []
        for seq in seqs:
            l = logits[cond_row[seq.seq_id]]
            if seq.seq_id in uncond_row:
                un = logits[uncond_row[seq.seq_id]]
                l = un + (seq.params.cfg_scale + 1) * (l - un)
            results.append(self._commit(seq, l))
        return results

    def _forward(self, rows: list[torch.Tensor], spans: list[tuple[int, int]]) -> torch.Tensor:
        """Logits [R, n, V] at each row's block positions (n = the longest block)."""
        device = rows[0].device
        n = max(e - s for s, e in spans)
        index = torch.tensor([[min(s + i, e - 1) for i in range(n)] for s, e in spans], device=device)
        lengths = [len(r) for r in rows]
        longest = max(lengths)
        if all(length == longest for length in lengths):
            return self.model(torch.stack(rows), logits_index=index)
        ids = torch.full((len(rows), longest), self.model.info.mask_id, dtype=torch.long, device=device)
        valid = torch.zeros((len(rows), longest), dtype=torch.bool, device=device)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = row
            valid[r, : len(row)] = True
        return self.model(ids, attention_mask=valid, logits_index=index)

    def _commit(self, seq: Sequence, block_logits: torch.Tensor) -> StepResult:
        st: _State = seq.engine_state
        p: ReferenceParams = seq.params
        start, end = st.block_span(seq)
        block = st.canvas[start:end]
        masked = block == self.model.info.mask_id
        if st.step_in_block == 0:
            st.schedule = split_steps(int(masked.sum()), st.steps_per_block)
        k = st.schedule[st.step_in_block]

        committed: list[tuple[int, int]] = []
        if k > 0:
            logits = block_logits[: end - start]
            x0 = gumbel_argmax(logits, p.temperature, st.generator)
            if p.remasking == "low_confidence":
                conf = torch.softmax(logits, dim=-1).gather(-1, x0[:, None]).squeeze(-1)
            else:
                conf = torch.rand(x0.shape, generator=st.generator, device=x0.device)
            conf = conf.masked_fill(~masked, -float("inf"))
            picked = torch.sort(conf, descending=True, stable=True).indices[:k]
            block[picked] = x0[picked]
            committed = list(zip((picked + start - seq.prompt_len).tolist(), x0[picked].tolist()))

        st.step_in_block += 1
        if st.step_in_block == st.steps_per_block:
            st.block += 1
            st.step_in_block = 0
        finished = st.block * p.block_length >= seq.gen_length
        return StepResult(seq, committed, finished, nfe=1)
