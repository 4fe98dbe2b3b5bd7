"""The server's routes, listed once: each entry makes both the Starlette route and its
operation in ``/openapi.json`` (routes/docs.py), so a route cannot be served undocumented or
documented unserved. Plugins' routes (the ``register_routes`` hook) join the same list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dserve.middleware import metrics_endpoint
from dserve.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    GenerateBatchRequest,
    GenerateRequest,
)
from dserve.routes import docs, jobs, loglikelihood, ops, playground, tokens
from dserve.routes import openai as openai_routes
from dserve.routes.api_route import ApiRoute
from dserve.scoring.protocol import LoglikelihoodRequest, LoglikelihoodResponse

ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
GENERATION_ERRORS = ("400", "401", "404", "408", "413", "429", "503", "504")
TOKEN_ERRORS = ("400", "401", "404", "408", "413", "429", "503")
KEYED = ("401", "429")  # behind --api-key and --rate-limit-requests, unlike the health probes


def server_routes(*, metrics: bool) -> list[ApiRoute]:
    """The core's routes; ``metrics``: serve `/metrics` (off with --no-metrics)."""
    routes = [
        ApiRoute("/v1/models", openai_routes.list_models, summary="List the served model", response=ANY_OBJECT, errors=KEYED),
        ApiRoute(
            "/v1/models/{model_id:path}",
            openai_routes.retrieve_model,
            summary="The served model, by id",
            response=ANY_OBJECT,
            errors=("401", "404", "429"),
        ),
        ApiRoute(
            "/tokenize",
            tokens.tokenize_route,
            ("POST",),
            "Tokenize a prompt or messages (vLLM)",
            tokens.TokenizeRequest,
            tokens.TokenizeResponse,
            errors=TOKEN_ERRORS,
        ),
        ApiRoute(
            "/detokenize",
            tokens.detokenize_route,
            ("POST",),
            "Token ids to text (vLLM)",
            tokens.DetokenizeRequest,
            tokens.DetokenizeResponse,
            errors=TOKEN_ERRORS,
        ),
        ApiRoute("/version", ops.version, summary="Server version", response=ANY_OBJECT, errors=KEYED),
        ApiRoute(
            "/v1/chat/completions",
            openai_routes.chat_completions,
            ("POST",),
            "Chat completion (stream with SSE)",
            ChatCompletionRequest,
            ChatCompletionResponse,
            errors=GENERATION_ERRORS,
            stream=True,
        ),
        ApiRoute(
            "/v1/completions",
            openai_routes.completions,
            ("POST",),
            "Text completion (stream with SSE)",
            CompletionRequest,
            CompletionResponse,
            errors=GENERATION_ERRORS,
            stream=True,
        ),
        ApiRoute(
            "/v1/loglikelihood",
            loglikelihood.loglikelihood,
            ("POST",),
            "Log-likelihood of continuations given a context (docs/eval.md)",
            LoglikelihoodRequest,
            LoglikelihoodResponse,
            errors=GENERATION_ERRORS,
        ),
        ApiRoute(
            "/v1/generate",
            jobs.generate,
            ("POST",),
            "Submit an async generation job",
            GenerateRequest,
            ANY_OBJECT,
            errors=GENERATION_ERRORS,
        ),
        ApiRoute(
            "/v1/generate_batch",
            jobs.generate_batch,
            ("POST",),
            "Submit several async generation jobs",
            GenerateBatchRequest,
            ANY_OBJECT,
            errors=GENERATION_ERRORS,
        ),
        ApiRoute(
            "/v1/result/{request_id}",
            jobs.result,
            summary="Result of an async job",
            response=ANY_OBJECT,
            errors=("401", "404", "429"),
        ),
        ApiRoute("/health", ops.health, summary="Health and model status", response=ANY_OBJECT, errors=("503",)),
        ApiRoute("/health/live", ops.live, summary="Liveness probe", response=ANY_OBJECT),
        ApiRoute("/health/ready", ops.ready, summary="Readiness probe", response=ANY_OBJECT, errors=("503",)),
        ApiRoute(
            "/generation/algorithms",
            ops.generation_algorithms,
            summary="Engines and algorithms, with parameters and availability",
            response=ANY_OBJECT,
            errors=KEYED,
        ),
        ApiRoute("/v1/engine/stats", ops.engine_stats, summary="Engine statistics", response=ANY_OBJECT, errors=KEYED),
        ApiRoute("/batch/stats", ops.batch_stats, summary="Batching statistics", response=ANY_OBJECT, errors=KEYED),
        ApiRoute("/openapi.json", docs.openapi, summary="This OpenAPI document", response=ANY_OBJECT, errors=KEYED),
        ApiRoute(
            "/docs",
            docs.docs,
            summary="Interactive API docs (Swagger UI)",
            response={"type": "string"},
            media_type="text/html",
            errors=KEYED,
        ),
        ApiRoute(
            "/docs/{asset}",
            docs.docs_asset,
            summary="Swagger UI's script and stylesheet (served locally: /docs needs no network)",
            response={"type": "string"},
            media_type="text/plain",
            errors=("401", "404", "429"),
        ),
    ]
    routes += [
        ApiRoute(
            path,
            playground.playground,
            summary="The playground page (docs/playground.md): public, its API calls send the key"
            if path == "/playground"
            else "A static file of the playground page",
            response={"type": "string"},
            media_type=playground.MEDIA_TYPES[path],
        )
        for path in playground.PATHS
    ]
    if metrics:
        routes.append(
            ApiRoute(
                "/metrics",
                metrics_endpoint,
                summary="Prometheus metrics (docs/metrics.md); needs the key only with --metrics-require-key",
                response={"type": "string"},
                media_type="text/plain",
                errors=("401",),
            )
        )
    return routes


def plugin_route(path: str, endpoint: Callable[..., Any], methods=("GET",), summary: str | None = None) -> ApiRoute:
    """A route from the ``register_routes`` hook; its summary defaults to the endpoint's docstring."""
    doc = (endpoint.__doc__ or "").strip().splitlines()
    return ApiRoute(path, endpoint, tuple(methods), summary or (doc[0] if doc else f"{path} (added by a plugin)"), errors=KEYED)
