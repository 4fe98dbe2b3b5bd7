"""Scoring requests onto the scheduler: the scorer a model family gets, parameter resolution,
limits, and awaiting the results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from dserve.errors import BadRequest, Unavailable
from dserve.output import OutputTracker
from dserve.params import ParamError, resolve_params
from dserve.registry import BIDIRECTIONAL, BLOCK_CAUSAL, AlgorithmSpec, EngineSpec
from dserve.scheduler import GenerationHandle
from dserve.scoring.params import ScoringParams
from dserve.scoring.sequence import ScoreResult, ScoreSequence
from dserve.sequence import RequestSpec
from dserve.service import GenerationService, collect_text

MONTE_CARLO = AlgorithmSpec(
    name="monte_carlo",
    runner="dserve.scoring.runner:MonteCarloScorer",
    params="dserve.scoring.params:ScoringParams",
    requires=frozenset({BIDIRECTIONAL}),
    description="LLaDA's published Monte Carlo likelihood estimator and greedy check (mask predictors)",
)
AUTOREGRESSIVE = AlgorithmSpec(
    name="autoregressive",
    runner="dserve.scoring.runner:AutoregressiveScorer",
    params="dserve.scoring.params:ScoringParams",
    requires=frozenset({BLOCK_CAUSAL}),
    description="exact token log-probabilities under causal attention (Nemotron-Labs-Diffusion's AR mode)",
)
LEFT_TO_RIGHT = AlgorithmSpec(
    name="left_to_right",
    runner="dserve.scoring.runner:LeftToRightScorer",
    params="dserve.scoring.params:ScoringParams",
    requires=frozenset({BIDIRECTIONAL}),
    description="per-token values of a mask predictor: each token with the earlier ones given, the later masked",
)
# not registered: scoring is no decoding choice; its runners are keyed ("scoring", estimator)
SCORING = EngineSpec(name="scoring", algorithms=(MONTE_CARLO, AUTOREGRESSIVE, LEFT_TO_RIGHT), default_algorithm="monte_carlo")


def scorer_for(capabilities: frozenset[str], *, per_token: bool = False) -> AlgorithmSpec:
    """Mask predictors (bidirectional attention) get the Monte Carlo estimator (per token: the
    left-to-right values); a model whose attention can be causal gets exact autoregressive
    log-probabilities."""
    if BIDIRECTIONAL in capabilities:
        return LEFT_TO_RIGHT if per_token else MONTE_CARLO
    if BLOCK_CAUSAL in capabilities:
        return AUTOREGRESSIVE
    raise BadRequest("this model family has no scoring method", code="scoring_not_supported")


def resolve(service: GenerationService, fields: Mapping[str, Any], *, per_token: bool = False) -> RequestSpec:
    algorithm = scorer_for(service.model.info.capabilities, per_token=per_token)
    try:
        params = resolve_params(ScoringParams, fields, algorithm=f"scoring/{algorithm.name}", shared=())
    except ParamError as exc:
        raise BadRequest(str(exc), param=exc.param) from None
    return RequestSpec(SCORING, algorithm, params)


def encode_pair(tokenizer: Any, context: str, continuation: str, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """eval_llada.py's `_encode_pair`: the context's trailing spaces move to the continuation;
    the continuation is what the whole text's tokens add after the context's."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def check_pair(service: GenerationService, spec: RequestSpec, context: list[int], continuation: list[int]) -> None:
    info = service.model.info
    if not continuation:
        raise BadRequest("a continuation has no tokens", param="continuations", code="empty_continuation")
    if spec.algorithm is AUTOREGRESSIVE and not context:
        raise BadRequest("autoregressive scoring needs a non-empty context", param="context")
    if len(context) + len(continuation) > info.max_length:
        raise BadRequest(
            f"context + continuation ({len(context) + len(continuation)} tokens) exceeds the model's context of "
            f"{info.max_length} tokens",
            param="continuations",
            code="context_length_exceeded",
        )
    for name, ids in (("context", context), ("continuations", continuation)):
        if any(not 0 <= t < info.vocab_size for t in ids):
            raise BadRequest(f"token ids must be in [0, {info.vocab_size})", param=name)


def submit(
    service: GenerationService,
    spec: RequestSpec,
    pairs: list[tuple[list[int], list[int]]],
    *,
    seed: int | None,
    loop: asyncio.AbstractEventLoop,
    top_n: int | None = None,
) -> list[GenerationHandle]:
    """Queue one scoring sequence per (context, continuation) pair, all with the same seed (the
    continuations of one context are compared under the same random masks)."""
    if service.scheduler is None:
        raise Unavailable("the model is still loading", code="model_loading")
    for context, continuation in pairs:
        check_pair(service, spec, context, continuation)
    deadline = time.monotonic() + service.settings.request_timeout if service.settings.request_timeout else None
    handles = []
    for context, continuation in pairs:
        seq = ScoreSequence(context + continuation, 1, spec.params, seed=seed, spec=spec, context_len=len(context), top_n=top_n)
        tracker = OutputTracker(service.model.tokenizer, 0, 1, ())
        handles.append(GenerationHandle(seq, tracker, loop, deadline=deadline))
    service.scheduler.submit(handles)
    return handles


async def result_of(handle: GenerationHandle) -> ScoreResult:
    await collect_text(handle)  # raises the sequence's error
    seq = handle.seq
    assert isinstance(seq, ScoreSequence) and seq.result is not None
    return seq.result
