"""The native scoring route's request and response shapes (POST /v1/loglikelihood)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dserve.scoring.params import DEFAULT_MC_NUM, DEFAULT_SEED, MAX_MC_NUM

MAX_CONTINUATIONS = 64


class LoglikelihoodRequest(BaseModel):
    """A context and the continuations to score against it (text, or token ids)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., max_length=512)
    context: str | list[int] = Field(..., description="text (tokenized as eval_llada.py does) or token ids")
    continuations: list[str] | list[list[int]] = Field(..., min_length=1, max_length=MAX_CONTINUATIONS)
    mc_num: int | None = Field(
        None, ge=1, le=MAX_MC_NUM, description=f"Monte Carlo samples per continuation (default {DEFAULT_MC_NUM})"
    )
    mc_batch_size: int | None = Field(
        None, ge=1, le=MAX_MC_NUM, description="samples per mini-batch; must divide mc_num (default: largest divisor up to 16)"
    )
    cfg_scale: float | None = Field(None, ge=0.0, le=20.0, description="unsupervised classifier-free guidance (default 0)")
    check_greedy: bool | None = Field(None, description="run the greedy check (default true)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description=f"seed of the random masks (default {DEFAULT_SEED})")
    add_special_tokens: bool = Field(True, description="text only: the tokenizer adds its special tokens (BOS), as eval_llada.py")

    def estimator_fields(self) -> dict[str, Any]:
        return {
            "mc_num": self.mc_num,
            "mc_batch_size": self.mc_batch_size,
            "cfg_scale": self.cfg_scale,
            "check_greedy": self.check_greedy,
        }


class LoglikelihoodResult(BaseModel):
    index: int
    loglikelihood: float = Field(description="log p(continuation | context): the estimate (monte_carlo) or exact")
    is_greedy: bool | None = Field(description="the continuation is the greedy decode (None: check_greedy false)")
    stderr: float | None = Field(description="standard error of the estimate (None: exact, or mc_num 1)")
    context_tokens: int
    continuation_tokens: int
    nfe: int


class LoglikelihoodResponse(BaseModel):
    object: Literal["loglikelihood"]
    model: str
    estimator: Literal["monte_carlo", "autoregressive"]
    mc_num: int | None
    seed: int | None
    results: list[LoglikelihoodResult]
    usage: dict[str, int]
