"""Parameters of the dInfer algorithms (torch-free: listing algorithms must not load torch).

Defaults are the published ones (inclusionAI/dInfer@fce4e32): `SamplingParams` of
decoding/serving.py for threshold 0.9, low_threshold 0.6, cache 'dual', early_stop, cont_weight
0.3, prefix_look 16, after_look 16, warmup_steps 4; the decoder and manager constructors for
the credit (0.7 / 0.2 / 0.8), soft (0.15 / 0.02 / 0.02) and unroll (4 / 8) values; the
benchmark CLI for block_length 64. `steps` (a common diffusion field) is accepted and ignored:
every dInfer rule is threshold-driven.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from dserve.params import DecodingParams

_VICINITY = ("prefix_look", "after_look", "warmup_steps")


class DInferParams(DecodingParams):
    """dInfer's blockwise threshold decoding (ThresholdParallelDecoder) and its cache managers."""

    block_length: int = Field(64, ge=1, le=4096, description="semi-autoregressive block length")
    threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="commit every masked slot whose confidence is >= threshold (at least the top one)"
    )
    cache: Literal["none", "prefix", "dual"] = Field(
        "dual",
        description="KV cache: none (full canvas each step), prefix (forward the block and what follows), "
        "dual (forward the block only; with vicinity refresh when prefix_look/after_look/warmup_steps > 0)",
    )
    prefix_look: int = Field(16, ge=0, le=4096, description="dual cache: positions before the block recomputed every step")
    after_look: int = Field(16, ge=0, le=4096, description="dual cache: positions after the block recomputed every step")
    warmup_steps: int = Field(4, ge=0, le=4096, description="dual cache: first iterations run on the full canvas without cache")
    cache_update_freq: int | None = Field(
        None, ge=1, le=4096, description="also refresh the whole cache every this many iterations (null: only at a new block)"
    )
    early_stop: bool = Field(True, description="stop once a finished block holds EOS / end-of-turn (later slots become EOS)")
    maximum_unroll: int = Field(4, ge=1, le=64, description="iterations run between completion checks, at most")
    expected_tpf: int = Field(8, ge=1, le=4096, description="unroll = clamp(masks in block // expected_tpf, 1, maximum_unroll)")
    start_block_align: bool = Field(
        False, description="blocks at absolute multiples of block_length (the first overlaps the prompt), as dInfer's benchmarks"
    )

    def block_starts(self, prompt_len: int, gen_length: int) -> list[int]:
        if not self.start_block_align:
            return super().block_starts(prompt_len, gen_length)
        # blocks at absolute multiples of block_length: the first one holds the prompt's tail
        first = prompt_len // self.block_length * self.block_length
        return [max(0, s - prompt_len) for s in range(first, prompt_len + gen_length, self.block_length)]

    @property
    def vicinity(self) -> bool:
        """Vicinity refresh (VicinityCacheDiffusionLLM) rather than plain block-start refresh."""
        return self.cache == "dual" and (self.prefix_look > 0 or self.after_look > 0 or self.warmup_steps > 0)

    @field_validator(*_VICINITY)
    @classmethod
    def _vicinity_needs_dual(cls, value: int, info: ValidationInfo) -> int:
        # Runs only for values given explicitly (defaults are not validated): with cache 'none' or
        # 'prefix' the vicinity defaults are simply unused, an explicit window is an error. dInfer's
        # vicinity window needs dual-cache replace ranges (with a prefix cache its slice_scatter
        # fails unless the window reaches the canvas end; without a cache it asserts).
        cache = info.data.get("cache", "dual")
        if value > 0 and cache != "dual":
            raise ValueError(f"{info.field_name} > 0 (vicinity refresh) needs cache='dual', got cache={cache!r}")
        return value

    @field_validator("cache_update_freq")
    @classmethod
    def _freq_needs_cache(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("cache", "dual") == "none":
            raise ValueError("cache_update_freq needs cache='prefix' or 'dual'")
        return value


class HierarchyParams(DInferParams):
    """HierarchyDecoder: the best slot of every run of consecutive masks, plus every slot above threshold."""

    low_threshold: float = Field(
        0.6, ge=0.0, le=1.0, description="a run's best slot commits only if its confidence is > low_threshold"
    )


class CreditParams(DInferParams):
    """CreditThresholdParallelDecoder: threshold decoding on logits fused with a per-block credit EMA."""

    credit_alpha: float = Field(0.7, ge=0.0, le=100.0, description="weight of log(1 + credit) added to the logits")
    boost_gamma: float = Field(0.2, gt=0.0, le=10.0, description="credit added per decode: top-1 probability ** boost_gamma")
    decay_beta: float = Field(0.8, ge=0.0, le=1.0, description="credit decay per decode call")


class SoftParams(DInferParams):
    """IterSmooth: masked inputs carry a growing share of the expected embedding of the last prediction."""

    cont_weight: float = Field(0.3, ge=0.0, le=10.0, description="largest share of the soft embedding")
    cont_weight_init: float = Field(0.15, ge=0.0, le=10.0, description="soft share at iteration 0")
    cont_weight_growth: float = Field(0.02, ge=0.0, le=10.0, description="soft share added per iteration")
    threshold_decay: float = Field(
        0.02, ge=0.0, le=1.0, description="iteration t commits at max(1 - t * threshold_decay, threshold)"
    )
