"""Async job ids across workers.

`/v1/generate` and `/v1/generate_batch` run on one worker, which hands out its own job ids.
The front hands out ids of its own, random like a single server's (`secrets.token_urlsafe`),
and remembers, per id, the worker, the worker's epoch (its start count), the worker's own id
and the API key that submitted it, so `/v1/result/{id}` goes to the worker that has the job,
and only for the same key (another key gets 404, as for an unknown id). A worker restarted
since (another epoch) lost its results: such an id answers 404, as an expired one does.

Memory is bounded: an entry is forgotten `ttl` seconds after its result was read as
finished or failed (the worker forgets the result then too), and beyond `max_entries` the
oldest entries go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from dserve.routes.jobs import new_job_id


@dataclass
class JobRef:
    worker: int
    epoch: int
    local_id: str
    owner: str | None  # the submitting API key's id; None without --api-key
    finished_at: float | None = None


class JobMap:
    def __init__(self, ttl: float, max_entries: int = 200_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._refs: OrderedDict[str, JobRef] = OrderedDict()
        self._done: deque[tuple[float, str]] = deque()  # (finished_at, id), oldest first

    def add(self, worker: int, epoch: int, local_id: str, owner: str | None) -> str:
        job_id = new_job_id()
        self._refs[job_id] = JobRef(worker, epoch, str(local_id), owner)
        while len(self._refs) > self.max_entries:
            self._refs.popitem(last=False)
        return job_id

    def get(self, job_id: str, owner: str | None) -> JobRef | None:
        self._expire()
        ref = self._refs.get(job_id)
        return ref if ref is not None and ref.owner == owner else None

    def finished(self, job_id: str) -> None:
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
