"""Routing policy: the least-loaded healthy worker.

Order of preference among healthy workers (lowest first):

1. requests the front is proxying to it right now (`in_flight`, exact and instant);
2. its recent load: queued + running sequences from its last stats poll (about a second
   old; this is what sees async jobs, which leave no request in flight at the front);
3. requests routed to it so far (spreads a quiet stream of requests evenly);
4. its index.

Each worker runs its own continuous batching, so the front does not form batches: a
request joins a worker's running batch at its next step. Sending a request to the worker
with the fewest in flight keeps the batches even.
"""

from __future__ import annotations

from dserve_ops.front.workers import Worker, WorkerPool


class Router:
    def __init__(self, pool: WorkerPool):
        self.pool = pool

    def pick(self, exclude: frozenset[int] = frozenset()) -> Worker | None:
        candidates = [w for w in self.pool.healthy() if w.index not in exclude]
        if not candidates:
            return None
        return min(candidates, key=lambda w: (w.in_flight, w.load, w.routed, w.index))

    def begin(self, w: Worker) -> None:
        """A request to `w` starts: it counts as in flight until `end`."""
        w.in_flight += 1
        w.routed += 1

    def end(self, w: Worker) -> None:
        w.in_flight -= 1

    def in_flight(self) -> int:
        return sum(w.in_flight for w in self.pool.workers)
