"""What a hostile client and a flaky worker did to the two-worker front (issue #21): stats
behind an API key, malformed job ids, redirects that leaked a worker's port, job results
readable by another key, a SIGSTOPped worker holding clients past the request timeout, and a
worker whose scheduler stalled. Real front, real workers, on the CPU."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time

import httpx
import pytest

from reliability.helpers import MODEL_ARGS, ServerProcess, fault_env, wait_for

FRONT = ["--gpus", "2", "--device", "cpu", "--worker-start-interval", "0", "--shutdown-grace", "5"]
KEY_A, KEY_B = "key-a", "key-b"
A = {"authorization": f"Bearer {KEY_A}"}
B = {"authorization": f"Bearer {KEY_B}"}
REQUEST_TIMEOUT = 8.0
CLIENT_TIMEOUT = 120


def _workers(url: str) -> list[dict]:
    return httpx.get(url + "/worker-status", headers=A, timeout=10).json()["workers"]


def _all_healthy(url: str) -> bool:
    ws = _workers(url)
    return len(ws) == 2 and all(w["healthy"] for w in ws)


@pytest.fixture(scope="module")
def front():
    srv = ServerProcess(
        *MODEL_ARGS,
        *FRONT,
        "--api-key",
        KEY_A,
        "--api-key",
        KEY_B,
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--block-length",
        "4",
        ready_timeout=240,
    )
    wait_for(lambda: _all_healthy(srv.url), 240, 0.2, "both workers healthy")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def model(front) -> str:
    return httpx.get(front.url + "/v1/models", headers=A, timeout=10).json()["data"][0]["id"]


def _chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


def test_front_statistics_reach_the_workers_behind_an_api_key(front, model):
    for _ in range(2):
        assert (
            httpx.post(front.url + "/v1/chat/completions", json=_chat(model), headers=A, timeout=CLIENT_TIMEOUT).status_code
            == 200
        )
    # the front refreshes workers' statistics at most every 0.5 s: poll until they show the work
    stats = wait_for(
        lambda: (x := httpx.get(front.url + "/stats", headers=A, timeout=10).json())["requests_finished"] >= 2 and x,
        30,
        0.2,
        "statistics of the two requests",
    )
    assert stats["workers_reporting"] == 2, stats
    assert stats["total_steps"] > 0
    assert all(w["batch_stats"] for w in _workers(front.url))


@pytest.mark.parametrize("raw", ["%C2%B2", "9" * 5000, "%00", "x" * 300])
def test_malformed_job_ids_answer_404(front, raw):
    r = httpx.get(f"{front.url}/v1/result/{raw}", headers=A, timeout=10)
    assert r.status_code == 404, (r.status_code, r.text[:200])
    assert r.json()["error"]["code"] == "request_not_found"
    assert len(r.text) < 1000  # the id is not echoed back whole


def test_a_trailing_slash_redirect_points_at_the_front(front):
    r = httpx.get(front.url + "/v1/models/", headers=A, timeout=10)
    if r.is_redirect:
        assert r.headers["location"].startswith(front.url + "/"), r.headers["location"]
    worker_ports = {str(w["port"]) for w in _workers(front.url)}
    assert not any(p in r.headers.get("location", "") for p in worker_ports)
    followed = httpx.get(front.url + "/v1/models/", headers=A, timeout=10, follow_redirects=True)
    assert followed.status_code == 200 and followed.json()["data"]


def test_job_results_are_bound_to_the_key_that_submitted_them(front):
    r = httpx.post(
        front.url + "/v1/generate_batch", json={"prompts": ["hi", "yo"], "gen_length": 4}, headers=A, timeout=CLIENT_TIMEOUT
    )
    assert r.status_code == 200, r.text
    ids = r.json()["request_ids"]
    assert all(isinstance(i, str) and len(i) >= 16 and not i.isdigit() for i in ids), ids
    for job in ids:
        done = wait_for(
            lambda job=job: (
                (x := httpx.get(f"{front.url}/v1/result/{job}", headers=A, timeout=10).json())["status"] != "running" and x
            ),
            60,
            0.1,
            "job done",
        )
        assert done["status"] == "finished" and done["request_id"] == job
        other = httpx.get(f"{front.url}/v1/result/{job}", headers=B, timeout=10)
        assert other.status_code == 404 and other.json()["error"]["code"] == "request_not_found"
        assert "text" not in other.json()


def test_a_stopped_worker_does_not_hold_clients_past_the_request_timeout(front, model):
    wait_for(lambda: _all_healthy(front.url), 120, 0.2, "both workers healthy")
    stopped = _workers(front.url)[0]
    os.kill(stopped["pid"], signal.SIGSTOP)
    try:

        def one(_):
            start = time.monotonic()
            r = httpx.post(front.url + "/v1/chat/completions", json=_chat(model), headers=A, timeout=CLIENT_TIMEOUT)
            return r.status_code, r.headers.get("x-dserve-worker"), time.monotonic() - start

        with cf.ThreadPoolExecutor(2) as pool:  # least-loaded routing sends one to each worker
            results = list(pool.map(one, range(2)))
    finally:
        os.kill(stopped["pid"], signal.SIGCONT)
    for status, _worker, elapsed in results:
        # the front's upstream read timeout: --request-timeout + 5 s, with room for a slow machine
        assert elapsed < REQUEST_TIMEOUT + 5 + 15, results
        assert status in (200, 504), results
    assert 504 in [s for s, _, _ in results], results  # one did reach the stopped worker
    wait_for(lambda: _all_healthy(front.url), 120, 0.2, "the resumed worker healthy again")


def test_the_front_restarts_a_worker_whose_scheduler_stalls():
    srv = ServerProcess(
        *MODEL_ARGS,
        *FRONT,
        "--request-timeout",
        "3",
        "--block-length",
        "4",
        ready_timeout=240,
        env=fault_env("step_hangs:fastdllm/basic", DSERVE_SCHEDULER_STALL_TIMEOUT="10"),  # after the 504 went out
    )
    try:
        url = srv.url
        wait_for(lambda: _all_healthy(url), 240, 0.2, "both workers healthy")
        model = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        r = httpx.post(
            url + "/v1/chat/completions",
            json=_chat(model, engine="fastdllm", generation_algorithm="basic"),
            timeout=CLIENT_TIMEOUT,
        )
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
        hung = int(r.headers["x-dserve-worker"])
        restarted = wait_for(lambda: _workers(url)[hung]["restarts"] >= 1, 120, 0.5, "the stalled worker restarted")
        assert restarted
        wait_for(lambda: _all_healthy(url), 240, 0.5, "the restarted worker healthy")
        assert httpx.post(url + "/v1/chat/completions", json=_chat(model), timeout=CLIENT_TIMEOUT).status_code == 200
    finally:
        srv.stop()
