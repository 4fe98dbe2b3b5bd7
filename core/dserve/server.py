"""The Starlette application and the uvicorn server around it.

Start-up loads the model on a background thread so that probes answer at once
(`/health/ready` turns 200 when the model is loaded). SIGTERM / SIGINT drain: new work gets
503, readiness goes 503, in-flight requests get `--shutdown-grace` seconds to finish, then
uvicorn stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dserve.errors import APIError, error_body
from dserve.middleware import Metrics, middleware_from_settings, metrics_endpoint, torch_gpu_memory_used
from dserve.middleware.body_limit import RequestBodyTooLarge
from dserve.plugins import build_registry, get_plugin_manager
from dserve.routes import docs, jobs, ops
from dserve.routes import openai as openai_routes
from dserve.service import GenerationService
from dserve.settings import Settings
from dserve.watchdog import Watchdog

log = structlog.get_logger("dserve.server")


def create_app(settings: Settings, *, load_model: bool = True) -> Starlette:
    pm = get_plugin_manager()
    registry = build_registry(pm)
    service = GenerationService(settings, registry)
    metrics = Metrics() if settings.metrics else None
    if metrics is not None:
        metrics.set_gpu_memory_source(torch_gpu_memory_used)
        # read at scrape time: set once per step they went stale when the last sequence was
        # cancelled or a queued request timed out with no step after it
        metrics.queue_size.set_function(lambda: service.scheduler.queue_depth if service.scheduler else 0)
        metrics.active_requests.set_function(lambda: service.scheduler.num_running if service.scheduler else 0)

        def on_step(batch_size: int, committed: list[int]) -> None:
            # batch_size, tokens_per_step (per sequence) and parallel_tokens_decoded
            metrics.observe_step(committed)

        service.on_step = on_step

    routes = [
        Route("/v1/models", openai_routes.list_models, methods=["GET"]),
        Route("/v1/chat/completions", openai_routes.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_routes.completions, methods=["POST"]),
        Route("/v1/generate", jobs.generate, methods=["POST"]),
        Route("/v1/generate_batch", jobs.generate_batch, methods=["POST"]),
        Route("/v1/result/{request_id}", jobs.result, methods=["GET"]),
        Route("/health", ops.health, methods=["GET"]),
        Route("/health/live", ops.live, methods=["GET"]),
        Route("/health/ready", ops.ready, methods=["GET"]),
        Route("/generation/algorithms", ops.generation_algorithms, methods=["GET"]),
        Route("/v1/engine/stats", ops.engine_stats, methods=["GET"]),
        Route("/batch/stats", ops.batch_stats, methods=["GET"]),
        Route("/openapi.json", docs.openapi, methods=["GET"]),
        Route("/docs", docs.docs, methods=["GET"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))

    def add_route(path: str, endpoint, methods=("GET",)) -> None:
        routes.append(Route(path, endpoint, methods=list(methods)))

    pm.hook.register_routes(add_route=add_route)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if load_model:
            threading.Thread(target=_load, args=(app, service, pm), name="dserve-loader", daemon=True).start()
        try:
            yield
        finally:
            app.state.jobs.cancel_all()
            if app.state.watchdog is not None:
                app.state.watchdog.stop()
            service.shutdown()
            pm.hook.server_shutdown(state=service)

    app = Starlette(
        routes=routes,
        middleware=middleware_from_settings(settings, metrics),
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            RequestBodyTooLarge: _too_large,
            ClientDisconnect: _client_gone,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.dserve = service
    app.state.metrics = metrics
    app.state.jobs = jobs.JobStore(settings.result_ttl)
    app.state.settings = settings
    app.state.watchdog = None  # started once the scheduler exists
    return app


def _load(app: Starlette, service: GenerationService, pm) -> None:
    try:
        service.load()
    except Exception:  # noqa: BLE001 - reported through /health; the process stays up for probes
        return
    app.state.watchdog = Watchdog(service.scheduler)
    app.state.watchdog.start()
    pm.hook.server_startup(state=service)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


_HTTP_TYPES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    type_, code = _HTTP_TYPES.get(exc.status_code, ("invalid_request_error", None))
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(error_body(message, type_, None, code), status_code=exc.status_code, headers=exc.headers)


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body("the request body is too large", "invalid_request_error", None, "request_too_large"), status_code=413)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client went away before its answer (nginx's 499): nothing is sent, the access log
    # and the metrics record 499 instead of a 500 and an error traceback.
    return Response(status_code=499)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", path=request.url.path)
    return JSONResponse(error_body("internal server error", "internal_error"), status_code=500)


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains before exiting (a second one exits now)."""

    def __init__(self, config: uvicorn.Config, service: GenerationService, grace: float):
        super().__init__(config)
        self.service = service
        self.grace = grace
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        if self._draining or self.service.scheduler is None:
            return super().handle_exit(sig, frame)
        self._draining = True
        self.service.scheduler.draining = True
        log.info("draining", in_flight=self.service.scheduler.in_flight(), grace_s=self.grace)
        threading.Thread(target=self._drain_then_exit, args=(sig, frame), daemon=True).start()

    def _drain_then_exit(self, sig, frame) -> None:
        deadline = time.monotonic() + self.grace
        while self.service.scheduler.in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # let the last responses flush
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # our access-log middleware logs each request
        timeout_graceful_shutdown=5,
        # Keep idle connections open longer than clients and load balancers do (httpx/openai
        # expire theirs after 5 s, cloud LBs after ~60 s), so that the client always closes
        # first: with uvicorn's 5 s default a client reusing a connection at the moment the
        # server closes it gets a ReadError for a request the server never saw.
        timeout_keep_alive=75,
    )
    server = DrainingServer(config, app.state.dserve, settings.shutdown_grace)
    asyncio.run(server.serve())
