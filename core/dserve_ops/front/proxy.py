"""Forwarding one HTTP request to a worker and relaying its answer.

- The request goes out with its method, path, query, body and headers (hop-by-hop headers
  dropped; `x-request-id` set to the front's id, so a request has one id in every log).
- Server-sent events (`text/event-stream`) are relayed chunk by chunk as they arrive.
  Other answers are read whole and sent with their status and headers, plus
  `x-dserve-worker: <index>`.
- The client going away closes the upstream request at once, while waiting for headers
  or mid-stream, so the worker frees the batch slot at its next step.
- A worker that refuses the connection has the request retried on another healthy worker
  (nothing reached it). A worker failing after it got the request (connection reset,
  process killed) ends the request with a 502 OpenAI error (mid-stream: an SSE `error`
  event), since generation is not repeated behind the client's back; either way the front
  marks the worker unhealthy until a health check passes again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import anyio
import httpx
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dserve.errors import error_body
from dserve_ops.front.router import Router
from dserve_ops.front.workers import Worker, WorkerPool

log = structlog.get_logger("dserve.front")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
MAX_ATTEMPTS = 3
UPSTREAM_READ_GRACE_S = 5.0  # past --request-timeout, before the front gives up on a silent worker


class ClientGone(Exception):
    """The client disconnected before the worker answered."""


def openai_error(status: int, message: str, type_: str, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, None, code), status_code=status, headers=headers)


def no_healthy_worker() -> JSONResponse:
    return openai_error(
        503, "no healthy worker is available; retry shortly", "service_unavailable", "no_healthy_workers", {"retry-after": "1"}
    )


class Proxy:
    def __init__(self, pool: WorkerPool, router: Router):
        self.pool = pool
        self.router = router
        # Workers enforce --request-timeout; the read timeout is the backstop for a worker that
        # cannot answer at all (SIGSTOPped, hung): no client waits much past the timeout.
        timeout = pool.settings.request_timeout
        read = timeout + UPSTREAM_READ_GRACE_S if timeout else None
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=5.0, read=read, write=60.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def forward(self, request: Request, *, worker: Worker | None = None, path: str | None = None) -> Response:
        """Forward to `worker` (or the least-loaded healthy one) and relay the answer."""
        upstream = await self.send(request, worker=worker, path=path)
        if isinstance(upstream, Response):
            return upstream
        resp, w = upstream
        headers = _response_headers(resp, w, request)
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            return RelayResponse(resp, w, self, status_code=resp.status_code, headers=headers)
        try:
            content = await self.read(request, resp, w)
        except ClientGone:
            return Response(status_code=499)
        except httpx.HTTPError as exc:
            return self.failed(w, exc)
        return Response(content, status_code=resp.status_code, headers=headers)

    async def send(self, request: Request, *, worker: Worker | None = None, path: str | None = None):
        """Send the request upstream; return (httpx response with its body unread, worker),
        whose in-flight count the caller ends (`read` / `RelayResponse` do), or an error
        Response."""
        body = await request.body()
        tried: set[int] = set()
        for _ in range(MAX_ATTEMPTS if worker is None else 1):
            w = worker or self.router.pick(exclude=frozenset(tried))
            if w is None:
                break
            self.router.begin(w)
            try:
                resp = await self._send_once(request, w, path, body)
            except ClientGone:
                self.router.end(w)
                return Response(status_code=499)  # nobody reads it
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                self.router.end(w)
                self.pool.mark_failed(w, f"connect: {type(exc).__name__}")
                tried.add(w.index)
                continue
            except httpx.HTTPError as exc:
                self.router.end(w)
                return self.failed(w, exc)
            return resp, w
        if worker is not None:
            return openai_error(
                503, f"worker {worker.index} is not reachable", "service_unavailable", "worker_unavailable", {"retry-after": "1"}
            )
        return no_healthy_worker()

    async def _send_once(self, request: Request, w: Worker, path: str | None, body: bytes) -> httpx.Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "x-request-id"]
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            headers.append(("x-request-id", request_id))
        up = self.client.build_request(
            request.method,
            w.url + (path or request.url.path),
            params=request.url.query or None,
            headers=headers,
            content=body,
        )
        return await _race_disconnect(request, self.client.send(up, stream=True))

    async def read(self, request: Request, resp: httpx.Response, w: Worker) -> bytes:
        """The whole (raw, still encoded) body of a non-streaming answer; ends `w`'s count."""
        try:
            return await _race_disconnect(request, _read_raw(resp))
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            self.router.end(w)

    def failed(self, w: Worker, exc: Exception) -> JSONResponse:
        self.pool.mark_failed(w, f"{type(exc).__name__}: {exc}")
        log.warning("request to worker failed", worker=w.index, error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, httpx.ReadTimeout):
            return openai_error(
                504,
                f"worker {w.index} sent nothing for longer than the request timeout; it was marked unhealthy",
                "timeout_error",
                "timeout",
            )
        return openai_error(
            502,
            f"worker {w.index} failed while handling the request ({type(exc).__name__}); it was marked unhealthy, retry the request",
            "api_error",
            "worker_failed",
        )


