"""Worker processes: start (staggered), health-check, restart with backoff, stop.

Each worker is a `dserve serve` subprocess on 127.0.0.1 (see `command.py`), in its own
session so that a terminal's Ctrl-C reaches only the front, which then sends each worker
exactly one SIGTERM (a second signal would make a worker skip its drain). On Linux a
worker also gets SIGTERM if the front dies without cleaning up (PR_SET_PDEATHSIG).

States (`Worker.status`):

=============  ==========================================================================
``starting``   spawned, not ready yet (the model is loading)
``healthy``    its readiness check answers 200: the router may pick it
``unhealthy``  its process exited, 3 health checks in a row failed, it answered not ready
               after having been ready, its model failed to load, its scheduler stalled
               (killed and restarted), or a proxied request failed on the connection; a
               passing health check makes it healthy again
``stopped``    the front is shutting down and the process has exited
=============  ==========================================================================

Health checks: every second, `GET /health` on each worker (readiness: 200 or 503, like
`/health/ready`, and its queue depth and running count in the same answer, which the router
uses). Batch statistics (`/v1/engine/stats`) are fetched only when someone asks the front
for them (`/stats`, `/worker-status`, ...), at most every 0.5 s.

Restart policy: a worker that exits with status 1 before it was ever ready cannot serve (its
model, engine or algorithm failed to load; `dserve serve` said why on its output): it is not
restarted, and when every worker has failed that way the front exits with status 1 too.
Any other worker whose process exited (while the front is not shutting down) is
started again after a backoff of 1 s, doubling per consecutive failure up to 30 s; the
backoff resets once a worker has been healthy for 60 s. A worker that was healthy and then
failed every health check for `HUNG_AFTER_S` seconds while its process is alive is killed
(SIGKILL) and restarted the same way, as is one whose `/health` says `stalled` (its
scheduler thread died or hangs, see `dserve.watchdog`). `restarts` counts restarts of that
worker slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from dserve.settings import Settings
from dserve_ops.front.command import worker_command

log = structlog.get_logger("dserve.front")

CHECK_INTERVAL_S = 1.0
CHECK_TIMEOUT_S = 5.0
FAILURES_BEFORE_UNHEALTHY = 3
HUNG_AFTER_S = 60.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
EXIT_CANNOT_SERVE = 1  # dserve.server.EXIT_CANNOT_SERVE: a worker's startup failed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Worker:
    index: int
    device: str  # what the worker runs on, as the operator names it: "cuda:3" (physical id) or "cpu"
    cuda_visible: str | None  # its CUDA_VISIBLE_DEVICES, or None on the CPU
    port: int = 0
    proc: subprocess.Popen | None = None
    status: str = "starting"
    restarts: int = 0
    epoch: int = 0  # +1 per (re)start: async job ids from an earlier epoch are gone
    in_flight: int = 0  # requests the front is proxying to it now
    routed: int = 0  # requests routed to it since the front started
    failed: int = 0  # proxied requests that failed on the connection
    queue_depth: int = 0  # from its last /health: requests waiting for a batch slot
    running: int = 0  # ... and sequences in its running batches
    load_error: str | None = None  # its model failed to load (not restarted)
    ever_ready: bool = False  # it answered ready at least once (since the front started)
    gave_up: bool = False  # it exited at startup: it cannot serve, and is not restarted
    stats: dict[str, Any] = field(default_factory=dict)  # its last /v1/engine/stats
    stats_at: float = 0.0
    started_at: float = 0.0
    healthy_since: float | None = None
    last_ok: float = 0.0
    check_failures: int = 0
    last_exit_code: int | None = None
    restart_at: float | None = None  # when a dead worker is started again
    backoff: float = BACKOFF_START_S
    log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def load(self) -> int:
        """Recent load as the worker last reported it: queued + running sequences."""
        return self.queue_depth + self.running

    @property
    def state(self) -> str:
        """busy | idle for a healthy worker, else its status (starting, unhealthy, stopped)."""
        if self.status != "healthy":
            return self.status
        return "busy" if (self.in_flight or self.load) else "idle"


class WorkerPool:
    def __init__(self, settings: Settings, workers: list[Worker]):
        self.settings = settings
        self.workers = workers
        self.shutting_down = False
        self.started = time.monotonic()
        # the pool's own calls (/v1/engine/stats) pass the workers' API-key check
        auth = {"authorization": f"Bearer {settings.api_key[0]}"} if settings.api_key else {}
        self._client = httpx.AsyncClient(timeout=CHECK_TIMEOUT_S, headers=auth)
        self._monitor: asyncio.Task | None = None
        self.on_all_failed: Callable[[], None] | None = None  # every worker failed at startup
        self._starter: asyncio.Task | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers in the background, `worker_start_interval` seconds apart, and
        the health monitor; returns at once so that the front answers probes meanwhile."""
        self._starter = asyncio.ensure_future(self._start_staggered())
        self._monitor = asyncio.ensure_future(self._monitor_loop())

    async def _start_staggered(self) -> None:
        for i, w in enumerate(self.workers):
            if self.shutting_down:
                return
            if i:
                await asyncio.sleep(self.settings.worker_start_interval)
            self._spawn(w)

    def _spawn(self, w: Worker) -> None:
        if self.settings.worker_base_port:
            w.port = self.settings.worker_base_port + w.index
        else:
            w.port = free_port()
        argv, env = worker_command(
            self.settings,
            port=w.port,
            device="cpu" if w.cuda_visible is None else "cuda:0",
            cuda_visible=w.cuda_visible,
            index=w.index,
            workers=len(self.workers),
        )
        out = None
        if self.settings.worker_log_dir:
            Path(self.settings.worker_log_dir).mkdir(parents=True, exist_ok=True)
            if w.log_file is None:
                w.log_file = open(Path(self.settings.worker_log_dir) / f"worker-{w.index}.log", "ab", buffering=0)  # noqa: SIM115
            out = w.log_file
        w.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        w.status = "starting"
        w.epoch += 1
        w.started_at = time.monotonic()
        w.healthy_since = None
        w.check_failures = 0
        w.restart_at = None
        w.stats = {}
        w.queue_depth = w.running = 0
        w.load_error = None
        log.info("worker started", worker=w.index, device=w.device, port=w.port, pid=w.proc.pid, restarts=w.restarts)

    async def shutdown(self, grace: float) -> None:
        """SIGTERM every worker (each drains its in-flight requests), wait up to `grace`
        seconds for them to exit, then SIGKILL what is left."""
        self.shutting_down = True
        if self._starter is not None:
            self._starter.cancel()
        for w in self.workers:
            if w.alive and w.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(w.alive for w in self.workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self.kill()
        for w in self.workers:
            w.status = "stopped"
        if self._monitor is not None:
            self._monitor.cancel()
        await self._client.aclose()

    def kill(self) -> None:
        self.shutting_down = True
        for w in self.workers:
            if w.alive and w.proc is not None:
                log.warning("killing worker", worker=w.index, pid=w.pid)
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
            if w.proc is not None:
                with contextlib.suppress(Exception):
                    w.proc.wait(5)
            if w.log_file is not None:
                w.log_file.close()
                w.log_file = None

    # ---- health ------------------------------------------------------------------------

    def mark_failed(self, w: Worker, reason: str) -> None:
        """A proxied request failed on the connection: stop routing to it until a health
        check passes again (or the process is found dead and restarted)."""
        w.failed += 1
        if w.status == "healthy":
            log.warning("worker marked unhealthy", worker=w.index, reason=reason)
            w.status = "unhealthy"
            w.healthy_since = None

    async def _monitor_loop(self) -> None:
        await asyncio.gather(*(self._watch(w) for w in self.workers))

    async def _watch(self, w: Worker) -> None:
        """One loop per worker, so a worker that is slow to answer delays only its own checks."""
        while not self.shutting_down:
            try:
                await self._check(w)
            except Exception:  # noqa: BLE001 - the monitor must survive anything
                log.exception("worker monitor error", worker=w.index)
            await asyncio.sleep(CHECK_INTERVAL_S)

    async def _check(self, w: Worker) -> None:
        now = time.monotonic()
        if w.proc is None:  # not launched yet (staggered start)
            return
        if not w.alive:
            if self.shutting_down:
                w.status = "stopped"
                return
            if w.gave_up:
                return
            if not w.ever_ready and w.proc.returncode == EXIT_CANNOT_SERVE:
                self._give_up(w)
                return
            if w.restart_at is None:
                w.last_exit_code = w.proc.returncode if w.proc is not None else None
                w.status = "unhealthy"
                w.healthy_since = None
                w.restart_at = now + w.backoff
                log.error("worker exited", worker=w.index, pid=w.pid, exit_code=w.last_exit_code, restart_in_s=w.backoff)
                w.backoff = min(w.backoff * 2, BACKOFF_MAX_S)
            elif now >= w.restart_at:
                w.restarts += 1
                self._spawn(w)
            return
        # one request per check: /health is /health/ready (200 or 503) plus the load
        try:
            r = await self._client.get(w.url + "/health")
            body = r.json()
            ready = r.status_code == 200
        except (httpx.HTTPError, ValueError):
            ready, body = None, {}  # no answer
        if ready is not None:
            w.queue_depth = int(body.get("queue_depth") or 0)
            w.running = int(body.get("running") or 0)
        if ready:
            w.check_failures = 0
            w.last_ok = now
            w.ever_ready = True
            if w.status != "healthy":
                log.info("worker healthy", worker=w.index, port=w.port, pid=w.pid, after_s=round(now - w.started_at, 1))
                w.status = "healthy"
                w.healthy_since = now
            if now - (w.healthy_since or now) > STABLE_AFTER_S:
                w.backoff = BACKOFF_START_S
            return
        if ready is False:  # answered 503: loading, draining, its model failed to load, or stalled
            w.check_failures = 0
            w.last_ok = now
            if body.get("status") == "stalled":  # its scheduler thread died or hangs: restart it
                log.error("worker's scheduler stalled: killing it", worker=w.index, pid=w.pid, error=body.get("error"))
                w.status = "unhealthy"
                w.healthy_since = None
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                return
            if body.get("status") == "error" and w.load_error is None:
                w.load_error = str(body.get("error") or "model load failed")
                log.error("worker failed to load its model", worker=w.index, error=w.load_error)
            if w.status == "healthy" or (w.load_error and w.status == "starting"):
                if w.status == "healthy":
                    log.warning("worker not ready", worker=w.index, status=body.get("status"))
                w.status = "unhealthy"
                w.healthy_since = None
            return
        w.check_failures += 1
        if w.status == "healthy" and w.check_failures >= FAILURES_BEFORE_UNHEALTHY:
            log.warning("worker not answering health checks", worker=w.index, failures=w.check_failures)
            w.status = "unhealthy"
            w.healthy_since = None
        if w.status == "unhealthy" and w.last_ok and now - w.last_ok > HUNG_AFTER_S:
            log.error("worker hung: killing it", worker=w.index, pid=w.pid, silent_s=round(now - w.last_ok))
            w.last_ok = 0.0
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()

    def _give_up(self, w: Worker) -> None:
        w.gave_up = True
        w.last_exit_code = w.proc.returncode if w.proc is not None else None
        w.status = "unhealthy"
        w.load_error = (
            w.load_error or f"exited with status {w.last_exit_code} before it was ready: it cannot serve (see its output)"
        )
        log.error("worker cannot serve: not restarting it", worker=w.index, exit_code=w.last_exit_code)
        if all(x.gave_up for x in self.workers) and self.on_all_failed is not None:
            self.on_all_failed()

    # ---- views -------------------------------------------------------------------------

    async def refresh_stats(self, max_age: float = 0.5) -> None:
        """Fetch /v1/engine/stats from every healthy worker whose copy is older than
        `max_age` (on demand, for /stats and friends, rather than on every health check)."""

        async def one(w: Worker) -> None:
            try:
                r = await self._client.get(w.url + "/v1/engine/stats")
                if r.status_code == 200:
                    w.stats, w.stats_at = r.json(), time.monotonic()
                    w.queue_depth = int(w.stats.get("queue_depth") or 0)
                    w.running = int(w.stats.get("running_requests") or 0)
            except (httpx.HTTPError, ValueError):
                pass

        now = time.monotonic()
        await asyncio.gather(*(one(w) for w in self.healthy() if now - w.stats_at > max_age))

    def healthy(self) -> list[Worker]:
        return [w for w in self.workers if w.status == "healthy"]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the front's thread that forked it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


def plan_workers(settings: Settings) -> list[Worker]:
    """One Worker per requested GPU; CPU workers when --device cpu or no CUDA device exists.

    GPU ids count among the devices visible to the front: under CUDA_VISIBLE_DEVICES=4,5,6,7
    (SLURM), --gpus 2 uses physical GPUs 4 and 5.
    """
    ids = list(settings.gpu_ids) if settings.gpu_ids else list(range(settings.gpus or 1))
    if settings.gpus and settings.gpu_ids and settings.gpus != len(settings.gpu_ids):
        raise ValueError(f"--gpus {settings.gpus} disagrees with --gpu-ids {','.join(map(str, ids))}")
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise ValueError(f"--gpu-ids must be distinct non-negative ids, got {ids}")
    device = settings.device
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device} cannot be combined with --gpus/--gpu-ids (pick GPUs with --gpu-ids)")
    if device == "cpu":
        return [Worker(index=i, device="cpu", cuda_visible=None) for i in range(len(ids))]
    count = _cuda_device_count()
    if count == 0:
        if device == "cuda":
            raise ValueError("--device cuda, but no CUDA device is visible")
        log.warning("no CUDA device: workers run on the CPU", workers=len(ids))
        return [Worker(index=i, device="cpu", cuda_visible=None) for i in range(len(ids))]
    too_big = [i for i in ids if i >= count]
    if too_big:
        raise ValueError(f"GPU id(s) {too_big} out of range: {count} CUDA device(s) visible")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    workers = []
    for index, gpu in enumerate(ids):
        physical = visible[gpu] if visible and gpu < len(visible) else str(gpu)
        workers.append(Worker(index=index, device=f"cuda:{physical}", cuda_visible=physical))
    return workers


def _cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0
