"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class BadRequest(APIError):
    status = 400
    type = "invalid_request_error"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"


class Overloaded(APIError):
    """The admission queue is full: retry later (429 with Retry-After)."""

    status = 429
    type = "rate_limit_error"


class Unavailable(APIError):
    """The server is draining or cannot take the work now (503, with Retry-After: clients and
    load balancers wait that long, or go to another replica, before retrying)."""

    status = 503
    type = "service_unavailable"
    retry_after_s = 5

    def __init__(self, message: str, **kwargs):
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(self.retry_after_s))


class RequestTimeout(APIError):
    """The request ran past --request-timeout (504: the server, not the client, was slow)."""

    status = 504
    type = "timeout_error"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
