"""Async job ids across workers.

`/v1/generate` and `/v1/generate_batch` run on one worker, which numbers its jobs 0, 1, ...
The front hands out its own integer ids (0, 1, ... across all workers, as one server would)
and remembers, per id, the worker, the worker's epoch (its start count) and the worker's own
id, so `/v1/result/{id}` goes to the worker that has the job. A worker restarted since
(another epoch) lost its results: such an id answers 404, as an expired one does.

Memory is bounded: an entry is forgotten `ttl` seconds after its result was read as
finished or failed (the worker forgets the result then too), and beyond `max_entries` the
oldest entries go first.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass
class JobRef:
    worker: int
    epoch: int
    local_id: int
    finished_at: float | None = None


class JobMap:
    def __init__(self, ttl: float, max_entries: int = 200_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._ids = itertools.count()
        self._refs: OrderedDict[int, JobRef] = OrderedDict()
        self._done: deque[tuple[float, int]] = deque()  # (finished_at, id), oldest first

    def add(self, worker: int, epoch: int, local_id: int) -> int:
        job_id = next(self._ids)
        self._refs[job_id] = JobRef(worker, epoch, local_id)
        while len(self._refs) > self.max_entries:
            self._refs.popitem(last=False)
        return job_id

    def get(self, job_id: int) -> JobRef | None:
        self._expire()
        return self._refs.get(job_id)

    def finished(self, job_id: int) -> None:
        ref = self._refs.get(job_id)
        if ref is not None and ref.finished_at is None:
            ref.finished_at = time.monotonic()
            self._done.append((ref.finished_at, job_id))

    def _expire(self) -> None:
        now = time.monotonic()
        while self._done and now - self._done[0][0] > self.ttl:
            self._refs.pop(self._done.popleft()[1], None)

    def __len__(self) -> int:
        return len(self._refs)
