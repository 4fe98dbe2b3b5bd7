"""Soak: a two-worker front under mixed load for a long time, with one worker killed and one
SIGSTOPped mid-run (slow suite; `docs/reliability.md` has the figures of a run).

    DSERVE_SOAK_SECONDS=1200 DSERVE_SOAK_CONCURRENCY=64 python -m pytest -m slow tests/reliability/test_soak.py

Clients loop until the time is up, each request one of: chat, completion, streamed chat, a
streamed chat cancelled after its first chunk, an async job (submit and poll), an oversized
body, malformed JSON; over several algorithms. Checked:

- every request ends with a response (a 200 or an OpenAI error object) within the request
  timeout plus the front's grace, whatever the workers do; cancellations are the only
  requests without an answer, by choice;
- `/metrics`: over the second half of the run (after the faults, between two quiet moments),
  each worker's request counters per endpoint and status equal what the clients saw from it
  (`x-dserve-worker`), the 413s being the front's own;
- memory: each worker's resident set size at the end is within 15 % (+64 MiB) of what it was
  at the start of the second half (after warm-up).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import time

import httpx
import pytest

from reliability.helpers import MODEL_ARGS, ServerProcess, scrape, wait_for

SECONDS = float(os.environ.get("DSERVE_SOAK_SECONDS", "1200"))
CONCURRENCY = int(os.environ.get("DSERVE_SOAK_CONCURRENCY", "64"))
REQUEST_TIMEOUT = 20.0
FRONT_GRACE = 5.0  # the front's upstream read timeout is --request-timeout + this
SLACK = 20.0  # a busy 2-core machine
MAX_BODY = 64 * 1024
ALGORITHMS = [
    {},  # the model's default (llada/reference)
    {"engine": "fastdllm", "generation_algorithm": "dual_cache"},
    {"engine": "fastdllm", "generation_algorithm": "basic", "remasking": "random"},
    {"engine": "dinfer", "generation_algorithm": "dinfer_blockwise"},
]
# the status a worker's /metrics records for a stream ended by an error event with this code
ERROR_EVENT_STATUS = {"timeout": 504, "out_of_memory": 503, "scheduler_failed": 503, "worker_failed": 502}
KINDS = ["chat", "completion", "stream", "cancel", "job", "oversized", "malformed"]
WEIGHTS = [30, 15, 25, 8, 8, 7, 7]


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Tally:
    """What the clients saw: per (worker, endpoint, status) for answers a worker gave, plus the
    front's own answers and every request's kind, status and time."""

    def __init__(self):
        self.by_worker: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.front_only: collections.Counter[tuple[str, str]] = collections.Counter()
        self.outcomes: collections.Counter[tuple[str, int]] = collections.Counter()
        self.slowest = 0.0
        self.problems: list[str] = []
        self.total = 0

    def record(self, kind: str, endpoint: str, status: int, worker: str | None, elapsed: float, failed_stream: int | None = None):
        self.total += 1
        self.slowest = max(self.slowest, elapsed)
        final = failed_stream or status
        self.outcomes[(kind, final)] += 1
        if worker is not None:
            self.by_worker[(worker, endpoint, str(final))] += 1
        else:
            self.front_only[(endpoint, str(status))] += 1
        if elapsed > REQUEST_TIMEOUT + FRONT_GRACE + SLACK:
            self.problems.append(f"{kind} took {elapsed:.1f} s")


def _check_error(body: bytes, status: int, tally: Tally, kind: str) -> None:
    try:
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"}
    except Exception:
        tally.problems.append(f"{kind}: {status} without an OpenAI error body: {body[:200]!r}")


async def _one(client: httpx.AsyncClient, model: str, rng: random.Random, tally: Tally) -> None:
    kind = rng.choices(KINDS, WEIGHTS)[0]
    alg = rng.choice(ALGORITHMS)
    n = rng.choice([4, 8, 16])
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": f"soak {rng.random()}"}],
        "max_tokens": n,
        "block_length": 4,
        **alg,
    }
    start = time.monotonic()
    if kind in ("stream", "cancel"):
        body = {**chat, "stream": True}
        if kind == "cancel":
            body.update(
                max_tokens=256, block_length=256, steps=256, ignore_eos=True, engine="llada", generation_algorithm="reference"
            )
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            worker = r.headers.get("x-dserve-worker")
            if kind == "cancel" and r.status_code == 200:
                async for _ in r.aiter_lines():
                    break  # hang up after the first chunk: the worker records 499
                tally.record(kind, "/v1/chat/completions", 499, worker, time.monotonic() - start)
                return
            raw = await r.aread()
        failed = None
        if r.status_code == 200:
            events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
            if not events or events[-1] != "[DONE]":
                tally.problems.append(f"stream without [DONE]: {raw[-200:]!r}")
            errors = [json.loads(e)["error"] for e in events[:-1] if e.startswith('{"error"')]
            if errors:
                failed = ERROR_EVENT_STATUS.get(errors[0]["code"], 500)
        else:
            _check_error(raw, r.status_code, tally, kind)
        tally.record(kind, "/v1/chat/completions", r.status_code, worker, time.monotonic() - start, failed)
        return
    if kind == "job":
        r = await client.post("/v1/generate", json={"prompt": f"job {rng.random()}", "gen_length": n, **alg})
        tally.record(kind, "/v1/generate", r.status_code, r.headers.get("x-dserve-worker"), time.monotonic() - start)
        if r.status_code != 200:
            _check_error(r.content, r.status_code, tally, kind)
            return
        (job,) = r.json()["request_ids"]
        while True:
            start = time.monotonic()
            res = await client.get(f"/v1/result/{job}")
            tally.record(
                "poll", "/v1/result/{request_id}", res.status_code, res.headers.get("x-dserve-worker"), time.monotonic() - start
            )
            if res.status_code != 200 or res.json()["status"] != "running":
                return
            await asyncio.sleep(0.2)
    if kind == "oversized":
        r = await client.post("/v1/chat/completions", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"})
        endpoint = "/v1/chat/completions"
    elif kind == "malformed":
        r = await client.post(
            "/v1/chat/completions",
            content=b'{"model": "' + model.encode() + b'", "messages": [',
            headers={"content-type": "application/json"},
        )
        endpoint = "/v1/chat/completions"
    elif kind == "completion":
        r = await client.post(
            "/v1/completions", json={"model": model, "prompt": f"soak {rng.random()}", "max_tokens": n, "block_length": 4, **alg}
        )
        endpoint = "/v1/completions"
    else:
        r = await client.post("/v1/chat/completions", json=chat)
        endpoint = "/v1/chat/completions"
    if r.status_code != 200:
        _check_error(r.content, r.status_code, tally, kind)
    if kind == "oversized" and r.status_code != 413:
        tally.problems.append(f"oversized body answered {r.status_code}")
    if kind == "malformed" and r.status_code != 400:
        tally.problems.append(f"malformed body answered {r.status_code}")
    tally.record(kind, endpoint, r.status_code, r.headers.get("x-dserve-worker"), time.monotonic() - start)


async def _load(url: str, model: str, seconds: float, tally: Tally, seed: int) -> None:
    timeout = httpx.Timeout(REQUEST_TIMEOUT + FRONT_GRACE + SLACK * 2)
    limits = httpx.Limits(max_connections=CONCURRENCY * 2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        deadline = time.monotonic() + seconds

        async def loop(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.monotonic() < deadline:
                try:
                    await _one(client, model, rng, tally)
                except httpx.HTTPError as exc:
                    tally.problems.append(f"no answer: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(loop(i) for i in range(CONCURRENCY)))


def _workers(url: str) -> list[dict]:
    return httpx.get(url + "/worker-status", timeout=30).json()["workers"]


def _all_healthy(url: str) -> bool:
    ws = _workers(url)
    return len(ws) == 2 and all(w["healthy"] for w in ws)


def _request_counts(url: str) -> dict[tuple[str, str, str], float]:
    """Per (worker, endpoint, status) from the front's /metrics: successes under "200"."""
    out: dict[tuple[str, str, str], float] = {}
    for (name, labels), value in scrape(url).items():
        labels = dict(labels)
        if name == "dserve_request_success_total":
            out[(labels["worker"], labels["endpoint"], "200")] = value
        elif name == "dserve_request_failure_total":
            out[(labels["worker"], labels["endpoint"], labels["status"])] = value
    return out


