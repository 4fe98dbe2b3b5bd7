"""Request ids: accept a sane client ``X-Request-Id`` or mint one, and echo it back.

The id is stored in ``scope["state"]["request_id"]`` (what Starlette's
``request.state.request_id`` reads), bound into structlog's context variables for the
request's duration (so every log line emitted while handling it carries ``request_id``),
and sent back in the ``x-request-id`` response header, error responses from inner
middleware included.

Note: structlog context variables follow asyncio's context copying, so they reach tasks
the request spawns (Starlette's streaming task group) but not work handed to another
thread (the GPU thread); pass the id explicitly there.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from structlog.contextvars import bound_contextvars

MAX_REQUEST_ID_LENGTH = 128


def is_sane_request_id(value: str | None) -> bool:
    """Non-empty, at most 128 characters, printable ASCII without spaces."""
    if not value or len(value) > MAX_REQUEST_ID_LENGTH:
        return False
    return all(33 <= ord(ch) <= 126 for ch in value)


class RequestIdMiddleware:
    def __init__(self, app: Any, header_name: str = "x-request-id") -> None:
        self.app = app
        self.header_name = header_name.lower()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        incoming = Headers(scope=scope).get(self.header_name)
        request_id = incoming if incoming is not None and is_sane_request_id(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[self.header_name] = request_id
            await send(message)

        # bound_contextvars restores whatever was bound before (rather than clearing
        # everything), so it is safe with nested or outer bindings.
        with bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)
