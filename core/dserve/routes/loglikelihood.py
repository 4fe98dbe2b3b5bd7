"""POST /v1/loglikelihood: each continuation's log-likelihood given a context, its greedy flag
and the estimate's standard error (docs/eval.md)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dserve.errors import BadRequest
from dserve.routes._common import parse_body, run_unless_disconnected, set_log_fields
from dserve.routes._tokenize import check_prompt_chars, tokenize
from dserve.scoring import submit as scoring
from dserve.scoring.params import DEFAULT_SEED, ScoringParams
from dserve.scoring.protocol import LoglikelihoodRequest
from dserve.service import GenerationService


def _pairs(tokenizer: Any, body: LoglikelihoodRequest) -> list[tuple[list[int], list[int]]]:
    context = body.context
    pairs = []
    for continuation in body.continuations:
        if isinstance(context, str) and isinstance(continuation, str):
            pairs.append(scoring.encode_pair(tokenizer, context, continuation, body.add_special_tokens))
        elif isinstance(context, list) and isinstance(continuation, list):
            pairs.append((list(context), list(continuation)))
        else:
            raise BadRequest("context and continuations must both be text or both be token ids", param="continuations")
    return pairs


async def loglikelihood(request: Request) -> Response:
    body = await parse_body(request, LoglikelihoodRequest)
    service: GenerationService = request.app.state.dserve
    service.check_model(body.model)
    if service.scheduler is not None and len(body.continuations) > service.scheduler.max_queue_size:
        raise BadRequest("more continuations than the server queues at once (--max-queue-size)", param="continuations")
    text_chars = sum(len(x) for x in (body.context, *body.continuations) if isinstance(x, str))
    check_prompt_chars(service, text_chars, "context")
    spec = scoring.resolve(service, body.estimator_fields())
    pairs = await tokenize(_pairs, service.model.tokenizer, body)
    handles = scoring.submit(service, spec, pairs, seed=body.seed, loop=asyncio.get_running_loop())
    set_log_fields(request, engine="scoring", algorithm=spec.algorithm.name, n=len(handles))
    try:
        results = await run_unless_disconnected(request, asyncio.gather(*(scoring.result_of(h) for h in handles)))
    finally:
        for h in handles:
            if not h.done:
                service.scheduler.cancel(h)  # type: ignore[union-attr]  # set once the model is ready
    params = spec.params
    assert isinstance(params, ScoringParams)
    monte_carlo = spec.algorithm is scoring.MONTE_CARLO
    out = [
        {
            "index": i,
            "loglikelihood": r.loglikelihood,
            "is_greedy": r.is_greedy,
            "stderr": r.stderr,
            "context_tokens": len(context),
            "continuation_tokens": len(continuation),
            "nfe": r.nfe,
        }
        for i, (r, (context, continuation)) in enumerate(zip(results, pairs))
    ]
    tokens = sum(len(c) + len(x) for c, x in pairs)
    return JSONResponse(
        {
            "object": "loglikelihood",
            "model": service.model_id,
            "estimator": spec.algorithm.name,
            "mc_num": params.mc_num if monte_carlo else None,
            "seed": (DEFAULT_SEED if body.seed is None else body.seed) if monte_carlo else None,
            "results": out,
            "usage": {
                "prompt_tokens": tokens,
                "completion_tokens": 0,
                "total_tokens": tokens,
                "nfe": sum(r.nfe for r in results),
            },
        }
    )
