"""Continuous batching through the HTTP server: invariance, streaming while batched,
cancellation, backpressure, timeouts, draining, and the async job API."""

import concurrent.futures as cf
import threading
import time

import httpx
import pytest

from e2e.conftest import MODEL_ARGS
from e2e.server import ServerProcess

PROMPTS = [
    "Reverse the word: planet",
    "Sort the numbers: 5 3 9 1",
    "Count the letter a in: banana",
    "Uppercase: hello world",
    "Reverse the word: dog",
    "Sort the numbers: 12 4 8",
    "Repeat the letter z 5 times",
    "Count the letter s in: mississippi",
]


def _mixed_requests():
    """16 requests of different prompt lengths, max_tokens, steps and block lengths."""
    reqs = []
    for i in range(16):
        block = [8, 16, 32][i % 3]
        max_tokens = [8, 24, 40, 64][i % 4]
        blocks = -(-max_tokens // block)
        reqs.append(
            {
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "extra_body": {"block_length": block, "steps": blocks * block // (1 + i % 2)},
            }
        )
    return reqs


def _text(client, model_id, req):
    return client.chat.completions.create(model=model_id, **req).choices[0].message.content


def test_outputs_are_batch_invariant(client, model_id, server):
    reqs = _mixed_requests()
    alone = [_text(client, model_id, r) for r in reqs]
    with cf.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: _text(client, model_id, r), reqs))
    assert together == alone
    hist = httpx.get(server.url + "/batch/stats").json()["batch_size_histogram"]
    assert max(int(k) for k in hist) > 1, hist  # they really shared steps


def test_seeded_sampling_repeats_inside_a_batch(client, model_id):
    req = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 24, "temperature": 1.0, "seed": 99}
    alone = _text(client, model_id, req)
    others = [dict(r, temperature=0.9, seed=i) for i, r in enumerate(_mixed_requests()[:7])]
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_text, client, model_id, r) for r in others]
        mine = pool.submit(_text, client, model_id, req)
        cf.wait(futures)
    assert mine.result() == alone


def test_streams_while_batched_equal_the_plain_text(client, model_id):
    reqs = _mixed_requests()[:8]
    plain = [_text(client, model_id, r) for r in reqs]

    def stream(req):
        chunks = client.chat.completions.create(model=model_id, stream=True, **req)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with cf.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(stream, reqs)) == plain


def _long_request(model_id):
    return {
        "model": model_id,
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "max_tokens": 400,
        "steps": 400,
        "block_length": 400,
        "ignore_eos": True,
    }


# Polling deadlines are generous on purpose: a poll returns as soon as its condition holds, so
# a long deadline costs an idle machine nothing and keeps a busy CI machine from failing.
PACE_TIMEOUT = 120.0


def _wait_until(condition, timeout=PACE_TIMEOUT, interval=0.05):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


def _wait_running(url, want, timeout=PACE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = httpx.get(url + "/batch/stats").json()
        if stats["running_requests"] == want:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"running_requests never reached {want}: {stats}")


def _committed(url) -> int:
    return httpx.get(url + "/batch/stats").json()["total_tokens_committed"]


def test_stream_disconnect_frees_the_slot(server, model_id):
    _wait_running(server.url, 0)
    before = _committed(server.url)
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json={**_long_request(model_id), "stream": True}, timeout=60
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # keep the iterator: dropping it closes the connection early
        next(lines)
        _wait_running(server.url, 1)
    _wait_running(server.url, 0)
    assert _committed(server.url) - before < 400  # released before the canvas was complete


def test_non_streaming_disconnect_frees_the_slot(server, model_id):
    _wait_running(server.url, 0)
    before = _committed(server.url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=_long_request(model_id), timeout=httpx.Timeout(10, read=0.3))
    _wait_running(server.url, 0)
    assert _committed(server.url) - before < 400


def test_engine_stats(server):
    stats = httpx.get(server.url + "/v1/engine/stats").json()
    for key in (
        "queue_depth",
        "running_requests",
        "avg_batch_size",
        "batch_size_histogram",
        "steps_per_second",
        "tokens_per_step",
    ):
        assert key in stats
    assert stats["default_engine"] == "llada" and stats["total_steps"] > 0


