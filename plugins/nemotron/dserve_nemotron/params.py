"""Parameters of the Nemotron engine's algorithms (torch-free: listing algorithms must not load torch).

Defaults are the published ones: the model card's `generate(..., block_length=32, threshold=0.9)`,
`linear_spec_generate(..., block_length=32, threshold=0.0)` and `ar_generate` (models.md 3.5,
algorithms.md 5.4).
"""

from __future__ import annotations

from pydantic import Field

from dserve.params import DecodingParams


class BlockDiffusionParams(DecodingParams):
    """Block diffusion over an exact KV cache: the prompt is encoded into the cache, then each
    block of `block_length` is denoised in parallel (bidirectional inside the block, attending to
    the cache) and, once final, encoded into the cache. With a causally encoded prefix (the
    Nemotron-Labs models) each block's first slot is seeded with the next token predicted by the
    previous causal pass. Each step commits the most confident masked position of the block plus
    every other one with confidence >= `threshold` (`threshold: null`: the block's masks split
    evenly over its steps). A block ends when it has no mask, or holds EOS with no mask before it.
    """

    block_length: int = Field(32, ge=1, le=4096, description="block size (the published default: 32)")
    threshold: float | None = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="commit the top-1 masked position plus every masked position with confidence "
        ">= threshold; null = fixed split of each block's masks over its steps",
    )
    causal_context: bool | None = Field(
        None,
        description="encode the prompt and finished blocks causally and seed each block with the "
        "next-token prediction (true), or block-causally with fully masked blocks (false); null = "
        "the model's published setting (Nemotron-Labs: true, research DiffEncoderModel: false)",
    )


class AutoregressiveParams(DecodingParams):
    """Plain autoregressive decoding with a KV cache: one token per step from the causal
    next-token logits (the same weights, causal attention)."""

    def gen_length(self, max_tokens: int) -> int:
        return max_tokens  # no blocks: exactly max_tokens slots

    def block_starts(self, prompt_len: int, gen_length: int) -> list[int]:
        return [0]


class LinearSpecParams(DecodingParams):
    """Self-speculative decoding: each round drafts a block bidirectionally (the last accepted
    token followed by masks, filled where confidence > `threshold`), verifies it with one causal
    pass, and accepts the longest drafted prefix that matches the causal predictions plus one
    bonus token (2 forwards per round). At temperature 0 the output is greedy autoregressive
    decoding's."""

    block_length: int = Field(32, ge=2, le=4096, description="draft block size (the published default: 32)")
    threshold: float = Field(
        0.0, ge=0.0, le=1.0, description="draft only masked positions whose confidence exceeds this (0: all)"
    )

    def gen_length(self, max_tokens: int) -> int:
        return max_tokens  # accepted runs are cut at max_tokens

    def block_starts(self, prompt_len: int, gen_length: int) -> list[int]:
        return [0]  # drafts follow the last accepted token, not fixed blocks
