"""Async job ids on one server: random, bound to the API key that submitted them, and looked
up in constant time however many results are stored (issue #21, findings 3 and 6)."""

from __future__ import annotations

import time

import httpx
import pytest

from dserve.routes.jobs import JobStore
from dserve_ops.front.jobs import JobMap
from reliability.helpers import MODEL_ARGS, ServerProcess, wait_for

A = {"authorization": "Bearer key-a"}
B = {"authorization": "Bearer key-b"}


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(*MODEL_ARGS, "--api-key", "key-a", "--api-key", "key-b", "--block-length", "4")
    yield srv
    srv.stop()


def test_job_ids_are_random_and_readable_only_by_their_key(server):
    r = httpx.post(
        server.url + "/v1/generate_batch", json={"prompts": ["hi", "yo", "hey"], "gen_length": 4}, headers=A, timeout=120
    )
    assert r.status_code == 200, r.text
    ids = r.json()["request_ids"]
    assert len(set(ids)) == 3
    assert all(isinstance(i, str) and len(i) >= 16 for i in ids), ids  # >= 96 random bits, not a counter
    for job in ids:
        done = wait_for(
            lambda job=job: (
                (x := httpx.get(f"{server.url}/v1/result/{job}", headers=A, timeout=10).json())["status"] != "running" and x
            ),
            60,
            0.05,
            "job done",
        )
        assert done["status"] == "finished" and done["request_id"] == job
        stolen = httpx.get(f"{server.url}/v1/result/{job}", headers=B, timeout=10)
        assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "request_not_found", stolen.text
        assert "text" not in stolen.json()
    # guessing: a counter's neighbours do not exist
    for guess in ("0", "1", "2", "3"):
        assert httpx.get(f"{server.url}/v1/result/{guess}", headers=A, timeout=10).status_code == 404


def _lookup_seconds(store_get, ids, rounds: int) -> float:
    start = time.perf_counter()
    for i in range(rounds):
        store_get(ids[i % len(ids)])
    return time.perf_counter() - start


@pytest.mark.parametrize("kind", ["server", "front"])
def test_job_lookup_cost_does_not_grow_with_stored_results(kind):
    """Lookups with 20 000 finished (unexpired) results cost about what they cost with 100;
    a scan of every stored job on each lookup made them 200 times slower. The ratio, not a
    duration, is asserted, so the machine's pace does not matter."""

    def filled(n: int):
        if kind == "server":
            store = JobStore(ttl=3600)
            ids = []
            for _ in range(n):
                job = store.new(None)
                store.finish(job)
                ids.append(job.job_id)
            return (lambda i: store.get(i, None)), ids
        jobs = JobMap(ttl=3600)
        ids = [jobs.add(0, 1, str(k), None) for k in range(n)]
        for i in ids:
            jobs.finished(i)
        return (lambda i: jobs.get(i, None)), ids

    small_get, small_ids = filled(100)
    big_get, big_ids = filled(20_000)
    rounds = 2000
    small = min(_lookup_seconds(small_get, small_ids, rounds) for _ in range(3))
    big = min(_lookup_seconds(big_get, big_ids, rounds) for _ in range(3))
    assert big < 10 * small, (small, big)


def test_finished_jobs_expire_oldest_first():
    store = JobStore(ttl=0.2)
    old = store.new(None)
    store.finish(old)
    running = store.new(None)
    time.sleep(0.3)
    fresh = store.new(None)
    store.finish(fresh)
    assert store.get(old.job_id, None) is None  # expired
    assert store.get(fresh.job_id, None) is fresh
    assert store.get(running.job_id, None) is running  # never expires while running
