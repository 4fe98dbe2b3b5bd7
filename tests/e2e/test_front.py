"""The multi-GPU front (`dserve serve --gpus 2`) on the CPU: two real worker processes behind
a real front, driven with the official openai client. No mocks: the failure test kills a
worker with SIGKILL."""

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from e2e.conftest import MODEL_ARGS
from e2e.server import ServerProcess

PROMPTS = ["Reverse the word: planet", "Sort the numbers: 5 3 9 1", "Uppercase: hello world", "Count the letter a in: banana"]
FRONT_ARGS = ["--gpus", "2", "--device", "cpu", "--worker-start-interval", "0", "--shutdown-grace", "30"]


def _workers(url: str) -> list[dict]:
    return httpx.get(url + "/worker-status", timeout=10).json()["workers"]


def _wait_for(predicate, what: str, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _all_healthy(url: str, n: int = 2) -> bool:
    ws = _workers(url)
    return len(ws) == n and all(w["healthy"] for w in ws)


def test_worker_command_carries_the_serve_settings(monkeypatch):
    from dserve.settings import Settings
    from dserve_ops.front.command import worker_command

    monkeypatch.setenv("DSERVE_GPUS", "2")  # a worker inheriting this would start a front itself
    monkeypatch.setenv("DSERVE_MAX_QUEUE_SIZE", "7")
    settings = Settings(max_batch_size=8, api_key=["secret"], rate_limit_requests=60, metrics=False, log_json=True)
    argv, env = worker_command(settings, port=9001, device="cuda:0", cuda_visible="5", index=3)
    assert argv[argv.index("--port") + 1] == "9001" and argv[argv.index("--device") + 1] == "cuda:0"
    assert argv[argv.index("--max-batch-size") + 1] == "8" and argv[argv.index("--max-queue-size") + 1] == "7"
    assert "--no-metrics" in argv and "--log-json" in argv
    assert "--gpus" not in argv and "--rate-limit-requests" not in argv  # the front's own
    assert "secret" not in " ".join(argv) and json.loads(env["DSERVE_API_KEY"]) == ["secret"]  # not visible in ps
    assert "DSERVE_GPUS" not in env and "DSERVE_MAX_QUEUE_SIZE" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "5"


def test_worker_command_carries_boolean_and_speed_flags():
    from dserve.settings import Settings
    from dserve_ops.front.command import worker_command

    settings = Settings(enable_apd=True, apd_threshold=0.5, compile=True, flash_attention=False, gpu_memory_utilization=0.5)
    argv, _ = worker_command(settings, port=9001, device="cuda:0", cuda_visible="0", index=0)
    assert "--enable-apd" in argv and "--compile" in argv and "--no-flash-attention" in argv
    assert argv[argv.index("--apd-threshold") + 1] == "0.5"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.5"


def test_cpu_workers_split_the_cores(monkeypatch):
    import os

    from dserve.settings import Settings
    from dserve_ops.front.command import worker_command

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    _, env = worker_command(Settings(), port=9001, device="cpu", cuda_visible=None, index=0, workers=4)
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit setting wins
    _, env = worker_command(Settings(), port=9001, device="cpu", cuda_visible=None, index=0, workers=4)
    assert env["OMP_NUM_THREADS"] == "3"


@pytest.fixture(scope="module")
def front():
    srv = ServerProcess(*MODEL_ARGS, *FRONT_ARGS)
    _wait_for(lambda: _all_healthy(srv.url), "both workers healthy")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fclient(front) -> openai.OpenAI:
    return openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def fmodel(fclient) -> str:
    return fclient.models.list().data[0].id


def _chat(client, model, prompt, **kw):
    kw = {"max_tokens": 24, "temperature": 0, **kw}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kw)


