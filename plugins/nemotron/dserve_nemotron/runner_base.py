"""What the Nemotron runners share: one KV-cache row per sequence (exact, causal or block-causal
K/V of everything final), the batched forward over those rows, and token sampling."""

from __future__ import annotations

import torch

from dserve.engine import AlgorithmRunner
from dserve.modeling.cache_pool import CachePool
from dserve.sampling import gumbel_argmax
from dserve.sequence import Sequence
from dserve_nemotron.cached_forward import RowInput, forward_over_cache


class CachedRunner(AlgorithmRunner):
    # the block, token and draft forwards repeat their shapes step after step: CUDA graphs on a
    # GPU; prefills pass graphed=False (one shape per prompt length, run once)
    graphable = True

    def __init__(self, model, *, max_batch_size: int = 16):
        super().__init__(model, max_batch_size=max_batch_size)
        self.pool = CachePool(model, max_batch_size)
        self.stop_ids = frozenset(model.info.stop_ids)

    def take_cache_row(self, positions: int) -> int:
        """A cache row reserved for `positions` slots at the sequence's first forward, so the
        cache (and the CUDA graphs captured over it) does not change while the sequence runs."""
        return self.pool.take(positions)

    def free_state(self, seq: Sequence) -> None:
        st = seq.engine_state
        if st is not None and st.cache_row is not None:
            self.pool.give(st.cache_row)
            st.cache_row = None

    def forward(self, rows: list[RowInput], *, graphed: bool = True) -> list[torch.Tensor]:
        return forward_over_cache(self.model, self.pool, rows, graphed=graphed) if rows else []

    def is_stop(self, seq: Sequence, token: int) -> bool:
        return not seq.ignore_eos and token in self.stop_ids


def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Greedy at T = 0, else a sample from softmax(logits / T) (the Gumbel-max trick in float64,
    drawn from the sequence's own generator; the published loops call torch.multinomial, which
    samples the same distribution from the global generator)."""
    return gumbel_argmax(logits, temperature, generator)
