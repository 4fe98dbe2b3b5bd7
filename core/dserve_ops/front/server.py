"""Running the front: uvicorn around the front app, with a draining shutdown.

First SIGTERM / SIGINT: the front stops admitting (new requests get 503
``server_shutting_down``, readiness goes 503), sends SIGTERM to every worker (each drains
its in-flight requests for up to --shutdown-grace seconds, then exits), keeps relaying the
answers still coming back, and exits once every worker has exited and nothing is in flight
(workers still alive after --shutdown-grace + 10 s are killed). A second signal kills the
workers and exits at once.
"""

from __future__ import annotations

import asyncio
import sys
import time

import structlog
import uvicorn

from dserve.settings import Settings
from dserve_ops.front.app import Front, create_front_app
from dserve_ops.front.workers import WorkerPool, plan_workers

log = structlog.get_logger("dserve.front")


class FrontServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, front: Front):
        super().__init__(config)
        self.front = front
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self.front.draining or self._loop is None:
            self.front.pool.kill()
            return super().handle_exit(sig, frame)
        self.front.draining = True
        log.info("front draining", in_flight=self.front.router.in_flight(), grace_s=self.front.settings.shutdown_grace)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit(sig, frame)))

    async def _drain_then_exit(self, sig, frame) -> None:
        await self.front.pool.shutdown(self.front.settings.shutdown_grace + 10)
        deadline = time.monotonic() + 5
        while self.front.router.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the last answers reach their clients
        await asyncio.sleep(0.1)
        log.info("front stopped", restarts=sum(w.restarts for w in self.front.pool.workers))
        super().handle_exit(sig, frame)


def run_front(settings: Settings) -> int:
    try:
        workers = plan_workers(settings)
    except ValueError as exc:
        log.error("cannot start the front", error=str(exc))
        return 2
    pool = WorkerPool(settings, workers)
    app = create_front_app(settings, pool)
    log.info(
        "front starting",
        host=settings.host,
        port=settings.port,
        workers=len(workers),
        devices=[w.device for w in workers],
        start_interval_s=settings.worker_start_interval,
    )
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, timeout_graceful_shutdown=5
    )
    server = FrontServer(config, app.state.front)
    failed = False

    def all_workers_failed() -> None:
        nonlocal failed
        failed = True
        print("dserve: cannot serve: every worker failed at startup (see their output)", file=sys.stderr, flush=True)
        server.should_exit = True

    pool.on_all_failed = all_workers_failed
    asyncio.run(server.serve())
    return 1 if failed else 0
