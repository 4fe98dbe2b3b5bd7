"""Continuous step-level batching on a dedicated thread.

Requests wait in a bounded admission queue. Each loop iteration the scheduler moves waiting
sequences into their algorithm's running batch (as far as it has room), runs one step of every
non-empty batch, hands each sequence's committed tokens to its output tracker and releases the
sequences that finished, timed out or were cancelled. Model work never runs on the event loop;
results reach the asyncio side through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from dserve.canvas import CanvasStep, canvas_step
from dserve.engine import AlgorithmRunner, StepResult
from dserve.errors import APIError, Overloaded, RequestTimeout, Unavailable
from dserve.output import OutputTracker
from dserve.sequence import RequestSpec, Sequence

log = structlog.get_logger("dserve.scheduler")

RunnerKey = tuple[str, str]  # (engine, algorithm): RequestSpec.runner_key


@dataclass(frozen=True)
class Event:
    kind: str  # "delta" | "canvas" | "done" | "error"
    text: str = ""
    error: APIError | None = None
    canvas: CanvasStep | None = None  # kind "canvas": what one step committed (stream_canvas)


@dataclass(eq=False)
class GenerationHandle:
    """One sequence in flight: what the HTTP side awaits and the scheduler updates."""

    seq: Sequence  # carries its RequestSpec: the runner that decodes it
    tracker: OutputTracker
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    deadline: float | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    nfe: int = 0
    steps: int = 0  # denoising steps the sequence took part in
    stream_canvas: bool = False  # emit a "canvas" event per step (the request's stream_canvas)
    cancelled: bool = False
    done: bool = False

    @property
    def spec(self) -> RequestSpec:
        assert self.seq.spec is not None, "a queued sequence carries its RequestSpec"
        return self.seq.spec

    @property
    def runner_key(self) -> RunnerKey:
        return self.spec.runner_key

    def _emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    @property
    def completion_tokens(self) -> int:
        return len(self.tracker.output_ids)


class SchedulerStats:
    """Counters for /batch/stats and /v1/engine/stats (read from any thread)."""

    def __init__(self, window: float = 60.0):
        self.started = time.monotonic()
        self.steps = 0
        self.tokens_committed = 0
        self.batch_size_sum = 0
        self.histogram: collections.Counter[int] = collections.Counter()
        self.requests_finished = 0
        self.requests_shed = 0  # failed with 503 to free device memory
        self.idle_memory_releases = 0  # out-of-memory steps retried after freeing idle runners' caches
        self._recent: collections.deque[tuple[float, int, int]] = collections.deque()  # (t, batch, tokens)
        self._window = window

    def record_step(self, batch_size: int, tokens: int) -> None:
        now = time.monotonic()
        self.steps += 1
        self.tokens_committed += tokens
        self.batch_size_sum += batch_size
        self.histogram[batch_size] += 1
        self._recent.append((now, batch_size, tokens))
        while self._recent and now - self._recent[0][0] > self._window:
            self._recent.popleft()

    def snapshot(self) -> dict[str, Any]:
        recent = list(self._recent)
        span = (recent[-1][0] - recent[0][0]) if len(recent) > 1 else 0.0
        return {
            "total_steps": self.steps,
            "total_tokens_committed": self.tokens_committed,
            "requests_finished": self.requests_finished,
            "requests_shed_out_of_memory": self.requests_shed,
            "idle_cache_releases_out_of_memory": self.idle_memory_releases,
            "avg_batch_size": self.batch_size_sum / self.steps if self.steps else 0.0,
            "batch_size_histogram": {str(k): v for k, v in sorted(self.histogram.items())},
            "steps_per_second": (len(recent) - 1) / span if span > 0 else 0.0,
            "tokens_per_step": self.tokens_committed / self.steps if self.steps else 0.0,
            "uptime_s": time.monotonic() - self.started,
        }


class Scheduler:
    def __init__(
        self,
        runner_factory: Callable[[RequestSpec], AlgorithmRunner],  # called once per runner key
        *,
        max_queue_size: int = 256,
        max_wait_time: float = 0.0,
        on_step: Callable[[int, list[int]], None] | None = None,  # (batch size, tokens committed per sequence)
    ):
        self._runner_factory = runner_factory
        self.runners: dict[RunnerKey, AlgorithmRunner] = {}
        self.max_queue_size = max_queue_size
        self.max_wait_time = max_wait_time
        self.stats = SchedulerStats()
        self._on_step = on_step
        self._waiting: collections.deque[GenerationHandle] = collections.deque()
        self._running: dict[int, GenerationHandle] = {}
        self._cv = threading.Condition()
        self._stop = False
        self.draining = False
        # when the loop last went round (or the scheduler last became busy): the watchdog
        # reports a scheduler with pending work and an old heartbeat as stalled
        self.heartbeat = time.monotonic()
        self._finish_lock = threading.Lock()  # the watchdog finishes overdue handles too
        self._thread = threading.Thread(target=self._loop, name="dserve-scheduler", daemon=True)

    # ---- called from the event loop -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def submit(self, handles: list[GenerationHandle]) -> None:
        """Queue handles (all of one request) or refuse them all: 503 draining, 429 full."""
        with self._cv:
            if self.draining or self._stop:
                raise Unavailable("the server is shutting down", code="server_shutting_down")
            if not self.alive:
                raise Unavailable("the scheduler thread has stopped; the server must be restarted", code="scheduler_failed")
            if len(self._waiting) + len(handles) > self.max_queue_size:
                raise Overloaded("the request queue is full; retry later", code="queue_full", headers={"Retry-After": "1"})
            if not self._waiting and not self._running:
                self.heartbeat = time.monotonic()  # idle until now: the loop was not late
            self._waiting.extend(handles)
            self._cv.notify_all()

    def cancel(self, handle: GenerationHandle) -> None:
        """Free the handle's slot at the next step (client gone or request over)."""
        with self._cv:
            handle.cancelled = True
            self._cv.notify_all()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def in_flight(self) -> int:
        return len(self._waiting) + len(self._running)

    @property
    def alive(self) -> bool:
        """The scheduler thread runs (true before `start` too: nothing has failed yet)."""
        return self._thread.is_alive() or self._thread.ident is None

    def stalled_for(self) -> float:
        """Seconds since the loop last went round while work is pending (0 when idle)."""
        if not self._waiting and not self._running:
            return 0.0
        return max(0.0, time.monotonic() - self.heartbeat)

    def handles_in_flight(self) -> list[GenerationHandle]:
        """A snapshot of every queued and running handle (for the watchdog's thread)."""
        with self._cv:
            waiting = list(self._waiting)
        for _ in range(3):  # the scheduler thread changes _running without the lock
            try:
                return waiting + list(self._running.values())
            except RuntimeError:
                continue
        return waiting

    def abandon(self, handle: GenerationHandle, error: APIError) -> None:
        """End `handle` with `error` from outside the scheduler thread (the watchdog): its
        client is answered now; its batch slot is freed whenever the loop runs again."""
        handle.cancelled = True
        self._finish(handle, Event("error", error=error))
        with self._cv:
            self._cv.notify_all()

    # ---- the scheduler thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._running:
                    self._cv.wait()
                if self._stop:
                    break
                self.heartbeat = time.monotonic()
                if not self._running and self.max_wait_time > 0:
                    # an idle server gives the first batch a moment to fill
                    self._cv.wait_for(lambda: self._stop, timeout=self.max_wait_time)
            try:
                # admission too: a runner whose import or constructor raises must fail its
                # requests, not kill this thread (every request would then hang)
                self._build_missing_runners()
                with self._cv:
                    admitted = self._take_admissible()
                for handle in admitted:
                    self._admit(handle)
                self._drop_cancelled_and_expired()
                for runner in list(self.runners.values()):
                    if runner.sequences:
                        self._step(runner)
            except Exception:  # noqa: BLE001 - the loop must survive anything a runner throws
                log.exception("scheduler iteration failed")
            self.heartbeat = time.monotonic()

    def _build_missing_runners(self) -> None:
        """Build the runners waiting requests need, outside the lock (a slow import or a
        constructor must not block `submit` on the event loop); a runner that fails to build
        fails the requests waiting for it."""
        with self._cv:
            missing = {h.runner_key: h.spec for h in self._waiting if h.runner_key not in self.runners}
        for key, spec in missing.items():
            try:
                self._get_runner(spec)
            except Exception as exc:  # noqa: BLE001
                error = (
                    exc
                    if isinstance(exc, APIError)
                    else APIError(f"internal error while preparing {key[0]}/{key[1]}", code="engine_error")
                )
                if not isinstance(exc, APIError):
                    log.exception("runner construction failed", engine=key[0], algorithm=key[1])
                with self._cv:
                    failed = [h for h in self._waiting if h.runner_key == key]
                    self._waiting = collections.deque(h for h in self._waiting if h.runner_key != key)
                for handle in failed:
                    self._fail(handle, error)

    def _take_admissible(self) -> list[GenerationHandle]:
        taken: list[GenerationHandle] = []
        kept: collections.deque[GenerationHandle] = collections.deque()
        room: dict[RunnerKey, int] = {}
        while self._waiting:
            handle = self._waiting.popleft()
            if handle.cancelled:
                self._finish(handle, None)
                continue
            runner = self.runners.get(handle.runner_key)
            if runner is None:  # submitted after _build_missing_runners: built next iteration
                kept.append(handle)
                continue
            if handle.runner_key not in room:
                room[handle.runner_key] = runner.max_batch_size - len(runner.sequences)
            if room[handle.runner_key] > 0:
                room[handle.runner_key] -= 1
                taken.append(handle)
            else:
                kept.append(handle)
        self._waiting = kept
        return taken

    def _get_runner(self, spec: RequestSpec) -> AlgorithmRunner:
        runner = self.runners.get(spec.runner_key)
        if runner is None:
            runner = self.runners[spec.runner_key] = self._runner_factory(spec)
        return runner

    def _admit(self, handle: GenerationHandle) -> None:
        try:
            self._get_runner(handle.spec).admit(handle.seq)
        except APIError as exc:
            self._fail(handle, exc)
            return
        except Exception:  # noqa: BLE001
            log.exception("admission failed", seq_id=handle.seq.seq_id)
            self._fail(handle, APIError("internal error while admitting the request"))
            return
        self._running[handle.seq.seq_id] = handle

    def _drop_cancelled_and_expired(self) -> None:
        now = time.monotonic()
        for handle in list(self._running.values()):
            if handle.cancelled:
                self._release(handle)
                self._finish(handle, None)
            elif handle.deadline is not None and now > handle.deadline:
                self._release(handle)
                self._fail(handle, RequestTimeout("the request exceeded the server's request timeout", code="timeout"))
        for handle in [h for h in self._waiting if h.deadline is not None and now > h.deadline]:
            self._waiting.remove(handle)
            self._fail(handle, RequestTimeout("the request timed out waiting in the queue", code="timeout"))

    def _step(self, runner: AlgorithmRunner) -> None:
        batch = len(runner.sequences)
        try:
            results = runner.step()
        except Exception as exc:  # noqa: BLE001
            if _is_out_of_memory(exc):
                if self._release_idle_memory():
                    return  # the step is retried next iteration (it changed no state) with that memory free
                if batch > 1:
                    self._shed(runner)
                    return
            log.exception("engine step failed", batch_size=batch)
            self._fail_sequences(runner, list(runner.sequences), self._step_error(exc))
            return
        committed = [len(result.committed) for result in results]
        for result in results:
            self._apply(result)
        tokens = sum(committed)
        self.stats.record_step(batch, tokens)
        if self._on_step is not None:
            self._on_step(batch, committed)

    def _release_idle_memory(self) -> bool:
        """Free what idle runners keep for reuse (their KV caches) before failing any request."""
        freed = [key for key, runner in self.runners.items() if runner.release_idle_memory()]
        if freed:
            _free_device_memory()
            self.stats.idle_memory_releases += 1
            log.warning("out of device memory: freed idle runners' caches", runners=[f"{e}/{a}" for e, a in freed])
        return bool(freed)

    def _shed(self, runner: AlgorithmRunner) -> None:
        """A step ran out of device memory: fail the newest half of the batch with 503, cap the
        runner's batch at what is left, and let the rest retry the step at the next iteration.

        The newest requests have made the least progress; the cap keeps waiting requests in the
        queue (429 once it is full) instead of admitting them into another out-of-memory step.
        A step that fails in its forward pass has changed no sequence state (engines commit after
        the forward), so the retry decodes exactly what the failed step would have."""
        _free_device_memory()
        keep = len(runner.sequences) // 2
        shed = runner.sequences[keep:]
        runner.max_batch_size = max(1, keep)
        log.warning("out of device memory: shedding requests", shed=len(shed), batch_size_cap=runner.max_batch_size)
        self._fail_sequences(runner, shed, _out_of_memory_error())
        self.stats.requests_shed += len(shed)

    def _fail_sequences(self, runner: AlgorithmRunner, seqs: list[Sequence], error: APIError) -> None:
        for seq in seqs:
            handle = self._running.get(seq.seq_id)
            runner.release(seq)
            if handle is not None:
                self._fail(handle, error)

    @staticmethod
    def _step_error(exc: Exception) -> APIError:
        if _is_out_of_memory(exc):
            _free_device_memory()
            return _out_of_memory_error()
        return APIError("internal error while decoding", code="engine_error")

    def _apply(self, result: StepResult) -> None:
        handle = self._running.get(result.seq.seq_id)
        if handle is None:
            return
        handle.nfe += result.nfe
        handle.steps += 1
        if handle.stream_canvas:
            step = canvas_step(handle.seq, handle.tracker, result.committed, handle.steps, handle.nfe)
            handle._emit(Event("canvas", canvas=step))
        delta = handle.tracker.apply(result.committed, result.logprobs)
        if result.finished and not handle.tracker.finished:
            delta += handle.tracker.canvas_complete()
        if delta:
            if handle.first_token_at is None:
                handle.first_token_at = time.monotonic()
            handle._emit(Event("delta", delta))
        if handle.tracker.finished:
            self._release(handle)
            self._finish(handle, Event("done"))

    def _release(self, handle: GenerationHandle) -> None:
        self._running.pop(handle.seq.seq_id, None)
        runner = self.runners.get(handle.runner_key)
        if runner is not None:
            runner.release(handle.seq)

    def _fail(self, handle: GenerationHandle, error: APIError) -> None:
        self._running.pop(handle.seq.seq_id, None)
        self._finish(handle, Event("error", error=error))

    def _finish(self, handle: GenerationHandle, event: Event | None) -> None:
        with self._finish_lock:
            if handle.done:
                return
            handle.done = True
        self.stats.requests_finished += 1
        if event is not None:
            handle._emit(event)


def _out_of_memory_error() -> APIError:
    return Unavailable("out of device memory while decoding; retry later", code="out_of_memory")


def _is_out_of_memory(exc: Exception) -> bool:
    return type(exc).__name__ == "OutOfMemoryError"


def _free_device_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
