"""Access log: one structlog event per HTTP request, when it is over.

Fields: ``request_id``, ``method``, ``route`` (the URL path), ``status``, ``latency_ms``,
``client`` (IP), plus whatever the route put in ``scope["state"]["log_fields"]`` (a dict:
``request.state.log_fields = {"prompt_tokens": ..., "engine": ..., ...}``). Core fields win
over route fields of the same name.

Bodies are never logged: nothing here reads the request or response body, and keys that
would carry text (``prompt``, ``messages``, ``body``, ...) are dropped from ``log_fields``
as a guard against a route putting them there by mistake.

When: at the last body message (``more_body`` false), so a streamed response is logged
when its stream is complete; if the request ends otherwise (client disconnect, task
cancelled, exception), it is logged on the way out with the status already sent (500 if
none was), plus ``disconnected=True`` when the client went away first and ``error=True``
when an exception escaped the app.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

# log_fields keys never written to the access log: they would hold prompt or output text.
PROBE_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
FORBIDDEN_FIELDS = frozenset({"prompt", "prompts", "messages", "body", "content", "text", "input", "output", "completion"})


class AccessLogMiddleware:
    def __init__(self, app: Any, logger: Any = None, event: str = "http_request") -> None:
        self.app = app
        self.logger = logger if logger is not None else structlog.get_logger("dserve.access")
        self.event = event

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        start = time.perf_counter()
        state = scope.setdefault("state", {})  # the route's request.state writes land here
        status: int | None = None
        logged = False
        disconnected = False

        def emit(**extra: Any) -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            route_fields = state.get("log_fields") or {}
            fields = {k: v for k, v in route_fields.items() if k not in FORBIDDEN_FIELDS}
            client = scope.get("client")
            final_status = status if status is not None else 500
            fields.update(
                request_id=state.get("request_id"),
                method=scope.get("method"),
                route=scope.get("path"),
                status=final_status,
                latency_ms=round((time.perf_counter() - start) * 1000.0, 2),
                client=client[0] if client else None,
                **extra,
            )
            if final_status >= 500:
                log = self.logger.warning
            elif final_status < 400 and scope.get("path") in PROBE_PATHS:
                log = self.logger.debug  # probes poll every few seconds: keep them out of info logs
            else:
                log = self.logger.info
            log(self.event, **fields)

        async def watched_receive() -> dict:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def watched_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                emit()

        failed = False
        try:
            await self.app(scope, watched_receive, watched_send)
        except BaseException:
            failed = True
            raise
        finally:
            extra: dict[str, Any] = {}
            if disconnected:
                extra["disconnected"] = True
            if failed:
                extra["error"] = True
            emit(**extra)  # no-op when the complete response was already logged
