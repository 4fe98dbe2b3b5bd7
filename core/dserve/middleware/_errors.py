"""OpenAI-style error responses sent over raw ASGI ``send``.

Every middleware in this package answers its rejections with the error object OpenAI
clients parse::

    {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}

This helper needs no Starlette ``Response``: it sends ``http.response.start`` and one
``http.response.body`` message itself, so it works from any plain ASGI middleware.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    """The JSON bytes of an OpenAI error object."""
    payload = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


async def send_openai_error(
    send: Send,
    status: int,
    message: str,
    type: str,  # noqa: A002 - the OpenAI field is called "type"
    code: str | None = None,
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
) -> None:
    """Send a complete JSON error response (start + body) with ``status``.

    ``headers`` are extra ``(name, value)`` pairs (str or bytes), e.g.
    ``[("retry-after", "3")]``; names are lower-cased as ASGI requires.
    """
    body = error_body(message, type, code)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    raw_headers += [(_as_bytes(k).lower(), _as_bytes(v)) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
