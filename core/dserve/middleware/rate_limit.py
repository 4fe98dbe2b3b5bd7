"""Per-client request rate limiting: a token bucket per client.

Each client gets a bucket of ``burst`` tokens (default: ``requests_per_minute``, so a client
may spend its whole minute's allowance at once, then is held to the steady rate) that refills
at ``requests_per_minute / 60`` tokens a second. A request costs one token; with less than one
token left the answer is 429 (``type "rate_limit_error"``, ``code "rate_limit_exceeded"``)
with ``Retry-After`` in whole seconds (at least 1) until a token is back.

Client key: the verified API key's identity (``scope["state"]["api_key_id"]``, set by
``ApiKeyMiddleware``, which therefore runs first) when there is one, else the client's IP
from ``scope["client"]``. An unverified bearer token is never used as the key, or a client
could dodge the limit by sending a new random token per request.

Memory is bounded: at most ``max_clients`` buckets are kept, least recently seen first out.
Evicting a bucket forgives its client's debt, which only matters when more than
``max_clients`` distinct clients are active within one refill period.

The bucket update has no ``await`` in it, so it is atomic on the event loop.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from ._errors import send_openai_error

DEFAULT_EXEMPT_PATHS: frozenset[str] = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})


class RateLimitMiddleware:
    def __init__(
        self,
        app: Any,
        requests_per_minute: int,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        *,
        burst: int | None = None,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        self.app = app
        self.requests_per_minute = requests_per_minute
        self.capacity = float(burst if burst is not None else requests_per_minute)
        if self.capacity < 1:
            raise ValueError("burst must be at least 1")
        self.rate = requests_per_minute / 60.0  # tokens per second
        self.exempt_paths = frozenset(exempt_paths)
        self.max_clients = max_clients
        self.clock = clock
        # client key -> (tokens, last refill time); order = least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @staticmethod
    def client_key(scope: dict) -> str:
        key_id = scope.get("state", {}).get("api_key_id")
        if key_id:
            return f"key:{key_id}"
        client = scope.get("client")
        return f"ip:{client[0] if client else 'unknown'}"

    def acquire(self, key: str) -> float:
        """Take one token for ``key``; 0.0 if allowed, else seconds until one is back."""
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)  # re-inserted at the end: most recently seen
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return

        wait = self.acquire(self.client_key(scope))
        if wait <= 0.0:
            await self.app(scope, receive, send)
            return

        retry_after = max(1, math.ceil(wait))
        await send_openai_error(
            send,
            429,
            f"Rate limit reached: {self.requests_per_minute} requests per minute. Please try again in {retry_after}s.",
            "rate_limit_error",
            code="rate_limit_exceeded",
            headers=[
                ("retry-after", str(retry_after)),
                ("x-ratelimit-limit-requests", str(self.requests_per_minute)),
                ("x-ratelimit-remaining-requests", "0"),
            ],
        )
