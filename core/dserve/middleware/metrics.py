"""Prometheus metrics: the ``Metrics`` registry, its HTTP middleware and the /metrics endpoint.

``Metrics`` owns its own ``CollectorRegistry`` (several can coexist, e.g. one per test or per
app) and exposes each metric as an attribute. Names follow vdiff's one-to-one with a
``dserve_`` prefix (``vdiff_request_success_total`` -> ``dserve_request_success_total``, ...);
``docs/metrics.md`` has the table. Who updates what:

* ``MetricsMiddleware`` (per HTTP request under ``/v1/``): ``request_success``,
  ``request_failure``, ``request_latency``, ``requests_in_flight``.
* routes: ``prompt_tokens``, ``generation_tokens``, ``time_to_first_token`` (the first
  committed content token, not the SSE role chunk).
* scheduler (thread-safe, may run on the GPU thread): ``queue_size``, ``active_requests``
  and, once per denoising step, :meth:`Metrics.observe_step`, which feeds ``batch_size``,
  ``tokens_per_step`` and ``parallel_tokens_decoded``.
* ``gpu_memory_used_bytes``: read at scrape time from a callback
  (:meth:`Metrics.set_gpu_memory_source`); :func:`torch_gpu_memory_used` is a ready one.
  This module never imports torch.

One process = one registry. With ``--gpus N`` each worker exposes its own /metrics.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

NAMESPACE = "dserve"
# scope["state"] key: the status of the error event that ended a streamed response
STREAM_ERROR_STATUS = "stream_error_status"

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKENS_PER_STEP_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        common: dict[str, Any] = {"namespace": NAMESPACE, "registry": self.registry}

        # requests (MetricsMiddleware)
        self.request_success = Counter("request_success", "Requests answered with a 2xx/3xx status.", ["endpoint"], **common)
        self.request_failure = Counter(
            "request_failure",
            "Requests answered with a 4xx/5xx status (499: the response never ended).",
            ["endpoint", "status"],
            **common,
        )
        self.request_latency = Histogram(
            "request_latency_seconds",
            "Time from request to the last response byte.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.requests_in_flight = Gauge("requests_in_flight", "HTTP requests under /v1/ being handled now.", **common)
        self.time_to_first_token = Histogram(
            "time_to_first_token_seconds",
            "Time from request to the first committed content token.",
            buckets=TTFT_BUCKETS,
            **common,
        )

        # tokens (routes, scheduler)
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens processed.", **common)
        self.generation_tokens = Counter("generation_tokens", "Completion tokens returned to clients.", **common)
        self.parallel_tokens_decoded = Counter(
            "parallel_tokens_decoded",
            "Tokens committed by denoising steps that committed two or more tokens for the same sequence.",
            **common,
        )
        self.tokens_per_step = Histogram(
            "tokens_per_step",
            "Tokens committed per sequence per denoising step (the decoding parallelism).",
            buckets=TOKENS_PER_STEP_BUCKETS,
            **common,
        )

        # engine (scheduler)
        self.queue_size = Gauge("queue_size", "Requests waiting for admission.", **common)
        self.active_requests = Gauge("active_requests", "Requests in the running batch (being decoded).", **common)
        self.batch_size = Histogram(
            "batch_size",
            "Sequences in the batch, per denoising step.",
            buckets=BATCH_SIZE_BUCKETS,
            **common,
        )
        self.gpu_memory_used_bytes = Gauge("gpu_memory_used_bytes", "GPU memory used by this process, in bytes.", **common)
        self.gpu_memory_used_bytes.set_function(lambda: 0.0)

    # -- helpers for the scheduler and routes ---------------------------------------------

    def observe_step(self, committed_per_sequence: Iterable[int]) -> None:
        """Record one denoising step: tokens committed for each sequence in the batch."""
        committed = list(committed_per_sequence)
        if not committed:
            return
        self.batch_size.observe(len(committed))
        for n in committed:
            self.tokens_per_step.observe(n)
            if n >= 2:
                self.parallel_tokens_decoded.inc(n)

    def record_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)

    def set_gpu_memory_source(self, source: Callable[[], float] | None) -> None:
        """Read ``gpu_memory_used_bytes`` from ``source()`` at each scrape (None: report 0).

        A source that raises reports NaN instead of breaking the whole scrape.
        """

        def read() -> float:
            if source is None:
                return 0.0
            try:
                return float(source())
            except Exception:
                return math.nan

        self.gpu_memory_used_bytes.set_function(read)

    # -- exposition ----------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def endpoint(self, request: Any) -> Any:
        """Starlette endpoint: ``Route("/metrics", metrics.endpoint)``."""
        from starlette.responses import Response

        return Response(self.render(), media_type=CONTENT_TYPE_LATEST)


async def metrics_endpoint(request: Any) -> Any:
    """Starlette endpoint for apps that keep their ``Metrics`` in ``app.state.metrics``."""
    return await request.app.state.metrics.endpoint(request)


def torch_gpu_memory_used() -> float:
    """GPU memory allocated by this process's tensors, summed over visible devices.

    Uses torch only if something else already imported it (scraping never pays a torch
    import); 0.0 without torch or CUDA.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0.0
    return float(sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())))