def test_chat_and_stream_through_the_front(front, fclient, fmodel):
    reply = _chat(fclient, fmodel, PROMPTS[0])
    assert reply.choices[0].finish_reason in ("stop", "length")
    chunks = _chat(fclient, fmodel, PROMPTS[0], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    r = httpx.post(front.url + "/v1/completions", json={"model": fmodel, "prompt": "abc", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and r.headers["x-dserve-worker"] in ("0", "1")
    # errors come back from the worker as they are: OpenAI objects with their status
    bad = httpx.post(front.url + "/v1/chat/completions", json={"messages": []}, timeout=30)
    assert bad.status_code == 400 and "error" in bad.json()
    assert httpx.get(front.url + "/generation/algorithms").json()["algorithms"]


def test_concurrent_requests_spread_over_both_workers(front, fclient, fmodel):
    before = httpx.get(front.url + "/stats").json()["requests_routed"]
    with cf.ThreadPoolExecutor(8) as pool:
        texts = list(
            pool.map(lambda p: _chat(fclient, fmodel, p, extra_body={"steps": 24}).choices[0].message.content, PROMPTS * 2)
        )
    assert texts[:4] == texts[4:]  # same prompt, same answer, whichever worker ran it
    after = httpx.get(front.url + "/stats").json()["requests_routed"]
    assert all(after[k] - before[k] > 0 for k in ("0", "1")), (before, after)


def test_stats_and_worker_status(front):
    stats = httpx.get(front.url + "/stats").json()
    for key in (
        "healthy_workers",
        "total_workers",
        "requests_routed",
        "total_requests",
        "avg_batch_size",
        "batch_size_histogram",
        "system_status",
        "requests_in_flight",
        "queue_depth",
        "running_requests",
    ):
        assert key in stats, key
    assert stats["healthy_workers"] == stats["total_workers"] == 2
    assert stats["system_status"] in ("normal", "overloaded")
    ws = httpx.get(front.url + "/worker-status").json()
    assert set(ws["worker_status"].values()) <= {"busy", "idle"}
    for i, w in enumerate(ws["workers"]):
        assert w["id"] == i and w["device"] == "cpu" and w["status"] in ("busy", "idle")
        assert isinstance(w["pid"], int) and isinstance(w["port"], int) and w["restarts"] == 0
        assert "avg_batch_size" in w["batch_stats"] and "batch_size_histogram" in w["batch_stats"]
    ready = httpx.get(front.url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["healthy_workers"] == 2
    metrics = httpx.get(front.url + "/metrics").text
    assert 'dserve_front_worker_up{worker="1"} 1.0' in metrics and 'worker="0"' in metrics


def test_async_jobs_round_trip_through_the_front(front, fclient, fmodel):
    submitted = [
        httpx.post(front.url + "/v1/generate_batch", json={"prompts": PROMPTS[:2], "gen_length": 16}).json() for _ in range(2)
    ]
    ids = [i for s in submitted for i in s["request_ids"]]
    assert len(set(ids)) == 4

    def result(i):
        return httpx.get(f"{front.url}/v1/result/{i}").json()

    results = {i: _wait_for(lambda i=i: (r := result(i))["status"] != "running" and r, f"job {i}", 30, 0.05) for i in ids}
    assert all(r["status"] == "finished" and r["request_id"] == i for i, r in results.items())
    expected = _chat(fclient, fmodel, PROMPTS[0], max_tokens=16).choices[0].message.content
    assert results[ids[0]]["text"] == results[ids[2]]["text"] == expected
    missing = httpx.get(f"{front.url}/v1/result/987654")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"


def test_dserve_status_json(front):
    out = subprocess.run(
        [sys.executable, "-m", "dserve", "status", "--url", front.url, "--json"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["stats"]["total_workers"] == 2 and len(data["workers"]["workers"]) == 2
    table = subprocess.run(
        [sys.executable, "-m", "dserve", "status", "--url", front.url], capture_output=True, text=True, timeout=60
    )
    assert table.returncode == 0 and "healthy 2/2" in table.stdout


def _long(model, n=400):
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "max_tokens": n,
        "steps": n,
        "block_length": n,
        "ignore_eos": True,
    }


def _running_on(worker: dict) -> bool:
    """The worker itself (not just the front) has the request in its batch."""
    return httpx.get(worker["url"] + "/batch/stats", timeout=10).json().get("running_requests") == 1


def _running_total(url: str) -> int:
    return sum(httpx.get(w["url"] + "/batch/stats").json()["running_requests"] for w in _workers(url))


def _committed_total(url: str) -> int:
    return sum(httpx.get(w["url"] + "/batch/stats").json()["total_tokens_committed"] for w in _workers(url))


def test_client_disconnect_reaches_the_worker(front, fmodel):
    _wait_for(lambda: _running_total(front.url) == 0, "idle workers", 30, 0.05)
    before = _committed_total(front.url)
    with httpx.stream("POST", front.url + "/v1/chat/completions", json={**_long(fmodel), "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the role chunk: generation has started; now hang up
    _wait_for(lambda: _running_total(front.url) == 0, "the slot freed after a stream disconnect", 30, 0.05)
    middle = _committed_total(front.url)
    assert middle - before < 400  # released before its canvas was complete
    with pytest.raises(httpx.ReadTimeout):  # non-streaming: the client gives up while the worker generates
        httpx.post(front.url + "/v1/chat/completions", json=_long(fmodel), timeout=httpx.Timeout(10, read=0.3))
    _wait_for(lambda: _running_total(front.url) == 0, "the slot freed after a disconnect", 30, 0.05)
    assert _committed_total(front.url) - middle < 400
    assert httpx.get(front.url + "/stats").json()["requests_in_flight"] == 0


def test_killed_worker_fails_its_request_is_restarted_and_others_keep_serving(front, fclient, fmodel):
    result = {}
    t = threading.Thread(
        target=lambda: result.setdefault("r", httpx.post(front.url + "/v1/chat/completions", json=_long(fmodel), timeout=120))
    )
    t.start()
    victim = _wait_for(
        lambda: next((w for w in _workers(front.url) if w["in_flight"] == 1), None), "the long request in flight", 30, 0.02
    )
    os.kill(victim["pid"], signal.SIGKILL)
    t.join(60)
    failed = result["r"]
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "worker_failed"
    assert _workers(front.url)[victim["id"]]["status"] in ("unhealthy", "starting")
    for p in PROMPTS[:3]:  # served by the other worker meanwhile
        assert _chat(fclient, fmodel, p).choices[0].finish_reason in ("stop", "length")

    def restarted():
        w = _workers(front.url)[victim["id"]]
        return w if w["healthy"] and w["restarts"] == 1 else None

    back = _wait_for(restarted, "the worker restarted and healthy", 60, 0.2)
    assert back["pid"] != victim["pid"]
    assert httpx.get(front.url + "/stats").json()["healthy_workers"] == 2


def test_sigterm_drains_in_flight_then_stops_workers():
    srv = ServerProcess(*MODEL_ARGS, "--gpus", "1", "--device", "cpu", "--shutdown-grace", "60")
    try:
        model = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
        (worker,) = _workers(srv.url)
        result = {}
        t = threading.Thread(
            target=lambda: result.setdefault(
                "r", httpx.post(srv.url + "/v1/chat/completions", json=_long(model, 64), timeout=120)
            )
        )
        t.start()
        _wait_for(lambda: _running_on(worker), "the long request running", 30, 0.02)
        srv.terminate()
        time.sleep(0.3)
        assert httpx.get(srv.url + "/health/ready").status_code == 503
        late = httpx.post(
            srv.url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=30
        )
        assert late.status_code == 503 and late.json()["error"]["code"] == "server_shutting_down"
        t.join(120)
        assert result["r"].status_code == 200 and result["r"].json()["choices"][0]["finish_reason"] == "length"
        assert srv.proc.wait(60) in (0, -15)
        with pytest.raises(ProcessLookupError):
            os.kill(worker["pid"], 0)
    finally:
        srv.stop()
