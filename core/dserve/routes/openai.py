"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dserve.canvas import TokenTexts, canvas_object
from dserve.errors import APIError, BadRequest, NotFound
from dserve.middleware.metrics import STREAM_ERROR_STATUS
from dserve.modeling.tokenizer import chat_prompt_ids, completion_prompt_ids
from dserve.protocol import ChatCompletionRequest, CompletionRequest
from dserve.request_fields import ignored_header
from dserve.routes._common import parse_body, response_id, run_unless_disconnected, set_log_fields
from dserve.routes._logprobs import chat_logprobs, completion_logprobs
from dserve.routes._tokenize import check_prompt_chars, tokenize
from dserve.routes.echo import echo_completion
from dserve.scheduler import GenerationHandle
from dserve.service import GenerationService, collect_text


def _service(request: Request) -> GenerationService:
    return request.app.state.dserve


def _model_card(service: GenerationService) -> dict[str, Any]:
    return {
        "id": service.model_id,
        "object": "model",
        "created": service.created,
        "owned_by": "dserve",
        "root": service.model_id,
        "parent": None,
        "max_model_len": service.model.info.max_length,
        "family": service.model.info.family,
    }


async def list_models(request: Request) -> Response:
    service = _service(request)
    data = [_model_card(service)] if service.model is not None else []
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    """One model (`client.models.retrieve`); ids may hold slashes (`org/name`)."""
    service = _service(request)
    name = request.path_params["model_id"]
    if not name:  # `/v1/models/`: the path route matches an empty id; answer as `/v1/models` does
        return await list_models(request)
    if service.model is None or name != service.model_id:
        raise NotFound(f"The model {name!r} does not exist", param="model", code="model_not_found")
    return JSONResponse(_model_card(service))


async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    service = _service(request)
    service.check_model(body.model)
    messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages]
    check_prompt_chars(service, sum(len(m["content"]) for m in messages), "messages")
    try:
        prompt_ids = await tokenize(chat_prompt_ids, service.model.tokenizer, messages)
    except ValueError as exc:
        raise BadRequest(str(exc), param="messages") from None
    max_tokens = body.max_completion_tokens or body.max_tokens
    if body.top_logprobs is not None and not body.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return await _generate(request, service, body, [prompt_ids], max_tokens, chat=True, logprobs=logprobs)


async def completions(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    service = _service(request)
    service.check_model(body.model)
    tok = service.model.tokenizer
    prompt: Any = body.prompt  # str | list[str] | list[int] | list[list[int]]: told apart below
    if isinstance(prompt, str):
        check_prompt_chars(service, len(prompt), "prompt")
        prompts = [await tokenize(completion_prompt_ids, tok, prompt)]
    elif prompt and all(isinstance(p, str) for p in prompt):
        for p in prompt:
            check_prompt_chars(service, len(p), "prompt")
        prompts = await tokenize(lambda: [completion_prompt_ids(tok, p) for p in prompt])
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    elif prompt and all(isinstance(p, list) for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise BadRequest("prompt must be a string, a list of strings, or token ids", param="prompt")
    vocab = service.model.info.vocab_size
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise BadRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
    if body.echo:
        texts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt[0], str) else None
        return await echo_completion(request, service, body, prompts, texts, _generate_handles)
    if body.max_tokens == 0:
        raise BadRequest("max_tokens 0 needs echo: true (scoring the prompt)", param="max_tokens")
    return await _generate(request, service, body, prompts, body.max_tokens, chat=False, logprobs=body.logprobs)


def _generate_handles(service, body, prompts, max_tokens, logprobs) -> tuple[Any, Any, list[GenerationHandle]]:
    """(the request's RequestSpec, its sorted fields (what was ignored), its queued handles: n per
    prompt, prompt-major)."""
    loop = asyncio.get_running_loop()
    sequences = len(prompts) * body.n
    if sequences > service.scheduler.max_queue_size:  # a 429 would tell the client to retry forever
        raise BadRequest(
            f"the request asks for {sequences} generations (prompts x n); this server queues at most "
            f"{service.scheduler.max_queue_size} (--max-queue-size)",
            param="n",
            code="too_many_generations",
        )
    if body.stream_canvas and not body.stream:
        raise BadRequest("stream_canvas needs stream: true", param="stream_canvas")
    handles: list[GenerationHandle] = []
    spec, sorted_fields = service.resolve_body(body)  # once per request
    try:
        for prompt_ids in prompts:
            hs = service.submit(
                prompt_ids,
                spec,
                max_tokens=max_tokens,
                n=body.n,
                seed=body.seed,
                stop=body.stop,
                loop=loop,
                ignore_eos=body.ignore_eos,
                logprobs=logprobs,
                stream_canvas=body.stream_canvas,
            )
            handles.extend(hs)
    except APIError:
        for h in handles:
            service.scheduler.cancel(h)
        raise
    return spec, sorted_fields, handles


async def _generate(request, service, body, prompts, max_tokens, *, chat: bool, logprobs: int | None = None) -> Response:
    if logprobs is not None and body.stream:
        raise BadRequest("logprobs are not supported with stream: true", param="logprobs")
    spec, sorted_fields, handles = _generate_handles(service, body, prompts, max_tokens, logprobs)
    meta = {
        "id": ("chatcmpl-" if chat else "cmpl-") + response_id(request),
        "created": int(time.time()),
        "model": service.model_id,
    }
    seq = handles[0].seq
    set_log_fields(
        request,
        engine=spec.engine.name,
        algorithm=spec.algorithm.name,
        steps=getattr(seq.params, "steps", None) or seq.gen_length,  # the resolved budget; nfe = what it took
        prompt_tokens=sum(len(p) for p in prompts),
        n=len(handles),
    )
    if request.app.state.settings.log_prompts:  # --log-prompts: opt-in, off by default
        # "prompt_text", not "prompt"/"messages": the access log drops those names as a guard
        set_log_fields(request, prompt_text=[m.model_dump(exclude_none=True) for m in body.messages] if chat else body.prompt)
    prompt_tokens = sum(len(p) for p in prompts)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _stream(request, service, handles, meta, chat, include_usage, prompt_tokens, body.return_token_ids)
        headers = {"Cache-Control": "no-cache", **ignored_header(sorted_fields)}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    try:
        texts = await run_unless_disconnected(request, asyncio.gather(*(collect_text(h) for h in handles)))
    finally:
        for h in handles:
            if not h.done:
                service.scheduler.cancel(h)
    usage = _usage(prompt_tokens, handles)
    _record(request, service, handles, usage)
    choices = []
    tok = service.model.tokenizer
    for i, (h, text) in enumerate(zip(handles, texts)):
        lp: dict[str, Any] | None = None
        if logprobs is not None:
            ids, entries = h.tracker.output_ids, h.tracker.output_logprobs
            lp = chat_logprobs(tok, ids, entries) if chat else completion_logprobs(tok, ids, entries)
        if chat:
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": h.tracker.finish_reason,
                    "logprobs": lp,
                }
            )
        else:
            choices.append({"index": i, "text": text, "finish_reason": h.tracker.finish_reason, "logprobs": lp})
        if body.return_token_ids:
            choices[-1].update(token_ids_fields(h, chat))
    obj = "chat.completion" if chat else "text_completion"
    out = {**meta, "object": obj, "choices": choices, "usage": usage}
    if body.return_token_ids and chat:
        out["prompt_token_ids"] = prompts[0]
    return JSONResponse(out, headers=ignored_header(sorted_fields))


