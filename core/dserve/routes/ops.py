"""Operations routes: health probes, engine and batch statistics, the algorithm catalogue."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dserve import __version__


def _service(request: Request):
    return request.app.state.dserve


def scheduler_problem(request: Request) -> str | None:
    """Why the scheduler cannot serve (dead or stalled thread), from the watchdog; else None."""
    watchdog = getattr(request.app.state, "watchdog", None)
    return watchdog.problem() if watchdog is not None else None


async def health(request: Request) -> Response:
    s = _service(request)
    sched = s.scheduler
    status = (
        "ok" if s.ready else ("draining" if sched is not None and sched.draining else ("error" if s.load_error else "loading"))
    )
    problem = scheduler_problem(request) if s.ready else None
    if problem:
        status = "stalled"  # the multi-GPU front restarts a worker that says this
    body = {
        "status": status,
        "version": __version__,
        "model": s.model_id or None,
        "ready": s.ready,
        "queue_depth": sched.queue_depth if sched else 0,
        "running": sched.num_running if sched else 0,
    }
    if s.load_error or problem:
        body["error"] = s.load_error or problem
    if s.model is not None:
        body["device"] = str(s.model.device)
        body["dtype"] = str(s.model.dtype).removeprefix("torch.")
    return JSONResponse(body, status_code=200 if s.ready and not problem else 503)


async def version(request: Request) -> Response:
    """The server's version (vLLM's `/version` shape)."""
    return JSONResponse({"version": __version__})


async def live(request: Request) -> Response:
    """Liveness: the process answers (a failed model load is not fixed by a restart loop)."""
    return JSONResponse({"status": "alive"})


async def ready(request: Request) -> Response:
    """Readiness: the model is loaded, the scheduler runs and the server is not draining."""
    s = _service(request)
    ok = s.ready and not scheduler_problem(request)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _stats(request: Request) -> dict:
    s = _service(request)
    sched = s.scheduler
    if sched is None:
        return {"ready": False}
    stats = sched.stats.snapshot()
    stats.update(
        {
            "queue_depth": sched.queue_depth,
            "max_queue_size": sched.max_queue_size,
            "running_requests": sched.num_running,
            "max_batch_size": s.settings.max_batch_size,
            "draining": sched.draining,
            "batches": {f"{engine}/{algorithm}": len(runner.sequences) for (engine, algorithm), runner in sched.runners.items()},
        }
    )
    return stats


async def batch_stats(request: Request) -> Response:
    return JSONResponse(_stats(request))


async def engine_stats(request: Request) -> Response:
    s = _service(request)
    body = _stats(request)
    if s.model is not None:
        choice = s.default_choice()
        body.update(
            {
                "model": s.model_id,
                "family": s.model.info.family,
                "default_engine": choice.engine.name,
                "default_algorithm": choice.algorithm.name,
                "device": str(s.model.device),
                "gpu_memory_used_bytes": _gpu_memory(),
            }
        )
    return JSONResponse(body)


def _gpu_memory() -> int | None:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.memory_allocated())
    return None


async def generation_algorithms(request: Request) -> Response:
    s = _service(request)
    return JSONResponse({"model": s.model_id or None, "algorithms": s.algorithms_for_model(), "fields": s.decoding_fields()})
