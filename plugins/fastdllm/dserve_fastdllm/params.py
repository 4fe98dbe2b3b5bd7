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

from dserve.fields import DecodingField, declared
from dserve.params import DecodingParams

# apd's parameters are also server flags (--apd-max-parallel, DSERVE_APD_THRESHOLD, ...): one
# declaration for both, registered by plugin.py through the register_server_flags hook.
APD_MAX_PARALLEL = DecodingField(
    "apd_max_parallel", int, "apd: most tokens committed per step (default 8)", bounds={"ge": 1, "le": 1024}, wire=False
)
APD_THRESHOLD = DecodingField(
    "apd_threshold",
    float,
    "apd: a masked position is committed (left to right) while its confidence is >= this (default 0.3)",
    bounds={"gt": 0.0, "le": 1.0},
    wire=False,
)
ENABLE_APD = DecodingField(
    "enable_apd",
    bool,
    "default to fastdllm/apd, confidence-adaptive parallel decoding (vdiff's flag; --disable-apd / --no-enable-apd: off)",
    server_default=False,
    wire=False,
    param=False,
    negative_flags=("--disable-apd",),
    selects=("fastdllm", "apd"),
)


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

    threshold: float | None = declared("threshold").field_info(
        None,
        description="confidence-aware parallel decoding: commit every masked position of the block "
        "with confidence >= threshold (at least one per step); null = fixed split over `steps` "
        "(the published default; Fast-dLLM's evaluations use 0.9)",
    )
    factor: float | None = declared("factor").field_info(
        None,
        description="factor-based parallel decoding: commit the top-n positions whose confidences "
        "clear 1 - factor/(rank+2); wins over threshold; null = off",
    )
    remasking: Literal["low_confidence", "random"] = Field(
        "low_confidence",
        description="order of commits under the fixed split: by confidence, or uniformly random "
        "('random' is only allowed without threshold and factor)",
    )

    refresh_every: int = Field(
        1,
        ge=1,
        le=1024,
        description="prefix/dual cache: refresh the whole canvas's K/V at every N-th block start "
        "(1 = the published schedule); the other block starts forward only the previous block and the "
        "current one (or, prefix cache, everything from the previous block on) over the cache, "
        "rewriting the K/V of the positions committed since. An approximation: the K/V of the rest "
        "stay as computed at the last full refresh (docs/benchmarks.md, 'cheaper refresh'). Ignored by basic",
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

    apd_max_parallel: int = APD_MAX_PARALLEL.field_info(8)
    apd_threshold: float = APD_THRESHOLD.field_info(0.3)

    @model_validator(mode="after")
    def _own_rule_only(self) -> APDParams:
        if self.threshold is not None or self.factor is not None:
            raise ValueError("apd commits by apd_threshold / apd_max_parallel; threshold and factor do not apply")
        return self
