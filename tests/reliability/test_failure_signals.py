"""How failures are signalled (issue #21, findings 7 and 10): a stream that ends in an error
event counts as a failure in /metrics; 503s tell the client when to retry (Retry-After); a
client that stalls mid-upload is answered 408 and its connection closed."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from reliability.helpers import (
    MODEL_ARGS,
    ServerProcess,
    fault_env,
    model_info,
    sample,
    scrape,
    wait_for,
)

CHAT = "/v1/chat/completions"


def _chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


@pytest.fixture(scope="module")
def slow():
    """Every fastdllm/basic step sleeps 0.5 s; requests time out after 2 s."""
    srv = ServerProcess(
        *MODEL_ARGS,
        "--block-length",
        "4",
        "--request-timeout",
        "2",
        "--body-read-timeout",
        "2",
        "--shutdown-grace",
        "30",
        env=fault_env("step_sleeps:fastdllm/basic", DSERVE_TEST_STEP_SLEEP="0.5"),
    )
    yield srv
    srv.stop()


def test_a_stream_that_ends_in_an_error_counts_as_a_failure(slow):
    url = slow.url
    model = model_info(url)["id"]
    before = scrape(url)
    long = _chat(
        model,
        engine="fastdllm",
        generation_algorithm="basic",
        max_tokens=64,
        steps=64,
        block_length=64,
        ignore_eos=True,
        stream=True,
    )
    with httpx.stream("POST", url + CHAT, json=long, timeout=120) as r:
        assert r.status_code == 200
        text = r.read().decode()
    assert '"code":"timeout"' in text, text[-500:]
    after = scrape(url)
    label = {"endpoint": CHAT}
    assert sample(after, "dserve_request_success_total", **label) == sample(before, "dserve_request_success_total", **label)
    failed = sample(after, "dserve_request_failure_total", status="504", **label) - sample(
        before, "dserve_request_failure_total", status="504", **label
    )
    assert failed == 1


def test_a_stalled_upload_gets_408_and_its_connection_closed(slow):
    host, port = "127.0.0.1", slow.port
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(
            f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"model": "x", "mess'
        )
        start = time.monotonic()
        data = b""
        while True:  # read until the server closes the connection
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - start
    head = data.split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 408"), data[:300]
    assert b'"code":"request_timeout"' in data
    assert elapsed < 2 + 20, elapsed  # --body-read-timeout 2, on however slow a machine
    # the server keeps serving
    assert httpx.get(slow.url + "/health", timeout=10).status_code == 200


def test_a_slow_but_complete_upload_is_not_cut(slow):
    model = model_info(slow.url)["id"]
    body = httpx.Request("POST", "/", json=_chat(model)).content
    with socket.create_connection(("127.0.0.1", slow.port), timeout=60) as s:
        s.sendall(
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        s.sendall(body[:10])
        time.sleep(0.5)
        s.sendall(body[10:])
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:300]


def test_draining_503_carries_retry_after(slow):
    url = slow.url
    model = model_info(url)["id"]
    long = _chat(model, engine="fastdllm", generation_algorithm="basic", max_tokens=8, steps=8, block_length=8)
    with httpx.Client(timeout=120) as c:
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(c.post, url + CHAT, json=long)
            wait_for(
                lambda: httpx.get(url + "/batch/stats", timeout=10).json()["running_requests"] == 1, 60, 0.05, "a request running"
            )
            slow.terminate()
            # a request posted before the server has handled SIGTERM is admitted and runs its
            # (slowed) course: post only once readiness says the drain has begun
            wait_for(lambda: httpx.get(url + "/health/ready", timeout=10).status_code == 503, 30, 0.05, "draining")
            r = wait_for(
                lambda: (x := httpx.post(url + CHAT, json=_chat(model), timeout=30)).status_code == 503 and x,
                30,
                0.05,
                "503 while draining",
            )
            assert r.json()["error"]["code"] == "server_shutting_down"
            assert int(r.headers["retry-after"]) > 0
            inflight.result()


def test_model_loading_503_carries_retry_after():
    srv = ServerProcess(*MODEL_ARGS, env=fault_env("load_sleeps:30"), wait_for="/health/live")
    try:
        r = httpx.post(srv.url + CHAT, json=_chat("anything"), timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading", r.text
        assert int(r.headers["retry-after"]) > 0
    finally:
        srv.stop(timeout=10)
