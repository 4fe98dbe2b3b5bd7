"""/openapi.json, built from the route table (routes/table.py) and the protocol's pydantic
models, and a /docs page (Swagger UI)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from dserve import __version__
from dserve.protocol import ErrorResponse
from dserve.routes.api_route import ApiRoute

ERROR_DESCRIPTIONS = {
    "400": "invalid request",
    "401": "missing or wrong API key",
    "404": "unknown model or id",
    "408": "the request body did not arrive within --body-read-timeout",
    "413": "request body too large",
    "429": "queue full or rate limited (see Retry-After)",
    "503": "loading, draining or out of device memory",
    "504": "the request ran past --request-timeout",
}

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


def _operation(route: ApiRoute, defs: dict[str, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if route.response is not None:
        schema = _ref(route.response, defs) if isinstance(route.response, type) else route.response
        ok["content"] = {route.media_type: {"schema": schema}}
    if route.stream:  # OpenAPI 3.1: the schema of text/event-stream describes one event
        ok.setdefault("content", {})["text/event-stream"] = {"schema": _SSE_EVENT}
    error = {"content": {"application/json": {"schema": _ref(ErrorResponse, defs)}}}
    op: dict[str, Any] = {
        "summary": route.summary,
        "responses": {"200": ok, **{code: {**error, "description": ERROR_DESCRIPTIONS[code]} for code in route.errors}},
    }
    if route.request is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(route.request, defs)}}}
    params = re.findall(r"{(\w+)(?::\w+)?}", route.path)
    if params:
        op["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in params]
    return op


def build_openapi(routes: Iterable[ApiRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of exactly these routes."""
    defs: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)  # Starlette's {name:converter} -> OpenAPI's {name}
        for method in route.methods:
            paths.setdefault(path, {})[method.lower()] = _operation(route, defs)
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
        request.app.state.openapi = build_openapi(request.app.state.api_routes)
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
