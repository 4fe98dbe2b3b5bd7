"""Helpers the route modules share: body parsing, disconnect watching, log fields."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from dserve.errors import BadRequest

M = TypeVar("M", bound=BaseModel)

MAX_JSON_DEPTH = 64


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8", code="invalid_json") from None
    except (ValueError, RecursionError) as exc:
        # ValueError covers json.JSONDecodeError and also a number longer than Python's
        # int digit limit (sys.get_int_max_str_digits), which json.loads raises as ValueError.
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    if _depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    try:  # "\ud800" escapes decode to lone surrogates that no tokenizer can encode
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            "the request body contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)", code="invalid_json"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise BadRequest(f"invalid value for {param!r}: {err['msg']}", param=param) from None


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN / Infinity / -Infinity; RFC 8259 JSON has no such numbers.
    raise ValueError(f"{name} is not a valid JSON number")


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
    """Await `work`; if the client disconnects first, cancel it and raise ClientDisconnect
    (the server answers it with a 499 nobody reads, not a 500 with a traceback)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved" warning
        raise ClientDisconnect()
    finally:
        watcher.cancel()


def set_log_fields(request: Request, **fields: Any) -> None:
    """Fields the access log adds to the request's log line."""
    state = request.scope.setdefault("state", {})
    state.setdefault("log_fields", {}).update(fields)


def response_id(request: Request) -> str:
    """The request id (the client's X-Request-Id, or the one the server minted): the
    response `id` carries it, as vLLM's does, so logs and responses join on one key."""
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex
