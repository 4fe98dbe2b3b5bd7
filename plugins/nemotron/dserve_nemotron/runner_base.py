"""What the Nemotron runners share beyond the core's `CachedRunner` (one KV-cache row per
sequence, exact causal or block-causal K/V of everything final, and the core's batched forward
over those rows): stop tokens, token sampling and the rows they forward."""

from __future__ import annotations

import torch

from dserve.batch import Row
from dserve.engine import CachedRunner
from dserve.sampling import gumbel_argmax
from dserve.sequence import Sequence


class NemotronRunner(CachedRunner):
    # the block, token and draft forwards repeat their shapes step after step: CUDA graphs on a
    # GPU; prefills pass graphable=False (one shape per prompt length, run once)
    graphable = True

    def __init__(self, model, *, max_batch_size: int = 16):
        super().__init__(model, max_batch_size=max_batch_size)
        self.stop_ids = frozenset(model.info.stop_ids)

    def is_stop(self, seq: Sequence, token: int) -> bool:
        return not seq.ignore_eos and token in self.stop_ids


def over_cache(tokens: torch.Tensor, start: int, *, causal: bool, cache_row: int, all_logits: bool) -> Row:
    """`tokens` at positions start.. over the cache row's valid prefix [0, start): causal, or
    bidirectional inside the input; logits at every input position or only the last one."""
    n = tokens.shape[0]
    return Row(tokens, start=start, causal=causal, cache_row=cache_row, logits=None if all_logits else (n - 1, n))


def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Greedy at T = 0, else a sample from softmax(logits / T) (the Gumbel-max trick in float64,
    drawn from the sequence's own generator; the published loops call torch.multinomial, which
    samples the same distribution from the global generator)."""
    return gumbel_argmax(logits, temperature, generator)
