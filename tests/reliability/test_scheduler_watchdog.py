"""The scheduler thread survives a runner that cannot be built, and a watchdog outside it
answers requests past their deadline and turns /health unhealthy when the scheduler hangs.

Real servers; one runner is broken on purpose (tests/reliability/faults), the others serve.
"""

from __future__ import annotations

import time

import httpx
import pytest

from reliability.helpers import (
    MODEL_ARGS,
    ServerProcess,
    fault_env,
    model_info,
    wait_for,
)

BROKEN = {"engine": "fastdllm", "generation_algorithm": "basic"}
CLIENT_TIMEOUT = 120  # a request that hangs fails the test here instead of hanging the suite


def _chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


@pytest.fixture()
def unbuildable():
    srv = ServerProcess(*MODEL_ARGS, "--block-length", "4", env=fault_env("runner_init_raises:fastdllm/basic"))
    yield srv
    srv.stop()


def test_a_runner_that_fails_to_build_fails_its_requests_and_the_server_keeps_serving(unbuildable):
    url = unbuildable.url
    model = model_info(url)["id"]
    for _ in range(2):  # the second try builds it again, and fails again: no thread died in between
        r = httpx.post(url + "/v1/chat/completions", json=_chat(model, **BROKEN), timeout=CLIENT_TIMEOUT)
        assert r.status_code == 500, r.text
        assert r.json()["error"]["code"] == "engine_error"
        assert "fastdllm/basic" in r.json()["error"]["message"]
    ok = httpx.post(url + "/v1/chat/completions", json=_chat(model), timeout=CLIENT_TIMEOUT)
    assert ok.status_code == 200, ok.text
    health = httpx.get(url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"


@pytest.fixture()
def hanging():
    srv = ServerProcess(
        *MODEL_ARGS,
        "--block-length",
        "4",
        "--request-timeout",
        "3",
        env=fault_env("step_hangs:fastdllm/basic", DSERVE_SCHEDULER_STALL_TIMEOUT="5"),
    )
    yield srv
    srv.stop(timeout=10)


def test_the_watchdog_answers_requests_of_a_hung_scheduler_and_health_turns_unhealthy(hanging):
    url = hanging.url
    model = model_info(url)["id"]
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    start = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", json=_chat(model, **BROKEN), timeout=CLIENT_TIMEOUT)
    elapsed = time.monotonic() - start
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    # --request-timeout 3 + the watchdog's 2 s grace + its 1 s period, with room for a slow machine
    assert elapsed < 3 + 2 + 1 + 10, elapsed

    # a request the hung scheduler never admits times out the same way, streamed or not
    start = time.monotonic()
    with httpx.stream("POST", url + "/v1/chat/completions", json=_chat(model, stream=True), timeout=CLIENT_TIMEOUT) as s:
        text = s.read().decode()
    assert '"code":"timeout"' in text and time.monotonic() - start < 3 + 2 + 1 + 10

    # the loop has not gone round for longer than DSERVE_SCHEDULER_STALL_TIMEOUT with work pending
    health = wait_for(
        lambda: (h := httpx.get(url + "/health", timeout=10)).status_code == 503 and h, timeout=60, what="/health 503"
    )
    body = health.json()
    assert body["status"] == "stalled" and "scheduler" in body["error"], body
    assert httpx.get(url + "/health/ready", timeout=10).status_code == 503
    assert httpx.get(url + "/health/live", timeout=10).status_code == 200  # the process still answers
