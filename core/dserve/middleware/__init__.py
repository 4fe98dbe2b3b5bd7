"""dserve's HTTP middleware: plain ASGI classes, one per module, and the stack builder.

=====================  ======================================================
``request_id``         ``RequestIdMiddleware``: x-request-id in and out, log context
``access_log``         ``AccessLogMiddleware``: one structlog event per request
``metrics``            ``Metrics`` (Prometheus registry), ``MetricsMiddleware``
``body_limit``         ``BodySizeLimitMiddleware``: 413 over ``max_bytes``, 408 slow body
``api_key``            ``ApiKeyMiddleware``: ``Authorization: Bearer`` keys
``rate_limit``         ``RateLimitMiddleware``: per-client token bucket, 429
CORS                   Starlette's ``CORSMiddleware``, used as is
=====================  ======================================================

All rejections are OpenAI error objects (``_errors.send_openai_error``).
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from .access_log import AccessLogMiddleware
from .api_key import ApiKeyMiddleware
from .body_limit import BodySizeLimitMiddleware, RequestBodyTimeout, RequestBodyTooLarge
from .metrics import Metrics, MetricsMiddleware, metrics_endpoint, torch_gpu_memory_used
from .rate_limit import RateLimitMiddleware
from .request_id import RequestIdMiddleware

__all__ = [
    "AccessLogMiddleware",
    "ApiKeyMiddleware",
    "BodySizeLimitMiddleware",
    "Metrics",
    "MetricsMiddleware",
    "PLAYGROUND_PATHS",
    "PROBE_PATHS",
    "RateLimitMiddleware",
    "RequestBodyTimeout",
    "RequestBodyTooLarge",
    "RequestIdMiddleware",
    "build_middleware",
    "middleware_from_settings",
    "metrics_endpoint",
    "torch_gpu_memory_used",
]

PROBE_PATHS: frozenset[str] = frozenset({"/health", "/health/live", "/health/ready"})
METRICS_PATH = "/metrics"
# The playground's static files (routes/playground.py): a browser cannot send a Bearer header
# when it opens a page, so the page is public; every request it makes sends the key it is given.
PLAYGROUND_PATHS: frozenset[str] = frozenset({"/playground", "/playground/playground.js", "/playground/playground.css"})

# Response headers a browser page may read on cross-origin responses.
CORS_EXPOSE_HEADERS = [
    "x-request-id",
    "x-ignored-fields",  # request_fields.py: the unknown fields a request sent
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
]


def build_middleware(
    *,
    api_keys: list[str] | None = None,
    rate_limit_requests: int | None = None,
    max_body_bytes: int | None = None,
    cors_origins: list[str] | None = None,
    metrics: Metrics | None = None,
    metrics_require_key: bool = False,
    access_log: bool = True,
    body_read_timeout: float | None = None,
) -> list[Middleware]:
    """The middleware list for ``Starlette(middleware=...)``, outermost first.

    Each switch off (None / empty / False) leaves its middleware out; the request id is
    always on. ``metrics_require_key=False`` keeps ``/metrics`` outside API-key auth (the
    probes always are); ``/metrics`` and the probes are never rate limited.

    Order, outermost first, and why:

    1. request id: every response, rejections included, carries ``x-request-id`` and every
       log line made while handling the request is bound to it.
    2. access log: sees every request, rejected ones too, with its final status and full
       latency (and can read the request id set just outside it).
    3. metrics: 401/413/429 rejections count as ``/v1/`` failures like any other.
    4. CORS: before auth so a browser's preflight ``OPTIONS`` (which never carries
       ``Authorization``) is answered instead of getting a 401, and so CORS headers are on
       error responses too (a page can read the 401/429 body and ``Retry-After``).
    5. body limit: an oversized ``Content-Length`` is refused before anything else costs
       work; it reveals nothing to an unauthenticated client. It also gives the body
       ``body_read_timeout`` seconds to arrive (408 after that).
    6. API key: authenticates, and records the key's identity for ...
    7. rate limit: after auth, so it keys by the verified API key (not by a token anyone can
       invent to get a fresh bucket), falling back to the client IP. Unauthenticated floods
       get 401s from the constant-time check without touching the buckets.
    """
    stack: list[Middleware] = [Middleware(RequestIdMiddleware)]
    if access_log:
        stack.append(Middleware(AccessLogMiddleware))
    if metrics is not None:
        stack.append(Middleware(MetricsMiddleware, metrics=metrics))
    if cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=CORS_EXPOSE_HEADERS,
                allow_credentials=False,  # Bearer keys travel in a header, not in cookies
            )
        )
    if max_body_bytes or body_read_timeout:
        stack.append(Middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes or None, read_timeout=body_read_timeout))
    if api_keys:
        exempt = set(PROBE_PATHS | PLAYGROUND_PATHS)
        if not metrics_require_key:
            exempt.add(METRICS_PATH)
        stack.append(Middleware(ApiKeyMiddleware, api_keys=list(api_keys), exempt_paths=exempt))
    if rate_limit_requests:
        stack.append(
            Middleware(
                RateLimitMiddleware,
                requests_per_minute=rate_limit_requests,
                exempt_paths=PROBE_PATHS | {METRICS_PATH},
            )
        )
    return stack


def middleware_from_settings(settings, metrics: Metrics | None) -> list[Middleware]:
    """The stack a server or front builds from its `dserve.settings.Settings`."""
    return build_middleware(
        api_keys=settings.api_key,
        rate_limit_requests=settings.rate_limit_requests,
        max_body_bytes=settings.max_body_bytes,
        cors_origins=settings.cors_origins,
        metrics=metrics,
        metrics_require_key=settings.metrics_require_key,
        access_log=True,
        body_read_timeout=settings.body_read_timeout,
    )
