"""Request body limits: 413 for bodies over ``max_bytes``, 408 for bodies that do not
arrive within ``read_timeout`` seconds.

Two checks:

* ``Content-Length`` over the limit: rejected at once, before the app runs or any body is
  read.
* A body without a usable ``Content-Length`` (chunked transfer) that grows past the limit
  while the app reads it: the wrapped ``receive`` raises :class:`RequestBodyTooLarge`
  inside the app. The exception normally propagates back here (Starlette's
  ``ExceptionMiddleware`` has no handler for it) and we send the 413. If the app catches it
  (say a route wraps ``await request.json()`` in ``except Exception``) and answers on its
  own, the wrapped ``send`` replaces that answer with the 413 anyway.

Choice, when the response has already started before the body overflows (an app that
streams its answer while still reading the request): a 413 can no longer be sent, and
finishing the response normally would make a truncated answer look complete. So every
further message from the app is dropped and the middleware returns without finishing the
response; the server (uvicorn) then closes the connection, which the client sees as a
disconnect / incomplete response.

Read timeout: the whole body must arrive within ``read_timeout`` seconds of the request's
start (a total, not a per-chunk limit, so a client trickling a byte at a time cannot hold a
connection either). A client that stalls mid-upload gets a 408 OpenAI error with
``Connection: close`` (uvicorn then closes the connection) instead of holding it open
forever; ``receive`` raises :class:`RequestBodyTimeout` inside the app, handled like the
overflow above. Once the body is complete, ``receive`` (waiting for a disconnect) has no limit.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from starlette.datastructures import Headers

from ._errors import send_openai_error

DEFAULT_READ_TIMEOUT_S = 60.0


class RequestBodyTooLarge(Exception):
    """Raised from ``receive`` when the request body grows past the limit."""


class RequestBodyTimeout(Exception):
    """Raised from ``receive`` when the request body does not arrive in time."""


class BodySizeLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int | None, read_timeout: float | None = DEFAULT_READ_TIMEOUT_S) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.app = app
        self.max_bytes = max_bytes if max_bytes is not None else float("inf")
        self.read_timeout = read_timeout

    def _message(self) -> str:
        return f"Request body too large: the limit is {self.max_bytes} bytes."

    async def _send_413(self, send: Any) -> None:
        await send_openai_error(send, 413, self._message(), "invalid_request_error", code="request_too_large")

    async def _send_408(self, send: Any) -> None:
        await send_openai_error(
            send,
            408,
            f"the request body did not arrive within {self.read_timeout:g} s",
            "invalid_request_error",
            code="request_timeout",
            headers=[("connection", "close")],
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.read_timeout if self.read_timeout else None

        content_length = Headers(scope=scope).get("content-length")
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                declared = None  # the server's HTTP parser rejects these itself
            if declared is not None and declared > self.max_bytes:
                await self._send_413(send)
                return

        received = 0
        too_large = False
        timed_out = False
        body_done = False
        response_started = False

        async def limited_receive() -> dict:
            nonlocal received, too_large, timed_out, body_done
            if too_large:
                raise RequestBodyTooLarge(self._message())
            if timed_out:
                raise RequestBodyTimeout()
            if deadline is None or body_done:
                message = await receive()
            else:
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as scope_:
                    message = await receive()
                if scope_.cancelled_caught:
                    timed_out = True
                    raise RequestBodyTimeout()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise RequestBodyTooLarge(self._message())
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal response_started
            if timed_out:  # as for too_large below, with the 408
                if not response_started and message["type"] == "http.response.start":
                    response_started = True
                    await self._send_408(send)
                return
            if too_large:
                # The app's own answer after the overflow is replaced by the 413 (if nothing
                # was sent yet) or dropped (response already under way: see module doc).
                if not response_started and message["type"] == "http.response.start":
                    response_started = True
                    await self._send_413(send)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # After an overflow or a timeout, whatever the app raised (our exception, or one
            # caused by it, possibly wrapped in an exception group) is its consequence.
            if not (too_large or timed_out):
                raise
        if timed_out and not response_started:
            await self._send_408(send)
        elif too_large and not response_started:
            await self._send_413(send)
