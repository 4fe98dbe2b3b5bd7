"""The published LLaDA sampling loop (ML-GSAI/LLaDA generate.py) as a step-wise runner.

Per sequence: canvas = prompt + gen_length masks, cut into blocks of `block_length`; each block
gets `steps_per_block` steps and commits a fixed number of tokens per step (the block's masks
split evenly, remainder first). Every step runs the model over the whole canvas with no cache,
picks x0 = argmax of the (Gumbel-noised at T > 0) logits and commits the `k` masked positions of
the current block with the highest confidence (softmax probability of x0, or uniform noise for
`random` remasking). Sequences of different lengths and parameters share one forward:
canvases are right-padded and pads are hidden from attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dserve.engine import AlgorithmRunner, StepResult
from dserve.sampling import gumbel_argmax, make_generator, split_steps
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


class ReferenceRunner(AlgorithmRunner):
    def init_state(self, seq: Sequence) -> _State:
        mask_id = self.model.info.mask_id
        device = self.model.device
        canvas = torch.full((seq.prompt_len + seq.gen_length,), mask_id, dtype=torch.long, device=device)
        canvas[: seq.prompt_len] = torch.tensor(seq.prompt_ids, dtype=torch.long, device=device)
        return _State(canvas, make_generator(seq.seed, device), seq.params.steps_per_block(seq.gen_length))

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = list(self.sequences)
        if not seqs:
            return []
        mask_id = self.model.info.mask_id
        rows, conditional, unconditional = [], {}, {}
        for seq in seqs:
            conditional[seq.seq_id] = len(rows)
            rows.append(seq.engine_state.canvas)
            if seq.params.cfg_scale > 0:
                # the unconditional copy: the prompt masked out
                un = seq.engine_state.canvas.clone()
                un[: seq.prompt_len] = mask_id
                unconditional[seq.seq_id] = len(rows)
                rows.append(un)
        logits = self._forward(rows)
        results = []
        for seq in seqs:
            l = logits[conditional[seq.seq_id], : len(seq.engine_state.canvas)]
            if seq.seq_id in unconditional:
                un = logits[unconditional[seq.seq_id], : len(seq.engine_state.canvas)]
                l = un + (seq.params.cfg_scale + 1) * (l - un)
            results.append(self._commit(seq, l))
        return results

    def _forward(self, rows: list[torch.Tensor]) -> torch.Tensor:
        lengths = [len(r) for r in rows]
        longest = max(lengths)
        if all(n == longest for n in lengths):
            return self.model(torch.stack(rows))
        ids = torch.full((len(rows), longest), self.model.info.mask_id, dtype=torch.long, device=rows[0].device)
        valid = torch.zeros((len(rows), longest), dtype=torch.bool, device=rows[0].device)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = row
            valid[r, : len(row)] = True
        return self.model(ids, attention_mask=valid)

    def _commit(self, seq: Sequence, logits: torch.Tensor) -> StepResult:
        st: _State = seq.engine_state
        p: ReferenceParams = seq.params
        mask_id = self.model.info.mask_id
        start = seq.prompt_len + st.block * p.block_length
        end = min(start + p.block_length, len(st.canvas))
        if st.step_in_block == 0:
            masked_in_block = int((st.canvas[start:end] == mask_id).sum())
            st.schedule = split_steps(masked_in_block, st.steps_per_block)
        k = st.schedule[st.step_in_block]

        committed: list[tuple[int, int]] = []
        if k > 0:
            masked = st.canvas == mask_id
            x0 = gumbel_argmax(logits, p.temperature, st.generator)
            if p.remasking == "low_confidence":
                probs = torch.softmax(logits, dim=-1)
                conf = torch.gather(probs, -1, x0[:, None]).squeeze(-1)
            else:
                conf = torch.rand(x0.shape, generator=st.generator, device=x0.device)
            conf[end:] = -float("inf")
            conf = torch.where(masked, conf, torch.tensor(-float("inf"), device=conf.device, dtype=conf.dtype))
            picked = torch.topk(conf, k).indices
            st.canvas[picked] = x0[picked]
            committed = list(zip((picked - seq.prompt_len).tolist(), x0[picked].tolist()))

        st.step_in_block += 1
        if st.step_in_block == st.steps_per_block:
            st.block += 1
            st.step_in_block = 0
        finished = st.block * p.block_length >= seq.gen_length
        return StepResult(seq, committed, finished, nfe=1)
