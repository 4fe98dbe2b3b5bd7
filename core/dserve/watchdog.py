"""The watchdog: holds request deadlines and reports the scheduler's health from its own thread.

The scheduler thread enforces `--request-timeout` itself, between steps. A step that never
returns (a hung kernel, a runner stuck in a lock) or a dead scheduler thread would then leave
every request waiting forever. The watchdog checks once a second, on a thread of its own:

- a request past its deadline by more than `DEADLINE_GRACE_S` is answered 504 `timeout` now;
  its batch slot is freed whenever the scheduler loop runs again;
- the scheduler thread died: every request in flight is answered 503 `scheduler_failed`
  (and `submit` refuses new ones the same way);
- `problem()` says why the scheduler is unhealthy (dead, or no loop iteration for
  `stall_after` seconds while work is pending) for `/health`, which then answers 503 with
  status `stalled`; the multi-GPU front restarts such a worker.

`stall_after` comes from `DSERVE_SCHEDULER_STALL_TIMEOUT` (seconds, default 120): longer than
any single step should take, including a first step that compiles kernels.
"""

from __future__ import annotations

import os
import threading
import time

import structlog

from dserve.errors import RequestTimeout, Unavailable
from dserve.scheduler import Scheduler

log = structlog.get_logger("dserve.watchdog")

CHECK_INTERVAL_S = 1.0
DEADLINE_GRACE_S = 2.0  # the scheduler thread normally answers at the deadline; this is the backstop
STALL_TIMEOUT_ENV = "DSERVE_SCHEDULER_STALL_TIMEOUT"
DEFAULT_STALL_AFTER_S = 120.0


def stall_timeout_from_env() -> float:
    try:
        return float(os.environ.get(STALL_TIMEOUT_ENV, DEFAULT_STALL_AFTER_S))
    except ValueError:
        return DEFAULT_STALL_AFTER_S


class Watchdog:
    def __init__(self, scheduler: Scheduler, *, stall_after: float | None = None):
        self.scheduler = scheduler
        self.stall_after = stall_timeout_from_env() if stall_after is None else stall_after
        self.timeouts_enforced = 0  # requests the watchdog answered in the scheduler's place
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dserve-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def problem(self) -> str | None:
        """Why the scheduler is unhealthy, or None."""
        s = self.scheduler
        if not s.alive:
            return "the scheduler thread has died"
        stalled = s.stalled_for()
        if stalled > self.stall_after:
            return (
                f"the scheduler has not completed a loop iteration for {stalled:.0f} s with "
                f"{s.in_flight()} request(s) pending (limit {self.stall_after:g} s)"
            )
        return None

    def _run(self) -> None:
        while not self._stop.wait(CHECK_INTERVAL_S):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watchdog must outlive whatever it watches
                log.exception("watchdog check failed")

    def check(self) -> None:
        s = self.scheduler
        dead = not s.alive
        now = time.monotonic()
        for handle in s.handles_in_flight():
            if handle.done:
                continue
            if dead:
                s.abandon(
                    handle, Unavailable("the scheduler thread has stopped; the server must be restarted", code="scheduler_failed")
                )
            elif handle.deadline is not None and now > handle.deadline + DEADLINE_GRACE_S:
                self.timeouts_enforced += 1
                log.warning(
                    "request past its deadline: answered by the watchdog",
                    seq_id=handle.seq.seq_id,
                    stalled_s=round(s.stalled_for(), 1),
                )
                s.abandon(handle, RequestTimeout("the request exceeded the server's request timeout", code="timeout"))
