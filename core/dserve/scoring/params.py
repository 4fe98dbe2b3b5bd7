"""A scoring request's parameters (torch-free): what the estimator is told, with the published
defaults (ML-GSAI/LLaDA get_log_likelihood.py and eval_llada.py)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from dserve.params import DecodingParams

DEFAULT_MC_NUM = 128  # get_log_likelihood.py / eval_llada.py: "128 Monte Carlo samples are adequate"
MAX_MC_BATCH_SIZE = 16  # get_log_likelihood.py's batch_size default
DEFAULT_SEED = 1234  # eval_llada.py's set_seed(1234)
MAX_MC_NUM = 4096


def default_mc_batch_size(mc_num: int) -> int:
    """The largest divisor of mc_num that is at most 16 (the published default batch size):
    the published loop runs mc_num // batch_size mini-batches, so the batch must divide it."""
    return max(d for d in range(1, min(mc_num, MAX_MC_BATCH_SIZE) + 1) if mc_num % d == 0)


class ScoringParams(DecodingParams):
    """Monte Carlo estimator settings (ignored by the exact autoregressive scorer)."""

    mc_num: int = Field(DEFAULT_MC_NUM, ge=1, le=MAX_MC_NUM, description="Monte Carlo samples (masked copies)")
    mc_batch_size: int | None = Field(
        None, ge=1, le=MAX_MC_NUM, description="samples per mini-batch (default: largest divisor of mc_num up to 16)"
    )
    cfg_scale: float = Field(0.0, ge=0.0, le=20.0, description="unsupervised classifier-free guidance scale (0: off)")
    check_greedy: bool = Field(True, description="also run the published greedy check (one forward per token)")

    @field_validator("mc_batch_size")
    @classmethod
    def _divides(cls, v: int | None, info: ValidationInfo) -> int | None:
        mc_num = info.data.get("mc_num", DEFAULT_MC_NUM)
        if v is not None and mc_num % v:
            raise ValueError(f"mc_batch_size {v} must divide mc_num {mc_num}")
        return v

    @property
    def batch_size(self) -> int:
        return self.mc_batch_size or default_mc_batch_size(self.mc_num)
