"""A sequence as the scheduler and engines see it: one generation of one request."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from dserve.params import DecodingParams

_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    max_tokens: int
    params: DecodingParams
    seed: int | None = None
    ignore_eos: bool = False  # decode the whole canvas: engines must not stop early at EOS
    seq_id: int = field(default_factory=lambda: next(_ids))
    gen_length: int = 0  # canvas slots after the prompt: max_tokens rounded up to whole blocks
    engine_state: Any = None  # the runner's per-sequence state

    def __post_init__(self) -> None:
        self.gen_length = self.params.gen_length(self.max_tokens)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)
