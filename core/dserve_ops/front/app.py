"""The front's Starlette app: its own operations routes, async job id translation, and a
catch-all route proxying every other path to the least-loaded healthy worker.

Front routes:

====================  =======================================================================
``/health``           200 with the worker summary while ≥1 worker is healthy, else 503
``/health/live``      200: the front process answers
``/health/ready``     200 while ≥1 worker is healthy and the front is not draining, else 503
``/stats``            the load balancer view (``stats.front_stats``)
``/worker-status``    per-worker state (``stats.worker_status``)
``/batch/stats``      the workers' batch statistics, aggregated (same keys as one server's)
``/v1/engine/stats``  a worker's engine stats with the batch statistics aggregated
``/metrics``          every worker's metrics labelled ``worker``, plus the front's
``/v1/generate``,     forwarded to a worker; the returned job ids are the front's
``/v1/generate_batch``
``/v1/result/{id}``   forwarded to the worker that has the job
``/openapi.json``     a worker's document plus the front's routes and its 502/504 answers
====================  =======================================================================

Everything else (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/generation/algorithms``, ``/docs``, plugin routes, ...) is forwarded by path.

Middleware: request id, access log, CORS, body limit, API keys and the rate limit run here,
once for the whole service (workers keep checking API keys too; rate limits and CORS are
the front's alone, see ``command.py``).
"""

from __future__ import annotations

import contextlib
import json

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dserve import __version__
from dserve.errors import error_body
from dserve.middleware import RequestBodyTooLarge, middleware_from_settings
from dserve.routes.jobs import MAX_JOB_ID_CHARS, job_owner, valid_job_id
from dserve.settings import Settings
from dserve_ops.front import metrics as front_metrics
from dserve_ops.front.jobs import JobMap
from dserve_ops.front.proxy import ClientGone, Proxy, openai_error
from dserve_ops.front.router import Router
from dserve_ops.front.stats import aggregate_batch_stats, front_stats, worker_status
from dserve_ops.front.workers import WorkerPool

log = structlog.get_logger("dserve.front")

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class Front:
    """The front's state: worker pool, router, proxy, job map, draining flag."""

    def __init__(self, settings: Settings, pool: WorkerPool):
        self.settings = settings
        self.pool = pool
        self.router = Router(pool)
        self.proxy = Proxy(pool, self.router)
        self.jobs = JobMap(settings.result_ttl)
        self.draining = False

    @property
    def ready(self) -> bool:
        return not self.draining and bool(self.pool.healthy())


def _front(request: Request) -> Front:
    return request.app.state.front


def _shutting_down() -> JSONResponse:
    return openai_error(503, "the server is shutting down", "service_unavailable", "server_shutting_down", {"retry-after": "5"})


# ---- operations ---------------------------------------------------------------------------


async def health(request: Request) -> Response:
    f = _front(request)
    healthy = len(f.pool.healthy())
    status = "draining" if f.draining else ("ok" if healthy else "unavailable")
    body = {
        "status": status,
        "version": __version__,
        "role": "front",
        "ready": f.ready,
        "healthy_workers": healthy,
        "total_workers": len(f.pool.workers),
        "workers": {str(w.index): w.state for w in f.pool.workers},
    }
    return JSONResponse(body, status_code=200 if f.ready else 503)


async def live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def ready(request: Request) -> Response:
    f = _front(request)
    return JSONResponse({"ready": f.ready, "healthy_workers": len(f.pool.healthy())}, status_code=200 if f.ready else 503)


async def stats(request: Request) -> Response:
    f = _front(request)
    await f.pool.refresh_stats()
    return JSONResponse(front_stats(f.pool, f.draining, len(f.jobs)))


async def workers(request: Request) -> Response:
    f = _front(request)
    await f.pool.refresh_stats()
    return JSONResponse(worker_status(f.pool, f.draining))


async def batch_stats(request: Request) -> Response:
    f = _front(request)
    await f.pool.refresh_stats()
    body = aggregate_batch_stats(f.pool.healthy())
    body["draining"] = f.draining
    body["workers"] = {str(w.index): w.stats for w in f.pool.workers}
    return JSONResponse(body)


async def engine_stats(request: Request) -> Response:
    f = _front(request)
    await f.pool.refresh_stats()
    healthy = f.pool.healthy()
    if not healthy:
        return openai_error(503, "no healthy worker is available; retry shortly", "service_unavailable", "no_healthy_workers")
    body = dict(next((w.stats for w in healthy if w.stats), {}))
    body.pop("device", None)
    body.update(aggregate_batch_stats(healthy))
    memory = [w.stats.get("gpu_memory_used_bytes") for w in healthy if w.stats.get("gpu_memory_used_bytes") is not None]
    body["gpu_memory_used_bytes"] = sum(memory) if memory else None
    body["devices"] = {str(w.index): w.device for w in f.pool.workers}
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    f = _front(request)
    if not f.settings.metrics:
        return openai_error(404, "metrics are disabled (--no-metrics)", "not_found_error", "not_found")
    auth = {"authorization": request.headers["authorization"]} if "authorization" in request.headers else {}
    texts = await front_metrics.scrape(f.pool, f.proxy.client, auth)
    return Response(front_metrics.render(f.pool, texts), media_type="text/plain; version=0.0.4; charset=utf-8")


