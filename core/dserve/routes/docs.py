"""/openapi.json, built from the route table (routes/table.py) and the protocol's pydantic
models, and a /docs page (Swagger UI)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

from dserve import __version__
from dserve.errors import NotFound
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


# Swagger UI's files come from the installed `swagger-ui-py` distribution (a dependency), so
# /docs works with no network; they are served under /docs/ next to the page.
SWAGGER_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}

_SWAGGER = """<!doctype html>
<html><head><title>dserve API</title><meta charset="utf-8">
<link rel="stylesheet" href="docs/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#ui"});</script></body></html>"""

_NO_SWAGGER = """<!doctype html>
<html><head><title>dserve API</title><meta charset="utf-8"></head>
<body><p>Swagger UI is not installed (<code>pip install swagger-ui-py</code>); the API description is
<a href="openapi.json">/openapi.json</a>.</p></body></html>"""


def swagger_dir() -> Path | None:
    """The installed Swagger UI files (without importing the package's web-framework glue)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if all((static / name).is_file() for name in SWAGGER_ASSETS) else None


async def docs(request: Request) -> Response:
    return HTMLResponse(_SWAGGER if swagger_dir() is not None else _NO_SWAGGER)


async def docs_asset(request: Request) -> Response:
    """Swagger UI's script and stylesheet, from the installed package."""
    name = request.path_params["asset"]
    folder = swagger_dir()
    if name not in SWAGGER_ASSETS or folder is None:
        raise NotFound(f"no such file: /docs/{name}", code="file_not_found")
    return FileResponse(folder / name, media_type=SWAGGER_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
