"""Parameters of the Fast-dLLM algorithms (torch-free: listing algorithms must not load torch).

Defaults are those of the published functions (`generate`, `generate_with_prefix_cache`,
`generate_with_dual_cache` in NVlabs/Fast-dLLM llada/generate.py): `threshold=None` and
`factor=None`, i.e. the fixed LLaDA-style split of each block's masks over its steps, and
low-confidence remasking. Decision: we keep that default rather than the evaluation scripts'
`threshold=0.9`, so that `threshold` stays optional as users of the earlier servers expect and a
request without it decodes exactly like the published function called without it. For the
published evaluation setting pass `threshold=0.9` (with `block_length=32`, the default here) or
set it as a server default (`DSERVE_*` / CLI); `steps` is then unused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from dserve.params import DecodingParams


class FastDLLMParams(DecodingParams):
    """Fast-dLLM parallel decoding. Which positions of the current block a step commits:

    - neither `threshold` nor `factor` (default): the block's masks split evenly over its
      steps (`steps` for the whole generation; default one token per step), the most
      confident first, as in LLaDA;
    - `threshold`: the most confident masked position, plus every other one whose confidence
      (float64 softmax probability of its prediction) is >= threshold;
    - `factor`: sorted confidences c(0) >= c(1) >= ...; commit the first r that all clear
      1 - factor / (rank + 2) (the first always). `factor` wins when both are given.

    A block is done when it has no mask left; threshold and factor steps commit at least one
    token, so a block takes at most block_length steps.
    """

    threshold: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="confidence-aware parallel decoding: commit every masked position of the block "
        "with confidence >= threshold (at least one per step); null = fixed split over `steps` "
        "(the published default; Fast-dLLM's evaluations use 0.9)",
    )
    factor: float | None = Field(
        None,
        gt=0.0,
        description="factor-based parallel decoding: commit the top-n positions whose confidences "
        "clear 1 - factor/(rank+2); wins over threshold; null = off",
    )
    remasking: Literal["low_confidence", "random"] = Field(
        "low_confidence",
        description="order of commits under the fixed split: by confidence, or uniformly random "
        "('random' is only allowed without threshold and factor)",
    )

    @field_validator("remasking")
    @classmethod
    def _random_needs_fixed_schedule(cls, value: str, info: ValidationInfo) -> str:
        # threshold/factor compare confidences with a bar; with random "confidences" (uniform
        # noise, as the published code would use) that bar means nothing, so we refuse it.
        if value == "random" and (info.data.get("threshold") is not None or info.data.get("factor") is not None):
            raise ValueError("remasking='random' works only with the fixed schedule (no threshold or factor)")
        return value

    @property
    def rule(self) -> str:
        """Which commit rule applies: 'factor', 'threshold' or 'fixed'."""
        if self.factor is not None:
            return "factor"
        if self.threshold is not None:
            return "threshold"
        return "fixed"


class APDParams(FastDLLMParams):
    """Confidence-adaptive parallel decoding (vdiff's `--enable-apd`), on the dual cache.

    Each step commits the leftmost masked positions of the block, in order, while each one's
    confidence clears `apd_threshold`, at most `apd_max_parallel` of them and at least the first.
    Left to right is what makes parallel commits safe here: a run of confident neighbours is
    accepted together, and the first unsure position waits for the next step, which sees the
    accepted tokens. This is the variant without an auxiliary autoregressive verifier; the
    published APD (danielmisrael/apd) needs a second, autoregressive model to accept drafts.
    """

    apd_max_parallel: int = Field(8, ge=1, le=1024, description="most tokens committed per step")
    apd_threshold: float = Field(
        0.3, gt=0.0, le=1.0, description="a masked position is committed (left to right) while its confidence is >= this"
    )

    @model_validator(mode="after")
    def _own_rule_only(self) -> "APDParams":
        if self.threshold is not None or self.factor is not None:
            raise ValueError("apd commits by apd_threshold / apd_max_parallel; threshold and factor do not apply")
        return self
