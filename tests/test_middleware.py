"""Tests for core/dserve/middleware: each middleware on a tiny Starlette app."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from dserve.middleware import (
    AccessLogMiddleware,
    ApiKeyMiddleware,
    BodySizeLimitMiddleware,
    Metrics,
    MetricsMiddleware,
    RateLimitMiddleware,
    RequestIdMiddleware,
    build_middleware,
    metrics_endpoint,
)
from dserve.middleware._errors import send_openai_error
from dserve.middleware.request_id import is_sane_request_id

SECRET_PROMPT = "the secret prompt text 42"


# ----------------------------------------------------------------------------- helpers


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "len": len(body),
            "request_id": getattr(request.state, "request_id", None),
            "ctx": structlog.contextvars.get_contextvars(),
        }
    )


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def bad(request: Request) -> JSONResponse:
    return JSONResponse({"error": "nope"}, status_code=400)


async def chat(request: Request) -> JSONResponse:
    await request.json()  # reads the body, logs none of it
    request.state.log_fields = {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "engine": "llada",
        "algorithm": "low_confidence",
        "steps": 16,
        "prompt": SECRET_PROMPT,  # a careless route: must be dropped
    }
    return JSONResponse({"text": "completion text"})


async def stream(request: Request) -> StreamingResponse:
    async def gen():
        for i in range(3):
            yield f"data: {i}\n\n"
        request.state.log_fields = {"completion_tokens": 3}

    return StreamingResponse(gen(), media_type="text/event-stream")


async def result(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.path_params["id"])


ROUTES = [
    Route("/health", ok),
    Route("/health/live", ok),
    Route("/health/ready", ok),
    Route("/v1/echo", echo, methods=["GET", "POST"]),
    Route("/v1/ok", ok),
    Route("/v1/bad", bad),
    Route("/v1/chat/completions", chat, methods=["POST"]),
    Route("/v1/stream", stream),
    Route("/v1/result/{id}", result),
]


def make_app(*middleware: Middleware, extra_routes=()) -> Starlette:
    return Starlette(routes=ROUTES + list(extra_routes), middleware=list(middleware))


def assert_openai_error(resp, status: int, type_: str, code: str | None) -> dict:
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == type_
    assert err["code"] == code
    assert err["param"] is None
    return err


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def run_asgi(app, scope: dict, request_messages: list[dict]) -> list[dict]:
    """Drive a raw ASGI app: feed ``request_messages`` then http.disconnect; collect sends."""
    pending = list(request_messages)
    sent: list[dict] = []

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(path: str = "/v1/x", method: str = "POST", headers=()) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "client": ("10.0.0.1", 1234),
        "server": ("testserver", 80),
    }


# ----------------------------------------------------------------------------- _errors


def test_send_openai_error_raw_asgi():
    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    asyncio.run(
        send_openai_error(
            send, 429, "slow down", "rate_limit_error", "rate_limit_exceeded", headers=[("Retry-After", "3"), (b"x-a", b"b")]
        )
    )
    start, body = sent
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"3" and headers[b"x-a"] == b"b"
    assert headers[b"content-length"] == str(len(body["body"])).encode()
    assert json.loads(body["body"]) == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    }
    assert body["more_body"] is False


# ----------------------------------------------------------------------------- request id


def test_request_id_generated_and_bound():
    client = TestClient(make_app(Middleware(RequestIdMiddleware)))
    r1 = client.get("/v1/echo")
    r2 = client.get("/v1/echo")
    rid = r1.headers["x-request-id"]
    assert len(rid) == 32 and int(rid, 16) >= 0  # uuid4 hex
    assert rid != r2.headers["x-request-id"]
    assert r1.json()["request_id"] == rid  # scope["state"]["request_id"]
    assert r1.json()["ctx"] == {"request_id": rid}  # structlog contextvars while handling
    assert "request_id" not in structlog.contextvars.get_contextvars()  # unbound after


def test_request_id_echoed_when_sane():
    client = TestClient(make_app(Middleware(RequestIdMiddleware)))
    r = client.get("/v1/echo", headers={"X-Request-Id": "trace-abc_123.XYZ"})
    assert r.headers["x-request-id"] == "trace-abc_123.XYZ"
    assert r.json()["request_id"] == "trace-abc_123.XYZ"


@pytest.mark.parametrize("bad_id", ["has space", "x" * 129, "", "tab\tchar", "caf\u00e9"])
def test_request_id_replaced_when_insane(bad_id):
    client = TestClient(make_app(Middleware(RequestIdMiddleware)))
    headers = {"X-Request-Id": bad_id.encode("utf-8")}
    r = client.get("/v1/echo", headers=headers)
    assert r.headers["x-request-id"] != bad_id
    assert len(r.headers["x-request-id"]) == 32
    assert is_sane_request_id("x" * 128) and not is_sane_request_id("x" * 129)


def test_request_id_on_inner_error_responses():
    app = make_app(Middleware(RequestIdMiddleware), Middleware(ApiKeyMiddleware, api_keys=["k"]))
    r = TestClient(app).get("/v1/ok", headers={"X-Request-Id": "abc"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "abc"


# ----------------------------------------------------------------------------- api key


def api_key_app(keys=("key-one",), **kw) -> TestClient:
    return TestClient(make_app(Middleware(ApiKeyMiddleware, api_keys=list(keys), **kw)))


def test_api_key_missing():
    r = api_key_app().get("/v1/ok")
    err = assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert "API key" in err["message"]


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", "Bearer key-on", "Bearer key-one-plus", "Basic key-one", "key-one", "Bearer "],
)
def test_api_key_wrong(authorization):
    r = api_key_app().get("/v1/ok", headers={"Authorization": authorization})
    err = assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert "key-one" not in err["message"]


def test_api_key_right_and_case_insensitive_scheme():
    client = api_key_app()
    assert client.get("/v1/ok", headers={"Authorization": "Bearer key-one"}).text == "ok"
    assert client.get("/v1/ok", headers={"Authorization": "bearer key-one"}).status_code == 200


def test_api_key_several_keys():
    client = api_key_app(keys=["alpha", "beta", "gamma"])
    for key in ("alpha", "beta", "gamma"):
        assert client.get("/v1/ok", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/ok", headers={"Authorization": "Bearer delta"}).status_code == 401


def test_api_key_compares_against_every_key(monkeypatch):
    import dserve.middleware.api_key as api_key_mod

    calls = []
    real = api_key_mod.hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(api_key_mod.hmac, "compare_digest", counting)
    client = api_key_app(keys=["alpha", "beta-longer-key", "gamma"])
    for key in ("alpha", "gamma", "nope", "x" * 500):
        calls.clear()
        client.get("/v1/ok", headers={"Authorization": f"Bearer {key}"})
        # no early exit, and every comparison is between equal-length digests
        assert calls == [(32, 32)] * 3


def test_api_key_probes_exempt_and_configurable():
    client = api_key_app()
    for path in ("/health", "/health/live", "/health/ready"):
        assert client.get(path).status_code == 200
    client = api_key_app(exempt_paths={"/v1/ok"})
    assert client.get("/v1/ok").status_code == 200
    assert client.get("/health").status_code == 401


def test_api_key_requires_a_key():
    with pytest.raises(ValueError):
        ApiKeyMiddleware(ok, api_keys=["", ""])


# ----------------------------------------------------------------------------- rate limit


def rate_app(clock, rpm=3, **kw) -> Starlette:
    return make_app(Middleware(RateLimitMiddleware, requests_per_minute=rpm, clock=clock, **kw))


def test_rate_limit_burst_then_429_then_recovery():
    clock = FakeClock()
    client = TestClient(rate_app(clock, rpm=3))
    for _ in range(3):
        assert client.get("/v1/ok").status_code == 200
    r = client.get("/v1/ok")
    assert_openai_error(r, 429, "rate_limit_error", "rate_limit_exceeded")
    # 3 per minute -> one token per 20 s
    assert r.headers["retry-after"] == "20"
    assert r.headers["x-ratelimit-limit-requests"] == "3"

    clock.t += 10
    r = client.get("/v1/ok")
    assert r.status_code == 429 and r.headers["retry-after"] == "10"
    clock.t += 9.5
    r = client.get("/v1/ok")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"  # 0.5 s rounds up to 1
    clock.t += 0.5
    assert client.get("/v1/ok").status_code == 200
    assert client.get("/v1/ok").status_code == 429
    clock.t += 3600  # refills only up to the burst
    for _ in range(3):
        assert client.get("/v1/ok").status_code == 200
    assert client.get("/v1/ok").status_code == 429


def test_rate_limit_retry_after_at_least_one_second():
    clock = FakeClock()
    client = TestClient(rate_app(clock, rpm=6000, burst=1))  # 100 tokens/s
    assert client.get("/v1/ok").status_code == 200
    r = client.get("/v1/ok")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"


def test_rate_limit_per_client_ip_and_exempt_probes():
    clock = FakeClock()
    app = rate_app(clock, rpm=1)
    a = TestClient(app, client=("10.0.0.1", 1))
    b = TestClient(app, client=("10.0.0.2", 1))
    assert a.get("/v1/ok").status_code == 200
    assert a.get("/v1/ok").status_code == 429
    assert b.get("/v1/ok").status_code == 200
    for _ in range(5):
        assert a.get("/health").status_code == 200
        assert a.get("/health/ready").status_code == 200


def test_rate_limit_keys_by_verified_api_key():
    clock = FakeClock()
    app = make_app(
        Middleware(ApiKeyMiddleware, api_keys=["k1", "k2"]),
        Middleware(RateLimitMiddleware, requests_per_minute=1, clock=clock),
    )
    client = TestClient(app)  # same IP for all
    k1 = {"Authorization": "Bearer k1"}
    k2 = {"Authorization": "Bearer k2"}
    assert client.get("/v1/ok", headers=k1).status_code == 200
    assert client.get("/v1/ok", headers=k1).status_code == 429
    assert client.get("/v1/ok", headers=k2).status_code == 200


def test_rate_limit_unverified_token_does_not_buy_a_new_bucket():
    clock = FakeClock()
    client = TestClient(rate_app(clock, rpm=1))  # no auth configured
    assert client.get("/v1/ok", headers={"Authorization": "Bearer a"}).status_code == 200
    assert client.get("/v1/ok", headers={"Authorization": "Bearer b"}).status_code == 429


def test_rate_limit_memory_bounded():
    clock = FakeClock()
    mw = RateLimitMiddleware(ok, requests_per_minute=1, max_clients=3, clock=clock)
    for i in range(10):
        assert mw.acquire(f"ip:{i}") == 0.0
        clock.t += 1
    assert len(mw._buckets) == 3
    assert list(mw._buckets) == ["ip:7", "ip:8", "ip:9"]  # least recently seen evicted
    assert mw.acquire("ip:9") > 0  # a kept client is still limited


# ----------------------------------------------------------------------------- body limit


def body_app(max_bytes=10, extra_routes=()) -> TestClient:
    return TestClient(make_app(Middleware(BodySizeLimitMiddleware, max_bytes=max_bytes), extra_routes=extra_routes))


def test_body_limit_content_length():
    client = body_app(10)
    assert client.post("/v1/echo", content=b"x" * 10).json()["len"] == 10
    r = client.post("/v1/echo", content=b"x" * 11)
    err = assert_openai_error(r, 413, "invalid_request_error", "request_too_large")
    assert "10 bytes" in err["message"]


def test_body_limit_content_length_rejected_before_app_runs():
    called = []

    async def app(scope, receive, send):
        called.append(scope)

    sent = asyncio.run(
        run_asgi(
            BodySizeLimitMiddleware(app, 5),
            http_scope(headers=[("content-length", "6")]),
            [{"type": "http.request", "body": b"123456"}],
        )
    )
    assert not called
    assert sent[0]["status"] == 413


def test_body_limit_chunked_via_testclient():
    def chunks():
        for _ in range(4):
            yield b"x" * 4

    client = body_app(10)
    r = client.post("/v1/echo", content=chunks())  # no Content-Length: chunked
    assert_openai_error(r, 413, "invalid_request_error", "request_too_large")

    def small():
        yield b"abc"
        yield b"def"

    assert client.post("/v1/echo", content=small()).json()["len"] == 6


def test_body_limit_chunked_stream_grows_past_limit():
    got = []

    async def app(scope, receive, send):
        request = Request(scope, receive)
        async for chunk in request.stream():
            got.append(chunk)
        await PlainTextResponse("ok")(scope, receive, send)

    messages = [{"type": "http.request", "body": b"x" * 4, "more_body": True} for _ in range(5)]
    sent = asyncio.run(run_asgi(BodySizeLimitMiddleware(app, 10), http_scope(), messages))
    assert got == [b"xxxx", b"xxxx"]  # third chunk pushed it over
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"


def test_body_limit_app_swallowing_the_error_still_gets_413():
    async def careless(request: Request) -> JSONResponse:
        try:
            await request.body()
        except Exception:
            return JSONResponse({"error": "bad json"}, status_code=400)
        return JSONResponse({})

    def chunks():
        yield b"x" * 20

    client = body_app(10, extra_routes=[Route("/v1/careless", careless, methods=["POST"])])
    r = client.post("/v1/careless", content=chunks())
    assert_openai_error(r, 413, "invalid_request_error", "request_too_large")


def test_body_limit_after_response_started_ends_without_completing():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b"end", "more_body": False})

    messages = [{"type": "http.request", "body": b"x" * 8, "more_body": True} for _ in range(3)]
    sent = asyncio.run(run_asgi(BodySizeLimitMiddleware(app, 10), http_scope(), messages))
    # no 413 (too late), and no final body message: the server closes the connection
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]
    assert all(m.get("more_body") for m in sent if m["type"] == "http.response.body")


# ----------------------------------------------------------------------------- access log


def access_app(*extra: Middleware) -> TestClient:
    return TestClient(
        make_app(Middleware(RequestIdMiddleware), Middleware(AccessLogMiddleware), *extra),
        client=("192.0.2.7", 5555),
    )


def test_access_log_fields_and_no_body():
    client = access_app()
    with capture_logs() as logs:
        r = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": SECRET_PROMPT}]},
            headers={"X-Request-Id": "rid-1"},
        )
    assert r.status_code == 200
    assert len(logs) == 1
    event = logs[0]
    assert event["event"] == "http_request"
    assert event["log_level"] == "info"
    assert event["request_id"] == "rid-1"
    assert event["method"] == "POST"
    assert event["route"] == "/v1/chat/completions"
    assert event["status"] == 200
    assert isinstance(event["latency_ms"], float) and event["latency_ms"] >= 0
    assert event["client"] == "192.0.2.7"
    assert event["prompt_tokens"] == 7 and event["completion_tokens"] == 3
    assert event["engine"] == "llada" and event["algorithm"] == "low_confidence"
    assert event["steps"] == 16
    assert "prompt" not in event
    assert SECRET_PROMPT not in repr(logs)
    assert "completion text" not in repr(logs)


def test_access_log_streaming_logged_once_when_complete():
    client = access_app()
    with capture_logs() as logs:
        r = client.get("/v1/stream")
    assert r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(logs) == 1
    assert logs[0]["status"] == 200
    assert logs[0]["completion_tokens"] == 3  # set by the generator before the last chunk
    assert "disconnected" not in logs[0]


def test_access_log_rejections_and_errors():
    client = access_app(Middleware(ApiKeyMiddleware, api_keys=["k"]))
    with capture_logs() as logs:
        client.get("/v1/ok")
    assert [e["status"] for e in logs] == [401]

    async def boom(request):
        raise RuntimeError("boom")

    app = make_app(Middleware(AccessLogMiddleware), extra_routes=[Route("/v1/boom", boom)])
    with capture_logs() as logs:
        r = TestClient(app, raise_server_exceptions=False).get("/v1/boom")
    assert r.status_code == 500
    assert len(logs) == 1
    assert logs[0]["status"] == 500 and logs[0]["error"] is True
    assert logs[0]["log_level"] == "warning"


def test_access_log_client_disconnect_mid_stream():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 0\n\n", "more_body": True})
        message = await receive()
        assert message["type"] == "http.disconnect"

    with capture_logs() as logs:
        asyncio.run(run_asgi(AccessLogMiddleware(app), http_scope(method="GET"), []))
    assert len(logs) == 1
    assert logs[0]["status"] == 200 and logs[0]["disconnected"] is True


def test_access_log_custom_logger_and_passthrough():
    seen = []

    class Logger:
        def info(self, event, **kw):
            seen.append((event, kw))

        warning = info

    TestClient(make_app(Middleware(AccessLogMiddleware, logger=Logger()))).get("/v1/ok")
    assert seen[0][0] == "http_request" and seen[0][1]["status"] == 200

    lifespan_seen = []

    async def inner(scope, receive, send):
        lifespan_seen.append(scope["type"])

    for cls, kw in [
        (AccessLogMiddleware, {}),
        (RequestIdMiddleware, {}),
        (ApiKeyMiddleware, {"api_keys": ["k"]}),
        (RateLimitMiddleware, {"requests_per_minute": 1}),
        (BodySizeLimitMiddleware, {"max_bytes": 0}),
        (MetricsMiddleware, {"metrics": Metrics()}),
    ]:
        asyncio.run(cls(inner, **kw)({"type": "lifespan"}, None, None))
    assert lifespan_seen == ["lifespan"] * 6


# ----------------------------------------------------------------------------- metrics

METRIC_NAMES = [
    "dserve_request_success_total",
    "dserve_request_failure_total",
    "dserve_request_latency_seconds",
    "dserve_time_to_first_token_seconds",
    "dserve_prompt_tokens_total",
    "dserve_generation_tokens_total",
    "dserve_parallel_tokens_decoded_total",
    "dserve_tokens_per_step",
    "dserve_queue_size",
    "dserve_active_requests",
    "dserve_batch_size",
    "dserve_gpu_memory_used_bytes",
]


def metrics_client(metrics: Metrics, *extra: Middleware) -> TestClient:
    return TestClient(
        make_app(Middleware(MetricsMiddleware, metrics=metrics), *extra, extra_routes=[Route("/metrics", metrics.endpoint)])
    )


def test_metrics_endpoint_names_and_content_type():
    client = metrics_client(Metrics())
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in METRIC_NAMES:
        assert name in r.text, name
    assert "vdiff" not in r.text


def test_metrics_request_counters():
    metrics = Metrics()
    client = metrics_client(metrics, Middleware(ApiKeyMiddleware, api_keys=["k"], exempt_paths={"/metrics", "/v1/ok", "/v1/bad"}))
    for _ in range(2):
        client.get("/v1/ok")
    client.get("/v1/bad")
    client.get("/v1/echo")  # 401 from the API key middleware
    client.get("/v1/result/abc", headers={"Authorization": "Bearer k"})
    client.get("/v1/result/def", headers={"Authorization": "Bearer k"})
    client.get("/v1/result/ghi")  # 401, still labelled by its route template
    client.get("/v1/nope", headers={"Authorization": "Bearer k"})  # 404
    client.get("/v1/nope2")  # 401 on no route
    client.get("/health")  # not under /v1/: not counted
    text = client.get("/metrics").text
    assert 'dserve_request_success_total{endpoint="/v1/ok"} 2.0' in text
    assert 'dserve_request_failure_total{endpoint="/v1/bad",status="400"} 1.0' in text
    assert 'dserve_request_failure_total{endpoint="/v1/echo",status="401"} 1.0' in text
    assert 'dserve_request_success_total{endpoint="/v1/result/{id}"} 2.0' in text  # bounded
    assert 'dserve_request_failure_total{endpoint="/v1/result/{id}",status="401"} 1.0' in text
    assert 'dserve_request_failure_total{endpoint="unmatched",status="404"} 1.0' in text
    assert 'dserve_request_failure_total{endpoint="unmatched",status="401"} 1.0' in text
    assert "/v1/nope" not in text
    assert 'dserve_request_latency_seconds_count{endpoint="/v1/ok"} 2.0' in text
    assert "/health" not in text
    assert "dserve_requests_in_flight 0.0" in text


def test_metrics_unfinished_response_is_499():
    metrics = Metrics()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})

    asyncio.run(run_asgi(MetricsMiddleware(app, metrics), http_scope(path="/v1/stream"), []))
    assert 'status="499"} 1.0' in metrics.render().decode()


def test_metrics_engine_helpers_and_separate_registries():
    a, b = Metrics(), Metrics()
    a.observe_step([1, 3, 2, 0])
    a.observe_step([4])
    a.record_usage(prompt_tokens=11, completion_tokens=10)
    a.time_to_first_token.observe(0.2)
    a.queue_size.set(5)
    a.active_requests.set(4)
    a.set_gpu_memory_source(lambda: 1234)
    text = a.render().decode()
    assert "dserve_parallel_tokens_decoded_total 9.0" in text  # 3 + 2 + 4
    assert "dserve_tokens_per_step_count 5.0" in text
    assert "dserve_tokens_per_step_sum 10.0" in text
    assert "dserve_batch_size_count 2.0" in text
    assert "dserve_prompt_tokens_total 11.0" in text
    assert "dserve_generation_tokens_total 10.0" in text
    assert "dserve_time_to_first_token_seconds_count 1.0" in text
    assert "dserve_queue_size 5.0" in text and "dserve_active_requests 4.0" in text
    assert "dserve_gpu_memory_used_bytes 1234.0" in text
    assert "dserve_prompt_tokens_total 0.0" in b.render().decode()

    def broken():
        raise RuntimeError("no gpu")

    a.set_gpu_memory_source(broken)
    assert "dserve_gpu_memory_used_bytes NaN" in a.render().decode()


def test_metrics_endpoint_from_app_state():
    app = make_app(extra_routes=[Route("/metrics", metrics_endpoint)])
    app.state.metrics = Metrics()
    assert "dserve_queue_size" in TestClient(app).get("/metrics").text


def test_metrics_module_does_not_import_torch():
    code = (
        "import sys, dserve.middleware, dserve.middleware.metrics as m; "
        "assert 'torch' not in sys.modules; assert m.torch_gpu_memory_used() == 0.0"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ----------------------------------------------------------------------------- build_middleware


def test_build_middleware_order_and_switches():
    metrics = Metrics()
    stack = build_middleware(
        api_keys=["k"],
        rate_limit_requests=10,
        max_body_bytes=100,
        cors_origins=["https://ui.example"],
        metrics=metrics,
        metrics_require_key=False,
        access_log=True,
    )
    names = [m.cls.__name__ for m in stack]
    assert names == [
        "RequestIdMiddleware",
        "AccessLogMiddleware",
        "MetricsMiddleware",
        "CORSMiddleware",
        "BodySizeLimitMiddleware",
        "ApiKeyMiddleware",
        "RateLimitMiddleware",
    ]
    assert [m.cls.__name__ for m in build_middleware(access_log=False)] == ["RequestIdMiddleware"]
    assert [m.cls.__name__ for m in build_middleware()] == ["RequestIdMiddleware", "AccessLogMiddleware"]


def full_app(metrics: Metrics, require_key: bool, rpm: int = 2) -> TestClient:
    stack = build_middleware(
        api_keys=["k"],
        rate_limit_requests=rpm,
        max_body_bytes=100,
        cors_origins=["https://ui.example"],
        metrics=metrics,
        metrics_require_key=require_key,
    )
    app = Starlette(routes=ROUTES + [Route("/metrics", metrics.endpoint)], middleware=stack)
    return TestClient(app)


def test_build_middleware_stack_behaviour():
    metrics = Metrics()
    client = full_app(metrics, require_key=False)
    origin = {"Origin": "https://ui.example"}

    # CORS preflight is answered without a key (CORS sits outside auth)
    pre = client.options(
        "/v1/chat/completions",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://ui.example"

    # a 401 carries the request id and CORS headers, and is logged and counted
    with capture_logs() as logs:
        r = client.get("/v1/ok", headers=origin)
    assert r.status_code == 401
    assert r.headers["x-request-id"]
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"]
    assert logs[0]["status"] == 401 and logs[0]["request_id"] == r.headers["x-request-id"]

    # probes and /metrics need no key and are not rate limited
    for _ in range(4):
        assert client.get("/health/live").status_code == 200
        assert client.get("/metrics").status_code == 200

    # body limit, then auth, then rate limit by key
    key = {"Authorization": "Bearer k"}
    assert client.post("/v1/echo", content=b"x" * 101, headers=key).status_code == 413
    for _ in range(2):  # rpm=2: a burst of 2 (the 413 above never reached the limiter)
        assert client.get("/v1/ok", headers=key).status_code == 200
    r = client.get("/v1/ok", headers=key)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1

    text = client.get("/metrics").text
    assert 'dserve_request_failure_total{endpoint="/v1/ok",status="401"} 1.0' in text
    assert 'dserve_request_failure_total{endpoint="/v1/ok",status="429"} 1.0' in text
    assert 'dserve_request_failure_total{endpoint="/v1/echo",status="413"} 1.0' in text


def test_build_middleware_metrics_require_key():
    client = full_app(Metrics(), require_key=True, rpm=100)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    assert client.get("/health").status_code == 200


def test_metrics_endpoint_label_inside_mount():
    from starlette.routing import Mount

    metrics = Metrics()
    app = Starlette(
        routes=[Mount("/v1/jobs", routes=[Route("/{id}", ok)]), Route("/metrics", metrics.endpoint)],
        middleware=[
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(ApiKeyMiddleware, api_keys=["k"], exempt_paths={"/metrics"}),
        ],
    )
    client = TestClient(app)
    client.get("/v1/jobs/1", headers={"Authorization": "Bearer k"})
    client.get("/v1/jobs/2")  # 401 before routing: matched read-only
    text = client.get("/metrics").text
    assert 'dserve_request_success_total{endpoint="/v1/jobs/{id}"} 1.0' in text
    assert 'dserve_request_failure_total{endpoint="/v1/jobs/{id}",status="401"} 1.0' in text