def _front_openapi() -> dict:
    """A worker's document (the same code builds it) plus the front's own routes; a proxied
    request can also end in 502 (the worker failed) or 504 (the worker went silent)."""
    from dserve.routes.docs import ERROR_DESCRIPTIONS, build_openapi
    from dserve.routes.table import server_routes

    doc = build_openapi(server_routes(metrics=True))
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    extra = {
        "502": "the worker failed while handling the request",
        "504": "the worker sent nothing for the request timeout + 5 s",
    }
    for item in doc["paths"].values():
        for operation in item.values():
            if operation["responses"].keys() & {"400", "503"}:
                operation["responses"].update(
                    {c: {**error, "description": d} for c, d in extra.items() if c not in operation["responses"]}
                )
    ok = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
        }
    }
    auth = {c: {**error, "description": ERROR_DESCRIPTIONS[c]} for c in ("401", "429")}
    doc["paths"]["/stats"] = {
        "get": {"summary": "The front's load-balancer view and aggregated batch statistics", "responses": {**ok, **auth}}
    }
    doc["paths"]["/worker-status"] = {"get": {"summary": "Per-worker state", "responses": {**ok, **auth}}}
    doc["info"]["description"] += " (multi-GPU front)"
    return doc


async def openapi(request: Request) -> Response:
    if not hasattr(request.app.state, "openapi"):
        request.app.state.openapi = _front_openapi()
    return JSONResponse(request.app.state.openapi)


# ---- async jobs ---------------------------------------------------------------------------


async def _exchange(f, request: Request, **send) -> tuple | Response:
    """Send to a worker and read its whole answer: (response, worker, body), or the Response to
    return instead (no worker, client gone, worker failed)."""
    upstream = await f.proxy.send(request, **send)
    if isinstance(upstream, Response):
        return upstream
    resp, w = upstream
    try:
        return resp, w, await f.proxy.read(request, resp, w)
    except ClientGone:
        return Response(status_code=499)
    except Exception as exc:  # noqa: BLE001 - httpx errors
        return f.proxy.failed(w, exc)


async def submit_job(request: Request) -> Response:
    f = _front(request)
    if f.draining:
        return _shutting_down()
    answer = await _exchange(f, request)
    if isinstance(answer, Response):
        return answer
    resp, w, raw = answer
    headers = {"x-dserve-worker": str(w.index)}
    if resp.status_code != 200:
        return Response(raw, status_code=resp.status_code, headers=headers, media_type=resp.headers.get("content-type"))
    body = json.loads(raw)
    owner = job_owner(request)
    body["request_ids"] = [f.jobs.add(w.index, w.epoch, local, owner) for local in body.get("request_ids", [])]
    return JSONResponse(body, headers=headers)


async def job_result(request: Request) -> Response:
    f = _front(request)
    raw = request.path_params["request_id"]
    # ASCII and short ("%C2%B2" or 5000 digits answered 500 when ids were parsed as ints)
    ref = f.jobs.get(raw, job_owner(request)) if valid_job_id(raw) else None
    w = f.pool.workers[ref.worker] if ref is not None else None
    if ref is None or w is None or w.epoch != ref.epoch:
        why = "unknown, expired or not yours" if ref is None else f"worker {ref.worker} restarted since and lost it"
        shown = raw if len(raw) <= MAX_JOB_ID_CHARS else raw[:MAX_JOB_ID_CHARS] + "..."
        return JSONResponse(
            error_body(f"no request with id {shown!r} ({why})", "invalid_request_error", "request_id", "request_not_found"),
            status_code=404,
        )
    answer = await _exchange(f, request, worker=w, path=f"/v1/result/{ref.local_id}")
    if isinstance(answer, Response):
        return answer
    resp, w, content = answer
    if resp.status_code != 200:
        return Response(content, status_code=resp.status_code, media_type=resp.headers.get("content-type"))
    body = json.loads(content)
    body["request_id"] = raw
    if body.get("status") in ("finished", "failed"):
        f.jobs.finished(raw)
    return JSONResponse(body, headers={"x-dserve-worker": str(w.index)})


# ---- everything else ------------------------------------------------------------------------


async def forward(request: Request) -> Response:
    f = _front(request)
    if f.draining:
        return _shutting_down()
    return await f.proxy.forward(request)


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return openai_error(413, "the request body is too large", "invalid_request_error", "request_too_large")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in the front", path=request.url.path)
    return openai_error(500, "internal server error", "internal_error")


def create_front_app(settings: Settings, pool: WorkerPool) -> Starlette:
    front = Front(settings, pool)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await pool.start()
        try:
            yield
        finally:
            if not pool.shutting_down or any(w.alive for w in pool.workers):
                await pool.shutdown(settings.shutdown_grace + 10)
            await front.proxy.aclose()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/worker-status", workers, methods=["GET"]),
        Route("/batch/stats", batch_stats, methods=["GET"]),
        Route("/v1/engine/stats", engine_stats, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/generate", submit_job, methods=["POST"]),
        Route("/v1/generate_batch", submit_job, methods=["POST"]),
        Route("/v1/result/{request_id}", job_result, methods=["GET"]),
        Route("/{path:path}", forward, methods=ALL_METHODS),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware_from_settings(settings, None),
        exception_handlers={RequestBodyTooLarge: _too_large, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.front = front
    return app
