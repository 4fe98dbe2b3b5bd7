"""The async job API of dLLM-Serve: submit with /v1/generate or /v1/generate_batch, poll
/v1/result/{id}. Prompts are user messages (the chat template is applied when the model has
one). Finished results are kept for `--result-ttl` seconds, then forgotten (404). Ids are
random strings bound to the API key that submitted them (`JobStore`)."""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dserve.errors import APIError, BadRequest, NotFound
from dserve.modeling.tokenizer import chat_prompt_ids, completion_prompt_ids
from dserve.protocol import GenerateBatchRequest, GenerateRequest
from dserve.request_fields import ignored_header
from dserve.routes._common import parse_body
from dserve.routes._tokenize import check_prompt_chars, tokenize
from dserve.service import collect_text


@dataclass
class Job:
    job_id: str
    owner: str | None  # the API key (its non-secret id) that submitted the job; None without --api-key
    status: str = "running"  # running | finished | failed
    text: str | None = None
    error: dict | None = None
    finish_reason: str | None = None
    finished_at: float | None = None
    task: asyncio.Task | None = field(default=None, repr=False)


class JobStore:
    """Jobs by id. Ids are random (`secrets.token_urlsafe`, 128 bits): nobody can guess
    another client's; with `--api-key` a job is also bound to the key that submitted it and
    another key gets 404 for it. Finished jobs expire `ttl` seconds after they finish, oldest
    first, from a queue ordered by finishing time (expiry costs what it removes, not a scan)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.jobs: dict[str, Job] = {}
        self._finished: collections.deque[tuple[float, str]] = collections.deque()  # (finished_at, id)

    def new(self, owner: str | None) -> Job:
        self.expire()
        job = Job(new_job_id(), owner)
        self.jobs[job.job_id] = job
        return job

    def get(self, job_id: str, owner: str | None) -> Job | None:
        self.expire()
        job = self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def finish(self, job: Job) -> None:
        job.finished_at = time.monotonic()
        self._finished.append((job.finished_at, job.job_id))

    def expire(self) -> None:
        now = time.monotonic()
        while self._finished and now - self._finished[0][0] > self.ttl:
            self.jobs.pop(self._finished.popleft()[1], None)

    def cancel_all(self) -> None:
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()


def new_job_id() -> str:
    return secrets.token_urlsafe(16)


def job_owner(request: Request) -> str | None:
    """Who a job belongs to: the verified API key's id (set by ApiKeyMiddleware), if any."""
    return request.scope.get("state", {}).get("api_key_id")


def valid_job_id(raw: str) -> bool:
    """A well-formed id (ASCII letters, digits, '-', '_'; short): anything else is a 404."""
    return 0 < len(raw) <= MAX_JOB_ID_CHARS and raw.isascii() and all(c.isalnum() or c in "-_" for c in raw)


MAX_JOB_ID_CHARS = 64


def _store(request: Request) -> JobStore:
    return request.app.state.jobs


async def _submit(request: Request, body: GenerateRequest, prompts: list[str]) -> Response:
    service = request.app.state.dserve
    service.check_model(service.model_id)
    tok = service.model.tokenizer
    loop = asyncio.get_running_loop()
    store = _store(request)
    # engine, algorithm and parameters resolved once for all the prompts
    spec, sorted_fields = service.resolve_body(body)
    if len(prompts) > service.scheduler.max_queue_size:  # a 429 would tell the client to retry forever
        raise BadRequest(
            f"{len(prompts)} prompts; this server queues at most {service.scheduler.max_queue_size} (--max-queue-size)",
            param="prompts",
            code="too_many_generations",
        )
    for prompt in prompts:
        check_prompt_chars(service, len(prompt), "prompt" if len(prompts) == 1 else "prompts")

    def prompt_ids(prompt: str) -> list[int]:
        if getattr(tok, "chat_template", None):
            return chat_prompt_ids(tok, [{"role": "user", "content": prompt}])
        return completion_prompt_ids(tok, prompt)

    all_ids = await tokenize(lambda: [prompt_ids(p) for p in prompts])
    submitted = []
    try:
        for ids in all_ids:
            (handle,) = service.submit(
                ids,
                spec,
                max_tokens=body.max_tokens or body.gen_length,
                n=1,
                seed=body.seed,
                stop=[],
                loop=loop,
            )
            submitted.append(handle)
    except Exception:
        # all or nothing: a batch refused part-way (queue full, a prompt too long) must not
        # leave its earlier prompts decoding with no job id anyone could poll
        for handle in submitted:
            service.scheduler.cancel(handle)
        raise
    ids = []
    owner = job_owner(request)
    for handle in submitted:
        job = store.new(owner)
        job.task = asyncio.ensure_future(_run(store, job, handle))
        ids.append(job.job_id)
    return JSONResponse({"request_ids": ids, "status": "submitted"}, headers=ignored_header(sorted_fields))


async def _run(store: JobStore, job: Job, handle) -> None:
    try:
        job.text = await collect_text(handle)
        job.finish_reason = handle.tracker.finish_reason
        job.status = "finished"
    except APIError as exc:
        job.status, job.error = "failed", exc.body()["error"]
    finally:
        store.finish(job)


async def generate(request: Request) -> Response:
    body = await parse_body(request, GenerateRequest)
    return await _submit(request, body, [body.prompt])


async def generate_batch(request: Request) -> Response:
    body = await parse_body(request, GenerateBatchRequest)
    return await _submit(request, body, body.prompts)


async def result(request: Request) -> Response:
    raw = request.path_params["request_id"]
    job = _store(request).get(raw, job_owner(request)) if valid_job_id(raw) else None
    if job is None:
        shown = raw if len(raw) <= MAX_JOB_ID_CHARS else raw[:MAX_JOB_ID_CHARS] + "..."
        raise NotFound(
            f"no request with id {shown!r} (unknown, expired or not yours)", param="request_id", code="request_not_found"
        )
    body: dict[str, Any] = {"request_id": job.job_id, "status": job.status, "text": job.text}
    if job.finish_reason:
        body["finish_reason"] = job.finish_reason
    if job.error:
        body["error"] = job.error
    return JSONResponse(body)
