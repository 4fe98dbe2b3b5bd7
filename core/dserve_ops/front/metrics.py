"""`/metrics` on the front: every reachable worker's Prometheus metrics, each sample labelled
`worker="<index>"`, merged family by family, plus the front's own series:

==========================================  ==============================================
``dserve_front_workers``                    workers configured
``dserve_front_workers_healthy``            workers the router may pick
``dserve_front_worker_up{worker}``          1 when healthy
``dserve_front_requests_routed_total``      requests routed to each worker
``dserve_front_requests_in_flight``         requests being proxied to each worker
``dserve_front_requests_failed_total``      proxied requests that failed on the connection
``dserve_front_worker_restarts_total``      restarts of each worker slot
==========================================  ==============================================

A worker that does not answer within the scrape is left out of that scrape (its series
reappear once it answers); `dserve_front_worker_up` says which.
"""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from dserve_ops.front.workers import WorkerPool

SCRAPE_TIMEOUT_S = 5.0


async def scrape(pool: WorkerPool, client: httpx.AsyncClient, headers: dict[str, str]) -> dict[int, str]:
    async def one(w):
        try:
            r = await client.get(w.url + "/metrics", headers=headers, timeout=SCRAPE_TIMEOUT_S)
            return w.index, (r.text if r.status_code == 200 else None)
        except httpx.HTTPError:
            return w.index, None

    results = await asyncio.gather(*(one(w) for w in pool.workers if w.alive))
    return {i: t for i, t in results if t}


def render(pool: WorkerPool, texts: dict[int, str]) -> bytes:
    families: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                merged.samples.append(s._replace(labels={"worker": str(index), **s.labels}))

    own: list[Metric] = []
    g = GaugeMetricFamily("dserve_front_workers", "Workers configured behind the front")
    g.add_metric([], len(pool.workers))
    own.append(g)
    g = GaugeMetricFamily("dserve_front_workers_healthy", "Workers the front routes to")
    g.add_metric([], len(pool.healthy()))
    own.append(g)
    up = GaugeMetricFamily("dserve_front_worker_up", "1 when the worker is healthy", labels=["worker"])
    routed = CounterMetricFamily("dserve_front_requests_routed", "Requests routed to the worker", labels=["worker"])
    inflight = GaugeMetricFamily("dserve_front_requests_in_flight", "Requests being proxied to the worker", labels=["worker"])
    failed = CounterMetricFamily(
        "dserve_front_requests_failed", "Proxied requests that failed on the connection", labels=["worker"]
    )
    restarts = CounterMetricFamily("dserve_front_worker_restarts", "Restarts of the worker", labels=["worker"])
    for w in pool.workers:
        label = [str(w.index)]
        up.add_metric(label, 1 if w.status == "healthy" else 0)
        routed.add_metric(label, w.routed)
        inflight.add_metric(label, w.in_flight)
        failed.add_metric(label, w.failed)
        restarts.add_metric(label, w.restarts)
    own += [up, routed, inflight, failed, restarts]

    class _Collector:
        def collect(self):
            yield from families.values()
            yield from own

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)
