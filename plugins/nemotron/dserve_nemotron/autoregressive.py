"""Nemotron autoregressive decoding (the published `ar_generate`) as a step-wise runner.

The first step encodes the prompt causally into the sequence's cache row and takes the next
token from its last logit; every later step forwards the last token causally over the cache
(writing its K/V) and takes the next one. The sequence ends at a stop token or after
`max_tokens` tokens. Rows of any prompt length share a step (prefills in one forward, single
tokens in another).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dserve.batch import Row
from dserve.engine import StepResult
from dserve.logprobs import token_logprobs
from dserve.sampling import make_generator
from dserve.sequence import Sequence
from dserve_nemotron.runner_base import NemotronRunner, over_cache, sample


@dataclass
class _State:
    prompt: torch.Tensor
    generator: torch.Generator
    cache_row: int | None
    generated: int = 0
    last: torch.Tensor | None = None  # [1]: the newest token, not yet in the cache


class AutoregressiveRunner(NemotronRunner):
    reports_logprobs = True

    def init_state(self, seq: Sequence) -> _State:
        device = self.model.device
        prompt = torch.tensor(seq.prompt_ids, dtype=torch.long, device=device)
        return _State(prompt, make_generator(seq.seed, device), self.take_cache_row(seq.prompt_len + seq.gen_length))

    def _row(self, seq: Sequence) -> Row:
        st: _State = seq.engine_state
        assert st.cache_row is not None  # taken at admission, given back only at release
        if st.generated == 0:
            return over_cache(st.prompt, 0, causal=True, cache_row=st.cache_row, all_logits=False)
        assert st.last is not None  # set by every step after the prefill
        return over_cache(st.last, seq.prompt_len + st.generated - 1, causal=True, cache_row=st.cache_row, all_logits=False)

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = list(self.sequences)
        logits: dict[int, torch.Tensor] = {}
        fresh = [s for s in seqs if s.engine_state.generated == 0]
        running = [s for s in seqs if s.engine_state.generated]
        for group, graphable in ((fresh, False), (running, True)):
            rows = [self._row(s) for s in group]
            logits.update({s.seq_id: row_logits[-1] for s, row_logits in zip(group, self.forward(rows, graphable=graphable))})
        results = []
        for seq in seqs:
            st: _State = seq.engine_state
            token = sample(logits[seq.seq_id], seq.params.temperature, st.generator)
            st.last = token.reshape(1)
            t = int(token)
            offset = st.generated
            st.generated += 1
            finished = self.is_stop(seq, t) or st.generated >= seq.gen_length
            logprobs = None if seq.logprobs is None else token_logprobs(logits[seq.seq_id][None], token.reshape(1), seq.logprobs)
            results.append(StepResult(seq, [(offset, t)], finished=finished, nfe=1, logprobs=logprobs))
        return results
