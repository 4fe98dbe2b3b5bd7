"""A sequence as the scheduler and engines see it: one generation of one request, and the
request's resolved decoding choice it carries."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from dserve.params import DecodingParams
from dserve.registry import AlgorithmSpec, EngineSpec

_ids = itertools.count()


@dataclass(frozen=True)
class RequestSpec:
    """A request's decoding choice, resolved once by the service: engine, algorithm and the
    validated parameters. The scheduler builds and keys runners from it, by no name lookup."""

    engine: EngineSpec
    algorithm: AlgorithmSpec
    params: DecodingParams

    @property
    def runner_key(self) -> tuple[str, str]:
        """Sequences with the same key share a running batch (one runner)."""
        return (self.engine.name, self.algorithm.name)


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    max_tokens: int
    params: DecodingParams
    seed: int | None = None
    ignore_eos: bool = False  # decode the whole canvas: engines must not stop early at EOS
    spec: RequestSpec | None = None  # what the request resolved to (None: a runner driven directly, in tests)
    seq_id: int = field(default_factory=lambda: next(_ids))
    gen_length: int = 0  # canvas slots after the prompt: max_tokens rounded up to whole blocks
    engine_state: Any = None  # the runner's per-sequence state
    logprobs: int | None = None  # report committed tokens' log-probabilities with this many alternatives

    def __post_init__(self) -> None:
        self.gen_length = self.params.gen_length(self.max_tokens)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)
