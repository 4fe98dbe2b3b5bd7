"""Helpers the route modules share: body parsing, disconnect watching, log fields."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from dserve.errors import BadRequest

M = TypeVar("M", bound=BaseModel)

MAX_JSON_DEPTH = 64


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8", code="invalid_json") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    if _depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise BadRequest(f"invalid value for {param!r}: {err['msg']}", param=param) from None


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


async def until_disconnected(request: Request) -> None:
    """Returns when the client goes away (the body must already have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(request: Request, work) -> Any:
    """Await `work`; if the client disconnects first, cancel it and raise CancelledError."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise asyncio.CancelledError("client disconnected")
    finally:
        watcher.cancel()


def set_log_fields(request: Request, **fields: Any) -> None:
    """Fields the access log adds to the request's log line."""
    state = request.scope.setdefault("state", {})
    state.setdefault("log_fields", {}).update(fields)
