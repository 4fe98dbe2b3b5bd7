"""The async job API of dLLM-Serve: submit with /v1/generate or /v1/generate_batch, poll
/v1/result/{id}. Prompts are user messages (the chat template is applied when the model has
one). Finished results are kept for `--result-ttl` seconds, then forgotten (404)."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dserve.errors import APIError, BadRequest, NotFound
from dserve.modeling.tokenizer import chat_prompt_ids, completion_prompt_ids
from dserve.protocol import GenerateBatchRequest, GenerateRequest
from dserve.routes._common import parse_body
from dserve.service import collect_text


@dataclass
class Job:
    job_id: int
    status: str = "running"  # running | finished | failed
    text: str | None = None
    error: dict | None = None
    finish_reason: str | None = None
    finished_at: float | None = None
    task: asyncio.Task | None = field(default=None, repr=False)


class JobStore:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count()

    def new(self) -> Job:
        self.expire()
        job = Job(next(self._ids))
        self.jobs[job.job_id] = job
        return job

    def get(self, job_id: int) -> Job | None:
        self.expire()
        return self.jobs.get(job_id)

    def expire(self) -> None:
        now = time.monotonic()
        for job_id in [j.job_id for j in self.jobs.values() if j.finished_at and now - j.finished_at > self.ttl]:
            del self.jobs[job_id]

    def cancel_all(self) -> None:
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()


def _store(request: Request) -> JobStore:
    return request.app.state.jobs


async def _submit(request: Request, body: GenerateRequest, prompts: list[str]) -> Response:
    service = request.app.state.dserve
    service.check_model(service.model_id)
    tok = service.model.tokenizer
    loop = asyncio.get_running_loop()
    store = _store(request)
    # engine, algorithm and parameters resolved once for all the prompts
    spec = service.resolve(body.engine, body.generation_algorithm, body.algorithm_fields())
    if len(prompts) > service.scheduler.max_queue_size:  # a 429 would tell the client to retry forever
        raise BadRequest(
            f"{len(prompts)} prompts; this server queues at most {service.scheduler.max_queue_size} (--max-queue-size)",
            param="prompts",
            code="too_many_generations",
        )
    submitted = []
    try:
        for prompt in prompts:
            ids = (
                chat_prompt_ids(tok, [{"role": "user", "content": prompt}])
                if getattr(tok, "chat_template", None)
                else completion_prompt_ids(tok, prompt)
            )
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
    for handle in submitted:
        job = store.new()
        job.task = asyncio.ensure_future(_run(job, handle))
        ids.append(job.job_id)
    return JSONResponse({"request_ids": ids, "status": "submitted"})


async def _run(job: Job, handle) -> None:
    try:
        job.text = await collect_text(handle)
        job.finish_reason = handle.tracker.finish_reason
        job.status = "finished"
    except APIError as exc:
        job.status, job.error = "failed", exc.body()["error"]
    finally:
        job.finished_at = time.monotonic()


async def generate(request: Request) -> Response:
    body = await parse_body(request, GenerateRequest)
    return await _submit(request, body, [body.prompt])


async def generate_batch(request: Request) -> Response:
    body = await parse_body(request, GenerateBatchRequest)
    return await _submit(request, body, body.prompts)


async def result(request: Request) -> Response:
    raw = request.path_params["request_id"]
    # ASCII only ("²".isdigit() is true) and short (int() refuses over 4300 digits): else 404
    job = _store(request).get(int(raw)) if raw.isascii() and raw.isdigit() and len(raw) <= 20 else None
    if job is None:
        raise NotFound(f"no request with id {raw!r} (unknown or expired)", param="request_id", code="request_not_found")
    body = {"request_id": job.job_id, "status": job.status, "text": job.text}
    if job.finish_reason:
        body["finish_reason"] = job.finish_reason
    if job.error:
        body["error"] = job.error
    return JSONResponse(body)
