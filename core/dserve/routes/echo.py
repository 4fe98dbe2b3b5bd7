"""`/v1/completions` with `echo: true`: the prompt before the completion, and with `logprobs`
the prompt's per-token values (the shape lm-eval's `local-completions` reads for loglikelihood).

A prompt token's value has no context/continuation split to rest on, so it is defined per
token: for a mask predictor (LLaDA, Dream), token i's log-probability given the tokens before it
with every later prompt position masked (`left_to_right` scoring: the values of a span add up
to its log-probability in left-to-right order, one of the orders the Monte Carlo estimator
averages over; one forward per token); for a model with an autoregressive mode (Nemotron), the
exact next-token log-probability. The first token has none (null), as in OpenAI's API.
Generated tokens (max_tokens > 0) follow with the log-probability they had when committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dserve.errors import BadRequest
from dserve.routes._common import response_id, run_unless_disconnected, set_log_fields
from dserve.routes._logprobs import Entry, completion_logprobs, merge
from dserve.scoring import submit as scoring
from dserve.service import GenerationService, collect_text


async def _prompt_entries(service: GenerationService, prompts: list[list[int]], top_n: int) -> tuple[list[list[Entry]], int]:
    """Per prompt, its tokens' values (None for the first); and the forwards they took."""
    spec = scoring.resolve(service, {"check_greedy": False}, per_token=True)
    scored = [i for i, p in enumerate(prompts) if len(p) > 1]
    pairs = [(prompts[i][:1], prompts[i][1:]) for i in scored]
    handles = scoring.submit(service, spec, pairs, seed=None, loop=asyncio.get_running_loop(), top_n=top_n) if pairs else []
    try:
        results = await asyncio.gather(*(scoring.result_of(h) for h in handles))
    finally:
        for h in handles:
            if not h.done:
                service.scheduler.cancel(h)  # type: ignore[union-attr]  # set once the model is ready
    entries: list[list[Entry]] = [[None] for _ in prompts]
    for i, r in zip(scored, results):
        assert r.token_logprobs is not None and r.top_logprobs is not None
        entries[i] += list(zip(r.token_logprobs, r.top_logprobs))
    return entries, sum(r.nfe for r in results)


async def echo_completion(
    request: Request,
    service: GenerationService,
    body: Any,
    prompts: list[list[int]],
    prompt_texts: list[str] | None,
    generate_handles: Callable[..., Any],
) -> Response:
    if body.stream:
        raise BadRequest("echo is not supported with stream: true", param="echo")
    tok = service.model.tokenizer
    texts = prompt_texts or [tok.decode(p) for p in prompts]
    max_tokens = body.max_tokens if body.max_tokens is not None else service.settings.max_tokens
    handles = []
    if max_tokens > 0:
        _, _, handles = generate_handles(service, body, prompts, max_tokens, body.logprobs)
    try:
        scoring_work = _prompt_entries(service, prompts, body.logprobs) if body.logprobs is not None else None
        gathered = await run_unless_disconnected(
            request,
            asyncio.gather(*(collect_text(h) for h in handles), *([scoring_work] if scoring_work is not None else [])),
        )
    finally:
        for h in handles:
            if not h.done:
                service.scheduler.cancel(h)  # type: ignore[union-attr]  # set once the model is ready
    generated = gathered[: len(handles)]
    entries, scoring_nfe = gathered[len(handles)] if scoring_work is not None else (None, 0)
    choices = []
    for i in range(len(prompts) * body.n):
        p = i // body.n
        handle = handles[i] if handles else None
        text = texts[p] + (generated[i] if handle else "")
        logprobs = None
        if entries is not None:
            logprobs = completion_logprobs(tok, prompts[p], entries[p])
            if handle is not None:
                tracker = handle.tracker
                ids, values = list(tracker.output_ids), list(tracker.output_logprobs)
                if tracker.stop_token is not None:  # reported as a generated token, as vLLM does
                    ids.append(tracker.stop_token[0])
                    values.append(tracker.stop_token[1])
                tail = completion_logprobs(tok, ids, values, len(texts[p]))
                logprobs = merge(logprobs, tail)
        finish = handle.tracker.finish_reason if handle else "length"
        choices.append({"index": i, "text": text, "finish_reason": finish, "logprobs": logprobs})
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(h.completion_tokens for h in handles)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "nfe": scoring_nfe + sum(h.nfe for h in handles),
    }
    set_log_fields(request, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, nfe=usage["nfe"], echo=True)
    meta = {"id": "cmpl-" + response_id(request), "created": int(time.time()), "model": service.model_id}
    return JSONResponse({**meta, "object": "text_completion", "choices": choices, "usage": usage})