def test_async_job_api(server, model_id, client):
    r = httpx.post(server.url + "/v1/generate", json={"prompt": PROMPTS[0], "gen_length": 16})
    assert r.status_code == 200 and r.json()["status"] == "submitted"
    (job,) = r.json()["request_ids"]
    deadline = time.monotonic() + PACE_TIMEOUT
    while (res := httpx.get(f"{server.url}/v1/result/{job}").json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert res["status"] == "finished"
    expected = _text(client, model_id, {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 16})
    assert res["text"] == expected
    batch = httpx.post(server.url + "/v1/generate_batch", json={"prompts": PROMPTS[:3], "gen_length": 8}).json()
    assert len(batch["request_ids"]) == 3 and len(set(batch["request_ids"])) == 3
    missing = httpx.get(f"{server.url}/v1/result/999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"


def test_async_results_expire():
    srv = ServerProcess(*MODEL_ARGS, "--result-ttl", "0.5")
    try:
        (job,) = httpx.post(srv.url + "/v1/generate", json={"prompt": "hi", "gen_length": 8}).json()["request_ids"]
        # poll until the job is no longer running; on a busy machine it may already have expired
        # by the next poll (404), which is what the test wants to see anyway
        _wait_until(lambda: (r := httpx.get(f"{srv.url}/v1/result/{job}")).status_code == 404 or r.json()["status"] != "running")
        time.sleep(0.8)
        assert httpx.get(f"{srv.url}/v1/result/{job}").status_code == 404
    finally:
        srv.stop()


def test_full_queue_is_429_with_retry_after():
    # The running and the queued request are streams the test holds open and then drops, so the
    # test waits on no generation finishing: it is as fast on a busy machine as on an idle one.
    srv = ServerProcess(*MODEL_ARGS, "--max-batch-size", "1", "--max-queue-size", "1")
    try:
        model_id = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
        body = {**_long_request(model_id), "stream": True}
        stop = threading.Event()
        queued = threading.Thread(target=_stream_until, args=(srv.url, body, stop))
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=PACE_TIMEOUT) as running:
            assert running.status_code == 200
            _wait_running(srv.url, 1)
            queued.start()
            _wait_until(lambda: httpx.get(srv.url + "/batch/stats").json()["queue_depth"] >= 1)
            refused = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=PACE_TIMEOUT)
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "queue_full"
            stop.set()
        # the running stream is closed: the queued request starts, sees `stop` and hangs up too
        queued.join(PACE_TIMEOUT)
        _wait_running(srv.url, 0)
        _wait_until(lambda: httpx.get(srv.url + "/batch/stats").json()["queue_depth"] == 0)
        ok = httpx.post(
            srv.url + "/v1/chat/completions",
            json={
                "model": model_id,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
                "steps": 1,
                "block_length": 4,
            },
            timeout=PACE_TIMEOUT,
        )
        assert ok.status_code == 200  # the server still serves once the queue has room again
    finally:
        srv.stop()


def _stream_until(url: str, body: dict, stop: threading.Event) -> None:
    """Stream a request and hang up at the first line read once `stop` is set."""
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=PACE_TIMEOUT) as r:
        for _ in r.iter_lines():
            if stop.is_set():
                return


def test_request_timeout_is_an_openai_error():
    srv = ServerProcess(*MODEL_ARGS, "--request-timeout", "0.3")
    try:
        model_id = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
        r = httpx.post(srv.url + "/v1/chat/completions", json=_long_request(model_id), timeout=60)
        assert r.status_code == 504
        assert r.json()["error"]["type"] == "timeout_error"
        _wait_running(srv.url, 0)
        ok = httpx.post(
            srv.url + "/v1/chat/completions",
            json={
                "model": model_id,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
                "steps": 1,
                "block_length": 4,
            },
            timeout=60,
        )
        assert ok.status_code == 200
    finally:
        srv.stop()


def test_sigterm_drains_in_flight_then_exits():
    # the grace period is far longer than the request needs even on a busy machine: the test
    # checks that the drain waits for it, not how fast the machine is
    srv = ServerProcess(*MODEL_ARGS, "--shutdown-grace", "900")
    model_id = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
    result = {}

    def long_call():
        result["r"] = httpx.post(srv.url + "/v1/chat/completions", json=_long_request(model_id), timeout=900)

    t = threading.Thread(target=long_call)
    t.start()
    _wait_running(srv.url, 1)
    srv.terminate()
    # the signal lands when the busy machine gets to it: wait for the drain to show, not a fixed time
    _wait_until(lambda: httpx.get(srv.url + "/health/ready", timeout=PACE_TIMEOUT).status_code == 503)
    late = httpx.post(
        srv.url + "/v1/chat/completions", json={"model": model_id, "messages": [{"role": "user", "content": "hi"}]}, timeout=30
    )
    assert late.status_code == 503 and late.json()["error"]["code"] == "server_shutting_down"
    t.join(900)
    assert result["r"].status_code == 200 and result["r"].json()["choices"][0]["finish_reason"] in ("stop", "length")
    # uvicorn re-raises the captured SIGTERM once shut down: the conventional "killed by
    # SIGTERM" status, after the drain
    assert srv.proc.wait(30) in (0, -15)