def _match_route(routes: Iterable[Any], scope: dict, prefix: str = "") -> str | None:
    """The path template of the route that would serve ``scope`` (read-only matching)."""
    from starlette.routing import Match

    for route in routes:
        try:
            match, child_scope = route.matches(scope)
        except Exception:
            continue
        if match is not Match.FULL:
            continue
        path = getattr(route, "path", "") or ""
        sub_routes = getattr(route, "routes", None)
        if sub_routes:  # a Mount: keep matching inside it
            inner = _match_route(sub_routes, {**scope, **child_scope}, prefix + path)
            return inner if inner is not None else prefix + path
        return prefix + path
    return None


def endpoint_label(scope: dict) -> str:
    """A bounded label for the route: its path template (``/v1/result/{id}``, not every id;
    mount prefixes included), else ``"unmatched"``.

    Requests rejected before routing (401, 413, 429 from inner middleware) carry no
    ``scope["route"]``; for those the template is found by matching against the app's
    routes, which Starlette leaves in ``scope["app"]``.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        # Inside a Mount, the route's path is relative to it; the mount prefix is what the
        # mount appended to root_path beyond the application's own root_path.
        root_path = scope.get("root_path", "")
        app_root_path = scope.get("app_root_path", root_path)
        prefix = root_path[len(app_root_path) :] if root_path.startswith(app_root_path) else ""
        return (prefix + path) or "/"
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", None)
    if routes:
        found = _match_route(routes, scope)
        if found:
            return found
    return "unmatched"


class MetricsMiddleware:
    """Counts requests whose path starts with one of ``path_prefixes`` (default ``/v1/``).

    2xx/3xx -> ``request_success``; 4xx/5xx, or a stream that ended in an error event (its
    status from ``scope["state"][STREAM_ERROR_STATUS]``) -> ``request_failure{status}``; a response never
    finished (client disconnect, connection aborted, exception) -> failure with status
    ``499`` if a status had been sent, else ``500``. Latency is observed for all of them.
    """

    def __init__(self, app: Any, metrics: Metrics, path_prefixes: Iterable[str] = ("/v1/",)) -> None:
        self.app = app
        self.metrics = metrics
        self.path_prefixes = tuple(path_prefixes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.path_prefixes):
            await self.app(scope, receive, send)
            return

        m = self.metrics
        start = time.perf_counter()
        status: int | None = None
        complete = False

        async def watched_send(message: dict) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True

        m.requests_in_flight.inc()
        try:
            await self.app(scope, receive, watched_send)
        finally:
            m.requests_in_flight.dec()
            endpoint = endpoint_label(scope)
            m.request_latency.labels(endpoint).observe(time.perf_counter() - start)
            # a stream's 200 went out before it failed: the route records the error's status
            stream_error = scope.get("state", {}).get(STREAM_ERROR_STATUS)
            if not complete:
                final = "499" if status is not None else "500"
                m.request_failure.labels(endpoint, final).inc()
            elif stream_error is not None:
                m.request_failure.labels(endpoint, str(stream_error)).inc()
            elif status is not None and status < 400:
                m.request_success.labels(endpoint).inc()
            else:
                m.request_failure.labels(endpoint, str(status)).inc()
