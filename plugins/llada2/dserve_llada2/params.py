"""Parameters of the llada2 engine's block diffusion (torch-free: listing algorithms must not load torch).

Names, meanings and defaults are the published `LLaDA2MoeModelLM.generate`'s: `steps` is per
block (not for the whole generation as in the core's declaration), `threshold` 0.95,
`block_length` 32, `minimal_topk` 1, `eos_early_stop` false, `top_k` / `top_p` for sampling.
`max_tokens` is the published `gen_length` exactly (blocks sit on absolute positions, so the
canvas is not rounded to whole blocks from the prompt end).
"""

from __future__ import annotations

from pydantic import Field

from dserve.params import DecodingParams


class LLaDA2Params(DecodingParams):
    """Block diffusion over a block-causal KV cache, as published. Blocks are the absolute
    positions [j*block_length, (j+1)*block_length): the prompt's whole blocks are encoded into the
    cache at once, the first denoised block holds the prompt's tail. Each step forwards the
    current block over the cache and commits, among its masked positions, every one whose
    confidence (the probability of its argmax) exceeds `threshold` when there are at least the
    step's quota of them, else the quota most confident ones; the quotas split `block_length`
    over `steps` (remainder first). A block ends when it has no mask or its `steps` are spent;
    decoding ends after a block that holds EOS (`eos_early_stop`: as soon as an EOS is committed
    with no mask before it)."""

    steps: int | None = Field(32, ge=1, le=512, description="denoising steps per block (the published meaning; default 32)")
    block_length: int = Field(32, ge=1, le=4096, description="block size (the published default: 32)")
    threshold: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="commit every masked position with confidence > threshold when at least the "
        "step's quota qualify, else the quota most confident (1.0: always the fixed quota)",
    )
    minimal_topk: int = Field(1, ge=1, le=4096, description="steps are capped at max_tokens // minimal_topk (published)")
    eos_early_stop: bool = Field(
        False, description="stop as soon as an EOS is committed with no mask before it (else after its block)"
    )
    top_k: int | None = Field(None, ge=0, description="sampling (temperature > 0): keep the k most likely tokens")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="sampling (temperature > 0): nucleus mass")

    def gen_length(self, max_tokens: int) -> int:
        return max_tokens  # the published gen_length; blocks are absolute, the runner pads the canvas

    def block_steps(self, gen_length: int) -> int:
        """The published `steps = min(steps, gen_length // minimal_topk)` (at least one)."""
        return max(1, min(self.steps or 32, gen_length // self.minimal_topk))


class LLaDA2EditingParams(DecodingParams):
    """LLaDA2.1's block diffusion with token editing (its published `generate`), over the same
    block-causal cache. Each step of a block commits masked positions as `llada2` does, with a
    fixed quota `num_to_transfer` in place of the step schedule, and also rewrites already
    decoded (not prompt) positions of the block whose new argmax differs from the current token
    with confidence > `editing_threshold`. Once the block has no mask, editing steps continue
    until one changes nothing or `max_post_steps` of them ran. Tokens may change until their
    block is final, so a block's tokens are streamed when it ends. `steps` is not used (the
    published loop has no step budget)."""

    block_length: int = Field(32, ge=1, le=4096, description="block size (the published default: 32)")
    threshold: float = Field(
        0.95, ge=0.0, le=1.0, description="mask -> token: commit masked positions with confidence > threshold"
    )
    editing_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="token -> token: rewrite a decoded position whose argmax changed with confidence > this"
    )
    max_post_steps: int = Field(16, ge=0, le=512, description="editing steps after a block has no mask left, at most")
    num_to_transfer: int = Field(
        1, ge=1, le=4096, description="masked positions committed per step when too few pass the threshold"
    )
    eos_early_stop: bool = Field(
        False,
        description="published: stop after a block once the answer holds EOS and no mask; dserve stops there in both "
        "settings (later blocks cannot change the answer)",
    )
    top_k: int | None = Field(None, ge=0, description="sampling (temperature > 0): keep the k most likely tokens")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="sampling (temperature > 0): nucleus mass")

    def gen_length(self, max_tokens: int) -> int:
        return max_tokens
