"""/openapi.json built from the protocol's pydantic models, and a /docs page (Swagger UI)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from dserve import __version__
from dserve.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    GenerateBatchRequest,
    GenerateRequest,
)

_ERRORS = {
    "400": "invalid request",
    "401": "missing or wrong API key",
    "404": "unknown model or id",
    "408": "the request body did not arrive within --body-read-timeout",
    "413": "request body too large",
    "429": "queue full or rate limited (see Retry-After)",
    "503": "loading, draining or out of device memory",
    "504": "the request ran past --request-timeout",
}

_OBJECT = {"type": "object", "additionalProperties": True}

# One server-sent event of a streamed completion, as OpenAPI 3.2 models SSE (fields of the event).
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {
            "type": "string",
            "description": "a JSON chunk (chat.completion.chunk / text_completion), an error object, or [DONE]",
        },
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}


def _ref(model: type[BaseModel], defs: dict[str, Any]) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    defs[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def build_openapi() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    err = {"description": "", "content": {"application/json": {"schema": _ref(ErrorResponse, defs)}}}

    def errors(*codes: str) -> dict:
        return {c: {**err, "description": _ERRORS[c]} for c in codes}

    def op(summary: str, ok: dict, body: type[BaseModel] | None = None, codes=("400", "401", "404", "408", "413", "429", "503", "504"), sse=False):
        o: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ok}}}}}
        if sse:  # OpenAPI 3.1: the schema of text/event-stream describes one event
            o["responses"]["200"]["content"]["text/event-stream"] = {"schema": _SSE_EVENT}
        o["responses"].update(errors(*codes))
        if body is not None:
            o["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body, defs)}}}
        return o

    probe = ("401", "429")  # behind --api-key and --rate-limit-requests, unlike the health probes
    paths = {
        "/v1/models": {"get": op("List the served model", _OBJECT, codes=("401", "429"))},
        "/v1/chat/completions": {"post": op("Chat completion (stream with SSE)", _ref(ChatCompletionResponse, defs), ChatCompletionRequest, sse=True)},
        "/v1/completions": {"post": op("Text completion (stream with SSE)", _ref(CompletionResponse, defs), CompletionRequest, sse=True)},
        "/v1/generate": {"post": op("Submit an async generation job", _OBJECT, GenerateRequest)},
        "/v1/generate_batch": {"post": op("Submit several async generation jobs", _OBJECT, GenerateBatchRequest)},
        "/v1/result/{request_id}": {
            "get": {
                **op("Result of an async job", _OBJECT, codes=("401", "404", "429")),
                "parameters": [{"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            }
        },
        "/health": {"get": op("Health and model status", _OBJECT, codes=("503",))},
        "/health/live": {"get": op("Liveness probe", _OBJECT, codes=())},
        "/health/ready": {"get": op("Readiness probe", _OBJECT, codes=("503",))},
        "/generation/algorithms": {"get": op("Engines and algorithms, with parameters and availability", _OBJECT, codes=probe)},
        "/v1/engine/stats": {"get": op("Engine statistics", _OBJECT, codes=probe)},
        "/batch/stats": {"get": op("Batching statistics", _OBJECT, codes=probe)},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (docs/metrics.md); needs the key only with --metrics-require-key",
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **errors("401"),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "dserve", "version": __version__, "description": "OpenAI-compatible server for masked-diffusion LLMs"},
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi(request: Request) -> Response:
    if not hasattr(request.app.state, "openapi"):
        request.app.state.openapi = build_openapi()
    return JSONResponse(request.app.state.openapi)


_SWAGGER = """<!doctype html>
<html><head><title>dserve API</title><meta charset="utf-8">
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"><p>Interactive docs load Swagger UI from a CDN; the spec itself is at
<a href="/openapi.json">/openapi.json</a>.</p></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script></body></html>"""


async def docs(request: Request) -> Response:
    return HTMLResponse(_SWAGGER)
