"""Nemotron linear self-speculation (the published `linear_spec_generate`, batch 1 there) as a
step-wise runner over any batch.

Prefill: encode the prompt causally, take the next token (the seed). Each round (one step, two
forwards):
- draft: the block [seed, MASK x (L-1)] at the positions after the cache, bidirectional, over
  the cache; every masked slot whose confidence (softmax at its argmax, tempered at T > 0)
  exceeds `threshold` gets its prediction;
- verify: the drafted block causally over the cache, writing its K/V; `ar` = the next-token
  predictions; accept a = 1 + the number of leading i with ar[i] == block[i + 1]; emit ar[:a];
  the cache keeps the block's first a slots (the seed and the accepted drafts, i.e. exactly
  the causal cache of the emitted text) and ar[a - 1] seeds the next round.
A stop token among the emitted ends the sequence after it; emitted tokens past `max_tokens` are
cut (the published loop can overshoot by a few). At T = 0 the output is greedy AR decoding's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from dserve.batch import Row
from dserve.engine import StepResult
from dserve.logprobs import committed_logprobs
from dserve.sampling import make_generator
from dserve.sequence import Sequence
from dserve_nemotron.params import LinearSpecParams
from dserve_nemotron.runner_base import NemotronRunner, over_cache, sample


@dataclass
class _State:
    prompt: torch.Tensor
    generator: torch.Generator
    cache_row: int | None
    generated: int = 0  # tokens emitted; the last one (the seed) is not yet in the cache
    seed: int | None = None

    def cache_len(self, prompt_len: int) -> int:
        return prompt_len + self.generated - 1


class LinearSpecRunner(NemotronRunner):
    reports_logprobs = True

    def init_state(self, seq: Sequence) -> _State:
        device = self.model.device
        prompt = torch.tensor(seq.prompt_ids, dtype=torch.long, device=device)
        # a draft block may start at the last generated position and reach a block past the end
        positions = seq.prompt_len + seq.gen_length + seq.params.block_length
        return _State(prompt, make_generator(seq.seed, device), self.take_cache_row(positions))

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = list(self.sequences)
        fresh = [s for s in seqs if s.engine_state.generated == 0]
        rounds = [s for s in seqs if s.engine_state.generated > 0]
        results = {}
        prefill = self.forward(
            [
                over_cache(s.engine_state.prompt, 0, causal=True, cache_row=s.engine_state.cache_row, all_logits=False)
                for s in fresh
            ],
            graphable=False,
        )
        for seq, logits in zip(fresh, prefill):
            results[seq.seq_id] = self._emit(
                seq, [int(sample(logits[-1], seq.params.temperature, seq.engine_state.generator))], nfe=1, logits=logits[-1:]
            )
        if rounds:
            blocks = [self._draft_block(s) for s in rounds]
            drafts = self.forward([self._block_row(s, b, causal=False) for s, b in zip(rounds, blocks)])
            blocks = [self._fill(s, b, draft) for s, b, draft in zip(rounds, blocks, drafts)]
            verified = self.forward([self._block_row(s, b, causal=True) for s, b in zip(rounds, blocks)])
            for seq, block, logits in zip(rounds, blocks, verified):
                results[seq.seq_id] = self._accept(seq, block, logits)
        return [results[s.seq_id] for s in seqs]

    def _draft_block(self, seq: Sequence) -> torch.Tensor:
        p = cast(LinearSpecParams, seq.params)  # linear_spec sequences carry LinearSpecParams
        block = torch.full((p.block_length,), self.model.info.mask_id, dtype=torch.long, device=self.model.device)
        block[0] = seq.engine_state.seed
        return block

    def _block_row(self, seq: Sequence, block: torch.Tensor, *, causal: bool) -> Row:
        st: _State = seq.engine_state
        assert st.cache_row is not None  # taken at admission, given back only at release
        return over_cache(block, st.cache_len(seq.prompt_len), causal=causal, cache_row=st.cache_row, all_logits=True)

    def _fill(self, seq: Sequence, block: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        p = cast(LinearSpecParams, seq.params)  # linear_spec sequences carry LinearSpecParams
        tokens = sample(logits, p.temperature, seq.engine_state.generator)
        probs = torch.softmax(logits / p.temperature if p.temperature > 0 else logits, dim=-1)
        conf = probs.gather(-1, tokens[:, None]).squeeze(-1)
        fill = (block == self.model.info.mask_id) & (conf > p.threshold)
        # the published loop raises when nothing clears the threshold; here the verify pass
        # still yields its one bonus token
        return torch.where(fill, tokens, block)

    def _accept(self, seq: Sequence, block: torch.Tensor, logits: torch.Tensor) -> StepResult:
        ar = sample(logits, seq.params.temperature, seq.engine_state.generator).tolist()
        drafted = block.tolist()
        accepted = 1
        while accepted < len(drafted) and ar[accepted - 1] == drafted[accepted]:
            accepted += 1
        return self._emit(seq, ar[:accepted], nfe=2, logits=logits)

    def _emit(self, seq: Sequence, tokens: list[int], nfe: int, logits: torch.Tensor) -> StepResult:
        """Commit `tokens`, each predicted by the same row of `logits` (the verify pass's causal
        rows, or the prefill's last row)."""
        st: _State = seq.engine_state
        stop = next((i for i, t in enumerate(tokens) if self.is_stop(seq, t)), None)
        if stop is not None:
            tokens = tokens[: stop + 1]
        tokens = tokens[: seq.gen_length - st.generated]
        committed = [(st.generated + i, t) for i, t in enumerate(tokens)]
        st.generated += len(tokens)
        st.seed = tokens[-1]
        finished = stop is not None or st.generated >= seq.gen_length
        logprobs = committed_logprobs(seq.logprobs, committed, logits, committed[0][0] if committed else 0)
        return StepResult(seq, committed, finished=finished, nfe=nfe, logprobs=logprobs)