async def _read_raw(resp: httpx.Response) -> bytes:
    return b"".join([chunk async for chunk in resp.aiter_raw()])


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _race_disconnect(request: Request, coro) -> Any:
    """Await `coro`, cancelling it (and raising ClientGone) if the client disconnects."""
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        watch.cancel()
        raise
    if work in done:
        watch.cancel()
        return work.result()
    work.cancel()
    with anyio.CancelScope(shield=True):
        try:
            resp = await work
        except BaseException:  # noqa: BLE001 - cancelled, as wanted
            resp = None
        if isinstance(resp, httpx.Response):
            await resp.aclose()
    raise ClientGone()


def _response_headers(resp: httpx.Response, w: Worker, request: Request) -> dict[str, str]:
    # date and server: uvicorn adds the front's own
    headers = {k: v for k, v in resp.headers.multi_items() if k.lower() not in HOP_BY_HOP and k.lower() not in ("date", "server")}
    headers["x-dserve-worker"] = str(w.index)
    location = headers.get("location")
    if location is not None and location.startswith(w.url):
        # a worker's redirect (a trailing slash) names its own port: the client must come back
        # to the front, which it reached at the address it asked for
        headers["location"] = str(request.base_url).rstrip("/") + location[len(w.url) :]
    return headers


class RelayResponse(Response):
    """Relays an upstream event stream as it arrives. A client disconnect (seen on
    `receive`, or as a failed write) closes the upstream stream at once; a worker failing
    mid-stream ends the stream with an OpenAI error event."""

    def __init__(self, upstream: httpx.Response, worker: Worker, proxy: Proxy, *, status_code: int, headers: dict[str, str]):
        # not Response.__init__: it would add `content-length: 0` for the empty body
        self.status_code = status_code
        self.media_type = None
        self.background = None
        self.init_headers(headers)
        self.upstream = upstream
        self.worker = worker
        self.proxy = proxy

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                await self._stream(send)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
            self.proxy.router.end(self.worker)

    async def _stream(self, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            try:
                async for chunk in self.upstream.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as exc:
                self.proxy.pool.mark_failed(self.worker, f"mid-stream {type(exc).__name__}")
                log.warning("worker failed mid-stream", worker=self.worker.index, error=f"{type(exc).__name__}: {exc}")
                if isinstance(exc, httpx.ReadTimeout):
                    err = error_body(
                        f"worker {self.worker.index} sent nothing for longer than the request timeout",
                        "timeout_error",
                        None,
                        "timeout",
                    )
                else:
                    err = error_body(
                        f"worker {self.worker.index} failed mid-stream ({type(exc).__name__})", "api_error", None, "worker_failed"
                    )
                # then [DONE], as a worker ends its own error-ended streams: clients stop reading there
                body = f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return  # the client went away while we wrote