@pytest.mark.slow
@pytest.mark.timeout(int(SECONDS) + 900)  # the run itself, start-up, quiet points and the checks
def test_soak_two_workers_with_faults():
    srv = ServerProcess(
        *MODEL_ARGS,
        "--gpus",
        "2",
        "--device",
        "cpu",
        "--worker-start-interval",
        "0",
        "--shutdown-grace",
        "10",
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--max-body-bytes",
        str(MAX_BODY),
        "--max-batch-size",
        "16",
        "--max-queue-size",
        "64",
        "--block-length",
        "4",
        "--result-ttl",
        "60",
        ready_timeout=300,
    )
    try:
        url = srv.url
        wait_for(lambda: _all_healthy(url), 300, 0.5, "both workers healthy")
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        first, second = Tally(), Tally()

        # first half: load, with worker 0 killed at a quarter and worker 1 stopped for 10 s at a third
        async def first_half():
            load = asyncio.ensure_future(_load(url, model, SECONDS / 2, first, 1))
            await asyncio.sleep(SECONDS / 4)
            os.kill(_workers(url)[0]["pid"], signal.SIGKILL)
            await asyncio.sleep(SECONDS / 12)
            stopped = _workers(url)[1]["pid"]
            os.kill(stopped, signal.SIGSTOP)
            await asyncio.sleep(10)
            os.kill(stopped, signal.SIGCONT)
            await load

        asyncio.run(first_half())
        wait_for(lambda: _all_healthy(url), 300, 0.5, "both workers healthy after the faults")
        ws = _workers(url)
        assert ws[0]["restarts"] >= 1
        wait_for(
            lambda: all(httpx.get(w["url"] + "/batch/stats", timeout=30).json()["running_requests"] == 0 for w in _workers(url)),
            120,
            0.5,
            "idle workers",
        )
        time.sleep(1)  # let the last cancelled streams' 499s land
        before = _request_counts(url)
        rss_start = {w["id"]: _rss_bytes(w["pid"]) for w in _workers(url)}

        asyncio.run(_load(url, model, SECONDS / 2, second, 2))
        wait_for(
            lambda: all(httpx.get(w["url"] + "/batch/stats", timeout=30).json()["running_requests"] == 0 for w in _workers(url)),
            120,
            0.5,
            "idle workers",
        )
        time.sleep(1)
        after = _request_counts(url)
        ws = _workers(url)
        rss_end = {w["id"]: _rss_bytes(w["pid"]) for w in ws}

        report = {
            "seconds": SECONDS,
            "concurrency": CONCURRENCY,
            "requests": first.total + second.total,
            "outcomes": {f"{k}:{s}": v for (k, s), v in sorted((first.outcomes + second.outcomes).items())},
            "slowest_s": round(max(first.slowest, second.slowest), 2),
            "restarts": [w["restarts"] for w in ws],
            "rss_mib_start_end": {i: (rss_start[i] >> 20, rss_end[i] >> 20) for i in rss_start},
        }
        print("SOAK", json.dumps(report))
        problems = first.problems + second.problems
        assert not problems, problems[:20]
        assert first.outcomes and second.outcomes
        # /metrics equals what the clients saw from each worker over the second half
        seen = {k: v for k, v in second.by_worker.items() if v}
        counted = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
        # the front's own statistics calls (/v1/engine/stats, from /worker-status) are no client's
        counted = {k: v for k, v in counted.items() if v and k[1] != "/v1/engine/stats"}
        assert counted == seen, {
            "metrics_only": {k: v for k, v in counted.items() if seen.get(k) != v},
            "client_only": {k: v for k, v in seen.items() if counted.get(k) != v},
        }
        assert all(s == "413" for (_, s) in second.front_only), second.front_only
        for i, start in rss_start.items():
            assert rss_end[i] <= start * 1.15 + (64 << 20), report["rss_mib_start_end"]
    finally:
        srv.stop(timeout=60)
