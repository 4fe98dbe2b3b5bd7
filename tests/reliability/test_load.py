"""Reliability under load through a real server: bounded load with backpressure, SIGTERM while
requests are in flight, and a storm of clients that disconnect mid-stream."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import json
import signal
import time

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from reliability.helpers import MODEL_ARGS, ServerProcess, model_info, sample, scrape, wait_for, wait_idle

TOTAL = 1000
CONCURRENCY = 64


def _sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def _check_error(status: int, body: dict, headers, code: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code, body
    if status == 429:
        assert body["error"]["type"] == "rate_limit_error"
        assert int(headers["retry-after"]) >= 1


# ---- bounded load ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_server():
    """A small queue, so that 64 concurrent clients overflow it and get 429s."""
    srv = ServerProcess(*MODEL_ARGS, "--max-queue-size", "8", "--max-batch-size", "8")
    yield srv
    srv.stop()


async def _one(client: httpx.AsyncClient, i: int, model: str) -> tuple[int, str]:
    """Request i of the load: a mix of chat, completions and streamed chat. Returns (status, kind)."""
    kind = ("chat", "completion", "stream")[i % 3]
    common = {"model": model, "max_tokens": 4, "block_length": 4, "temperature": 0}
    if kind == "completion":
        r = await client.post("/v1/completions", json={**common, "prompt": f"load {i}"})
    else:
        body = {**common, "messages": [{"role": "user", "content": f"load {i}"}], "stream": kind == "stream"}
        r = await client.post("/v1/chat/completions", json=body)
    if r.status_code == 200:
        if kind == "completion":
            out = Completion.model_validate(r.json())
            assert out.usage.completion_tokens <= 4 and out.choices[0].finish_reason in ("stop", "length")
        elif kind == "chat":
            out = ChatCompletion.model_validate(r.json())
            assert out.usage.completion_tokens <= 4 and out.choices[0].finish_reason in ("stop", "length")
        else:
            events = _sse_events(r.text)
            assert events[-1] == "[DONE]", r.text
            chunks = [ChatCompletionChunk.model_validate(json.loads(e)) for e in events[:-1]]
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    else:
        _check_error(r.status_code, r.json(), r.headers, "queue_full")
    return r.status_code, kind


async def _load(url: str, model: str) -> list[tuple[int, str]]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        next_index = iter(range(TOTAL))
        results: list[tuple[int, str]] = []

        async def worker():
            for i in next_index:  # shared iterator: each request index is taken once
                try:
                    results.append(await _one(client, i, model))
                except Exception as exc:  # noqa: BLE001 - a lost request: counted, reported below
                    results.append((f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}", "error"))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return results


def test_1000_requests_at_concurrency_64_end_200_or_429(busy_server):
    url = busy_server.url
    model = model_info(url)["id"]
    start = time.monotonic()
    results = asyncio.run(_load(url, model))
    elapsed = time.monotonic() - start
    statuses = collections.Counter(status for status, _ in results)
    # none lost: every request got an answer, and only these two
    assert len(results) == TOTAL
    lost = [status for status, kind in results if kind == "error"]
    assert not lost, f"{len(lost)} requests failed: {lost[:5]}"
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] >= 10 and statuses[429] >= 1, statuses  # backpressure really happened
    print(f"{TOTAL} requests in {elapsed:.1f}s: {dict(statuses)}")

    # the server agrees: each request counted once, as a success or a 429
    m = scrape(url)
    counted = sum(
        sample(m, "dserve_request_success_total", endpoint=e)
        + sample(m, "dserve_request_failure_total", endpoint=e, status="429")
        for e in ("/v1/chat/completions", "/v1/completions")
    )
    assert counted == TOTAL
    assert (
        sum(sample(m, "dserve_request_success_total", endpoint=e) for e in ("/v1/chat/completions", "/v1/completions"))
        == statuses[200]
    )

    # healthy and idle afterwards
    stats = wait_idle(url)
    assert stats["running_requests"] == 0 and stats["queue_depth"] == 0
    assert httpx.get(url + "/health").json()["status"] == "ok"
    r = httpx.post(url + "/v1/completions", json={"model": model, "prompt": "after", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200


# ---- SIGTERM under load ---------------------------------------------------------------------------


def test_sigterm_drains_in_flight_and_refuses_new_work():
    # a grace long enough for a slow, shared CPU: this test is about draining, not about the grace
    srv = ServerProcess(*MODEL_ARGS, "--max-batch-size", "8", "--shutdown-grace", "150")
    try:
        url = srv.url
        model = model_info(url)["id"]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        long = dict(model=model, max_tokens=96, extra_body={"ignore_eos": True, "block_length": 32})

        def plain(i):
            out = client.chat.completions.create(messages=[{"role": "user", "content": f"drain {i}"}], **long)
            return out, time.monotonic()

        def streamed(i):
            chunks = list(
                client.chat.completions.create(
                    messages=[{"role": "user", "content": f"drain {i}"}],
                    stream=True,
                    stream_options={"include_usage": True},
                    **long,
                )
            )
            return chunks, time.monotonic()

        pool = cf.ThreadPoolExecutor(8)
        futures = [pool.submit(plain, i) for i in range(4)] + [pool.submit(streamed, i) for i in range(4)]
        wait_for(lambda: httpx.get(url + "/batch/stats").json()["running_requests"] == 8, 30, what="8 running requests")
        assert not any(f.done() for f in futures)
        srv.terminate()

        # new work is refused with 503 while the in-flight requests finish; probes tell the state
        refused, transport_errors = collections.Counter(), []
        deadline = time.monotonic() + 180
        with httpx.Client(base_url=url, timeout=30) as c:
            while srv.proc.poll() is None:
                assert time.monotonic() < deadline, "the server did not exit after SIGTERM"
                try:
                    r = c.post(
                        "/v1/chat/completions",
                        json={"model": model, "messages": [{"role": "user", "content": "new"}], "max_tokens": 2},
                    )
                    if not all(f.done() for f in futures):
                        ready = c.get("/health/ready")
                        assert ready.status_code == 503 and ready.json()["ready"] is False
                        assert c.get("/health/live").status_code == 200
                        assert c.get("/health").json()["status"] == "draining"
                except httpx.TransportError as exc:
                    # the listening socket closes once the drain is over, just before the exit
                    transport_errors.append((time.monotonic(), repr(exc)))
                    time.sleep(0.1)
                    continue
                refused[r.status_code] += 1
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "server_shutting_down"
                assert r.json()["error"]["type"] == "service_unavailable"
                time.sleep(0.2)
        assert refused[503] >= 1, refused
        print(f"during the drain: {dict(refused)} answers, then {len(transport_errors)} refused connections")

        # every in-flight request finished in full, before the server stopped listening
        last_done = 0.0
        for f in futures[:4]:
            out, done_at = f.result(timeout=10)
            assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 96
            last_done = max(last_done, done_at)
        for f in futures[4:]:
            chunks, done_at = f.result(timeout=10)
            assert chunks[-2].choices[0].finish_reason == "length"  # then the usage chunk
            assert chunks[-1].usage.completion_tokens == 96
            last_done = max(last_done, done_at)
        # (1 s of slack: a client thread may note its answer a moment after it arrived)
        assert all(t >= last_done - 1.0 for t, _ in transport_errors), (last_done, transport_errors)
        # a clean exit: uvicorn re-raises the SIGTERM it handled once it is done, so the exit
        # status is that of the signal (-15) after a complete application shutdown
        assert srv.proc.wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in srv.logs()
        pool.shutdown()
    finally:
        srv.stop()


# ---- disconnect storm --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def storm_server():
    srv = ServerProcess(*MODEL_ARGS, "--max-batch-size", "16")
    yield srv
    srv.stop()


async def _connect_and_leave(url: str, model: str, i: int) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"storm {i}"}],
        "max_tokens": 256,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    return  # leave after the first chunk: the connection is closed unread


async def _wait_and_give_up(url: str, model: str, i: int) -> None:
    """A non-streamed request whose client stops waiting (read timeout) and closes."""
    body = {"model": model, "messages": [{"role": "user", "content": f"impatient {i}"}], "max_tokens": 256, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60, read=1.0)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=body)


def test_disconnect_storm_frees_every_slot(storm_server):
    url = storm_server.url
    model = model_info(url)["id"]

    async def storm():
        await asyncio.gather(
            *(_connect_and_leave(url, model, i) for i in range(50)),
            *(_wait_and_give_up(url, model, i) for i in range(10)),
        )

    asyncio.run(storm())
    # 50 x 256 tokens would keep the server busy for minutes; the slots free at once instead
    start = time.monotonic()
    stats = wait_idle(url, timeout=15)
    assert stats["running_requests"] == 0 and stats["queue_depth"] == 0
    freed_in = time.monotonic() - start
    assert freed_in < 15
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
    m = wait_for(
        lambda: (
            lambda m: (
                m if sample(m, "dserve_request_failure_total", endpoint="/v1/chat/completions", status="499") == 60 else None
            )
        )(scrape(url)),
        10,
        what="60 requests counted as 499 (client gone)",
    )
    assert sum(v for (name, _), v in m.items() if name == "dserve_request_failure_total") == 60  # no 500 among them
    assert sample(m, "dserve_active_requests") == 0 and sample(m, "dserve_queue_size") == 0
    assert sample(m, "dserve_requests_in_flight") == 0
    # a client going away is not a server error: no traceback in the log
    assert "Exception in ASGI application" not in storm_server.logs()
    assert "never retrieved" not in storm_server.logs()
