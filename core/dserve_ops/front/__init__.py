"""The multi-GPU front: `dserve serve --gpus N` / `--gpu-ids 0,2,4,6`.

One `dserve serve` worker process per GPU on 127.0.0.1, and this small Starlette app in
front of them that routes each request to the least-loaded healthy worker, restarts
workers that die, and reports them (`/stats`, `/worker-status`). See docs/scale-out.md.

==============  ==========================================================================
``command``     a worker's command line and environment
``workers``     worker processes: staggered start, health checks, restarts, stop
``router``      the routing policy (least-loaded healthy worker)
``proxy``       forwarding a request and relaying its answer (SSE chunk by chunk)
``jobs``        async job ids across workers
``stats``       `/stats`, `/worker-status` and aggregated batch statistics
``metrics``     `/metrics`: the workers' metrics labelled by worker, plus the front's own
``app``         the Starlette app and its routes
``server``      uvicorn with a draining SIGTERM; `run_front`
``status``      `dserve status`: the front's state as a table or JSON
==============  ==========================================================================
"""

from __future__ import annotations


def run_front(settings) -> int:
    from dserve_ops.front.server import run_front as _run

    return _run(settings)
