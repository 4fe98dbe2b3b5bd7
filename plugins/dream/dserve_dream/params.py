"""Parameters of Dream's `diffusion_generate` (torch-free: listing algorithms must not load torch).

Defaults follow the published code: eps 1e-3, temperature 0, top_p / top_k / alg_temp off. Two
decisions: `steps` defaults to one token per step (steps = max_tokens, the recipe of Dream's
README and instruct evaluations) rather than generation_config's fixed 512, which for short
answers would spend hundreds of forwards on canvases that are already complete; and there are no
blocks (one canvas, every step sees all of it), so `block_length` is ignored and the canvas is
exactly max_tokens long.
"""

from __future__ import annotations

from pydantic import Field

from dserve.params import DecodingParams


class DreamParams(DecodingParams):
    """Dream diffusion decoding. Each step the model sees the whole canvas. A time schedule
    t = linspace(1, eps, steps + 1) sets how many masked positions a step commits:
    int(masked * (1 - s/t)) of the row's current masked count (all of them at the last step);
    the algorithm decides which (origin: each independently at random; maskgit_plus: highest
    top-1 probability; topk_margin: highest top-1 minus top-2 probability; entropy: lowest
    entropy)."""

    eps: float = Field(1e-3, gt=0.0, lt=1.0, description="the schedule's final time: t runs from 1 down to eps")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus filter before the softmax; null = off")
    top_k: int | None = Field(None, ge=1, description="keep the k largest logits before the softmax; null = off")
    alg_temp: float | None = Field(
        None,
        ge=0.0,
        description="0 or null: commit the most confident positions; > 0: sample them from "
        "softmax(confidence / alg_temp) (not used by origin)",
    )

    def gen_length(self, max_tokens: int) -> int:
        return max_tokens  # no blocks

    def block_starts(self, prompt_len: int, gen_length: int) -> list[int]:
        return [0]  # one canvas, no blocks

    def total_steps(self, gen_length: int) -> int:
        return self.steps if self.steps is not None else gen_length
