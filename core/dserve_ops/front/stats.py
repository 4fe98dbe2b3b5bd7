"""The front's `/stats`, `/worker-status` and aggregated `/batch/stats` bodies.

Batch statistics come from each healthy worker's `/v1/engine/stats`, fetched when one of
these is asked for (at most every 0.5 s); queue depth and running counts from the
once-a-second health checks, or fresher. Aggregation: counters are summed, histograms merged bucket by bucket, and
`avg_batch_size` is the step-weighted mean (sum of batch sizes over all workers' steps,
divided by the total steps), which is what one server with all those steps would report.

`system_status`:

- ``normal``: at least one healthy worker has an empty queue (a new request would join a
  running batch at its next step);
- ``overloaded``: every healthy worker has requests waiting in its queue (its batch is
  full): requests wait, and 429s follow when queues fill;
- ``unavailable``: no healthy worker;
- ``draining``: the front got SIGTERM.
"""

from __future__ import annotations

import time
from typing import Any

from dserve_ops.front.workers import Worker, WorkerPool

COUNTERS = (
    "total_steps",
    "total_tokens_committed",
    "requests_finished",
    "requests_shed_out_of_memory",
    "idle_cache_releases_out_of_memory",
    "max_queue_size",
    "max_batch_size",
)


def aggregate_batch_stats(workers: list[Worker]) -> dict[str, Any]:
    stats = [w.stats for w in workers if w.stats]
    out: dict[str, Any] = {k: sum(int(s.get(k) or 0) for s in stats) for k in COUNTERS}
    out["queue_depth"] = sum(w.queue_depth for w in workers)
    out["running_requests"] = sum(w.running for w in workers)
    hist: dict[int, int] = {}
    weighted = 0.0
    for s in stats:
        weighted += float(s.get("avg_batch_size") or 0.0) * int(s.get("total_steps") or 0)
        for k, v in (s.get("batch_size_histogram") or {}).items():
            hist[int(k)] = hist.get(int(k), 0) + int(v)
    steps = out["total_steps"]
    out["avg_batch_size"] = weighted / steps if steps else 0.0
    out["batch_size_histogram"] = {str(k): hist[k] for k in sorted(hist)}
    out["steps_per_second"] = sum(float(s.get("steps_per_second") or 0.0) for s in stats)
    out["tokens_per_step"] = out["total_tokens_committed"] / steps if steps else 0.0
    out["workers_reporting"] = len(stats)
    return out


def system_status(pool: WorkerPool, draining: bool) -> str:
    if draining:
        return "draining"
    healthy = pool.healthy()
    if not healthy:
        return "unavailable"
    return "overloaded" if all(w.queue_depth > 0 for w in healthy) else "normal"


def front_stats(pool: WorkerPool, draining: bool, jobs_tracked: int) -> dict[str, Any]:
    healthy = pool.healthy()
    body: dict[str, Any] = {
        "system_status": system_status(pool, draining),
        "healthy_workers": len(healthy),
        "total_workers": len(pool.workers),
        "routing_policy": "least_loaded",
        "total_requests": sum(w.routed for w in pool.workers),
        "requests_routed": {str(w.index): w.routed for w in pool.workers},
        "requests_in_flight": sum(w.in_flight for w in pool.workers),
        "requests_failed": sum(w.failed for w in pool.workers),
        "worker_restarts": sum(w.restarts for w in pool.workers),
        "async_jobs_tracked": jobs_tracked,
        "uptime_s": round(time.monotonic() - pool.started, 3),
    }
    body.update(aggregate_batch_stats(healthy))
    return body


def worker_view(w: Worker, now: float) -> dict[str, Any]:
    s = w.stats
    return {
        "id": w.index,
        "device": w.device,
        "port": w.port,
        "url": w.url,
        "pid": w.pid,
        "status": w.state,
        "healthy": w.status == "healthy",
        "restarts": w.restarts,
        "last_exit_code": w.last_exit_code,
        "error": w.load_error,
        "in_flight": w.in_flight,
        "requests_routed": w.routed,
        "requests_failed": w.failed,
        "uptime_s": round(now - w.started_at, 3) if w.alive else None,
        "queue_depth": w.queue_depth,
        "running_requests": w.running,
        "model": s.get("model"),
        "batch_stats": {
            k: s.get(k)
            for k in (
                "total_steps",
                "total_tokens_committed",
                "requests_finished",
                "avg_batch_size",
                "batch_size_histogram",
                "steps_per_second",
                "tokens_per_step",
                "max_batch_size",
                "batches",
            )
            if k in s
        },
        "stats_age_s": round(now - w.stats_at, 3) if w.stats_at else None,
    }


def worker_status(pool: WorkerPool, draining: bool) -> dict[str, Any]:
    now = time.monotonic()
    workers = [worker_view(w, now) for w in pool.workers]
    return {
        "system_status": system_status(pool, draining),
        "healthy_workers": len(pool.healthy()),
        "total_workers": len(pool.workers),
        "worker_status": {str(v["id"]): v["status"] for v in workers},
        "workers": workers,
    }