def token_ids_fields(handle: GenerationHandle, chat: bool) -> dict[str, Any]:
    """`return_token_ids` (vLLM's shape): a choice's output token ids; completions choices
    also carry their prompt's (a chat response carries the one prompt's at the top level)."""
    fields: dict[str, Any] = {"token_ids": list(handle.tracker.output_ids)}
    if not chat:
        fields["prompt_token_ids"] = list(handle.seq.prompt_ids)
    return fields


def _usage(prompt_tokens: int, handles: list[GenerationHandle]) -> dict[str, int]:
    completion = sum(h.completion_tokens for h in handles)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "nfe": sum(h.nfe for h in handles),
    }


def _record(request: Request, service: GenerationService, handles, usage) -> None:
    set_log_fields(request, completion_tokens=usage["completion_tokens"], nfe=usage["nfe"])
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.record_usage(usage["prompt_tokens"], usage["completion_tokens"])
        for h in handles:
            if h.first_token_at is not None:
                metrics.time_to_first_token.observe(h.first_token_at - h.submitted_at)


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream(request, service, handles, meta, chat, include_usage, prompt_tokens, token_ids=False) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> dict:
        if chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            c = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            c = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
        out = {**meta, "object": obj, "choices": [c]}
        if include_usage:
            out["usage"] = None
        return out

    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, handle: GenerationHandle) -> None:
        while True:
            event = await handle.events.get()
            await queue.put((index, event))
            if event.kind not in ("delta", "canvas"):
                return

    pumps = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
    texts: TokenTexts | None = None  # token id -> text, for canvas chunks
    try:
        if chat:
            for i in range(len(handles)):
                first = chunk(i, "", None, first=True)
                if token_ids:
                    first["prompt_token_ids"] = list(handles[i].seq.prompt_ids)
                yield _sse(first)
        remaining = len(handles)
        while remaining:
            index, event = await queue.get()
            if event.kind == "delta":
                yield _sse(chunk(index, event.text, None))
            elif event.kind == "canvas" and event.canvas is not None:
                if texts is None:
                    texts = TokenTexts(service.model.tokenizer)
                yield _sse({**chunk(index, None if chat else "", None), "canvas": canvas_object(event.canvas, texts)})
            elif event.kind == "error":
                err = event.error or APIError("generation failed")
                request.scope.setdefault("state", {})[STREAM_ERROR_STATUS] = err.status  # a failure in /metrics
                yield _sse(err.body())
                remaining = 0
                break
            else:
                remaining -= 1
                last = chunk(index, None if chat else "", handles[index].tracker.finish_reason)
                if token_ids:  # the whole choice's ids, once: concatenated over chunks, the list
                    last["choices"][0].update(token_ids_fields(handles[index], chat))
                yield _sse(last)
        if include_usage:
            usage = _usage(prompt_tokens, handles)
            yield _sse({**meta, "object": obj, "choices": [], "usage": usage})
        _record(request, service, handles, _usage(prompt_tokens, handles))
        yield "data: [DONE]\n\n"
    finally:
        for p in pumps:
            p.cancel()
        for h in handles:
            if not h.done:
                service.scheduler.cancel(h)
