"""Bearer API-key authentication (``Authorization: Bearer <key>``), as OpenAI clients send.

Comparison is constant-time: the presented key and every configured key are hashed to
SHA-256 digests (equal length, so the comparison does not leak the key's length) and the
presented digest is compared with *every* configured digest with ``hmac.compare_digest``,
without stopping at the first match.

On success the middleware records a short, non-secret identity of the key
(``scope["state"]["api_key_id"]``: the first 16 hex digits of its SHA-256) that the rate
limiter uses as its client key; the raw key is never stored in the scope or logged.

Rejections are 401 OpenAI errors (``type "authentication_error"``, ``code
"invalid_api_key"``) with ``WWW-Authenticate: Bearer``. ``X-API-Key`` and other header
styles are deliberately not accepted: OpenAI clients always send Bearer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers

from ._errors import send_openai_error

DEFAULT_EXEMPT_PATHS: frozenset[str] = frozenset({"/health", "/health/live", "/health/ready"})


def _digest(key: str | bytes) -> bytes:
    raw = key if isinstance(key, bytes) else key.encode("utf-8")
    return hashlib.sha256(raw).digest()


def key_id(key: str | bytes) -> str:
    """A short, non-reversible identity for a key (safe to log or use as a dict key)."""
    return _digest(key).hex()[:16]


class ApiKeyMiddleware:
    def __init__(
        self,
        app: Any,
        api_keys: Iterable[str],
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
    ) -> None:
        keys = [k for k in api_keys if k]
        if not keys:
            raise ValueError("ApiKeyMiddleware needs at least one non-empty API key")
        self.app = app
        self._digests = [_digest(k) for k in keys]
        self.exempt_paths = frozenset(exempt_paths)

    def _check(self, presented: str) -> bool:
        candidate = _digest(presented)
        ok = False
        for digest in self._digests:  # no early exit: same work whichever key matches
            ok |= hmac.compare_digest(candidate, digest)
        return ok

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return

        authorization = Headers(scope=scope).get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            message = "You didn't provide an API key. Provide it in the Authorization header as 'Authorization: Bearer YOUR_KEY'."
        elif self._check(token):
            scope.setdefault("state", {})["api_key_id"] = key_id(token)
            await self.app(scope, receive, send)
            return
        else:
            message = "Incorrect API key provided."

        await send_openai_error(
            send,
            401,
            message,
            "authentication_error",
            code="invalid_api_key",
            headers=[("www-authenticate", "Bearer")],
        )
