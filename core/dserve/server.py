"""The Starlette application and the uvicorn server around it.

Start-up loads the model on a background thread so that probes answer at once
(`/health/ready` turns 200 when the model is loaded). `serve` exits with status 1 and one line
on stderr when the server cannot serve: the port is taken, or the model, the engine or the
algorithm cannot load. (An app made by `create_app` alone, as Ray Serve's replicas do, stays up
and reports a failed load on `/health`.) SIGTERM / SIGINT drain: new work gets
503, readiness goes 503, in-flight requests get `--shutdown-grace` seconds to finish, then
uvicorn stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from dserve.errors import APIError, error_body
from dserve.middleware import Metrics, middleware_from_settings, torch_gpu_memory_used
from dserve.middleware.body_limit import RequestBodyTooLarge
from dserve.plugins import build_registry, get_plugin_manager
from dserve.routes import jobs
from dserve.routes.table import plugin_route, server_routes
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

    api_routes = server_routes(metrics=metrics is not None)

    def add_route(path: str, endpoint, methods=("GET",), summary: str | None = None) -> None:
        api_routes.append(plugin_route(path, endpoint, methods, summary))

    pm.hook.register_routes(add_route=add_route)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if load_model:
            threading.Thread(
                target=_load, args=(app, service, pm, app.state.on_load_failure), name="dserve-loader", daemon=True
            ).start()
        try:
            yield
        finally:
            app.state.jobs.cancel_all()
            if app.state.watchdog is not None:
                app.state.watchdog.stop()
            service.shutdown()
            pm.hook.server_shutdown(state=service)

    # each handler takes its own exception type; Starlette's annotation says Exception for all
    exception_handlers: dict[Any, Callable[..., Any]] = {
        APIError: _api_error,
        HTTPException: _http_error,
        RequestBodyTooLarge: _too_large,
        ClientDisconnect: _client_gone,
        Exception: _internal_error,
    }
    app = Starlette(
        routes=[route.starlette_route() for route in api_routes],
        middleware=middleware_from_settings(settings, metrics),
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.state.dserve = service
    app.state.metrics = metrics
    app.state.jobs = jobs.JobStore(settings.result_ttl)
    app.state.settings = settings
    app.state.api_routes = api_routes  # /openapi.json documents exactly these
    app.state.on_load_failure = None  # serve() sets it: a failed startup load stops the server
    app.state.watchdog = None  # started once the scheduler exists
    return app


def _load(app: Starlette, service: GenerationService, pm, on_failure: Callable[[], None] | None) -> None:
    try:
        service.load()
    except Exception:  # noqa: BLE001 - kept in service.load_error: /health reports it
        if on_failure is not None:
            on_failure()
        return
    assert service.scheduler is not None  # load() returned: the scheduler runs
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
    return JSONResponse(
        error_body("the request body is too large", "invalid_request_error", None, "request_too_large"), status_code=413
    )


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
        scheduler = self.service.scheduler
        while scheduler is not None and scheduler.in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # let the last responses flush
        super().handle_exit(sig, frame)


EXIT_CANNOT_SERVE = 1


def serve(settings: Settings) -> int:
    """Run the server until it is stopped; the exit status (EXIT_CANNOT_SERVE: startup failed)."""
    taken = _port_taken(settings.host, settings.port)
    if taken:
        print(f"dserve: cannot serve: {taken}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
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
    service: GenerationService = app.state.dserve
    server = DrainingServer(config, service, settings.shutdown_grace)

    def stop_on_load_failure() -> None:
        print(f"dserve: cannot serve: {startup_failure(service, settings)}", file=sys.stderr, flush=True)
        server.should_exit = True

    app.state.on_load_failure = stop_on_load_failure
    asyncio.run(server.serve())
    return EXIT_CANNOT_SERVE if service.load_error else 0


def startup_failure(service: GenerationService, settings: Settings) -> str:
    """What failed at startup, named: the engine, the algorithm or the model."""
    error = service.load_error or "unknown error"
    if isinstance(service.load_exception, APIError):  # the engine / algorithm choice failed
        names = [f"--{flag} {value}" for flag, value in (("engine", settings.engine), ("algorithm", settings.algorithm)) if value]
        return f"{' '.join(names) or 'the default engine/algorithm'}: {error}"
    return f"model {settings.model or '(embedded)'} failed to load: {error}"


def _port_taken(host: str, port: int) -> str | None:
    """Why (host, port) cannot be bound, or None; checked before the model loads."""
    if port == 0:
        return None
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        return f"port {port} on {host} is not available: {exc.strerror or exc}"
    return None
