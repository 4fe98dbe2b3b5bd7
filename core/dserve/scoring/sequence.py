"""A scoring sequence: one (context, continuation) pair as the scheduler queues it, and the
result its runner leaves on it."""

from __future__ import annotations

from dataclasses import dataclass, field

from dserve.sequence import Sequence


@dataclass
class ScoreResult:
    loglikelihood: float
    is_greedy: bool | None  # None: the greedy check was not asked for
    stderr: float | None  # None: exact (autoregressive) or a single Monte Carlo sample
    nfe: int = 0  # model forward passes (rows) spent on the pair
    # per-token mode (echo): each continuation token's value and its top alternatives
    token_logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None


@dataclass(eq=False)
class ScoreSequence(Sequence):
    """prompt_ids = context + continuation; the continuation starts at `context_len`."""

    context_len: int = 0
    top_n: int | None = None  # per-token mode with this many alternatives per token (None: one total)
    result: ScoreResult | None = field(default=None)

    @property
    def continuation(self) -> list[int]:
        return self.prompt_ids[self.context_len :]
