"""Out of device memory during a step: the scheduler sheds the newest requests with 503 and the
rest decode exactly what they would have. (On the GPU the same path runs for real in
tests/gpu/test_out_of_memory.py; here a model refuses batches above a size, as a too-small GPU
would, so the test runs on any machine.)"""

import asyncio

import pytest
import torch

from dserve.output import OutputTracker
from dserve.registry import AlgorithmSpec, EngineSpec
from dserve.scheduler import GenerationHandle, Scheduler
from dserve.sequence import RequestSpec, Sequence
from dserve_fastdllm.params import FastDLLMParams
from dserve_fastdllm.runner import BasicRunner, DualCacheRunner
from dserve_llada import EMBEDDED_MODEL_DIR
from dserve_llada.model import load_llada


class RowCappedModel:
    """The real model, except that a forward of more than `max_rows` rows raises the error a
    GPU raises when the batch's activations do not fit."""

    def __init__(self, model, max_rows: int):
        self.model, self.max_rows = model, max_rows

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, input_ids, *args, **kwargs):
        if input_ids.shape[0] > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.model(input_ids, *args, **kwargs)


@pytest.fixture(scope="module")
def model():
    return load_llada(EMBEDDED_MODEL_DIR, dtype="float32", device="cpu")


def _prompts(model, n):
    tok = model.tokenizer
    texts = [f"Reverse the word: {w}" for w in ("apple", "stone", "river", "cloud", "tiger", "lemon", "ocean", "piano")]
    chats = [
        tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False) for t in texts[:n]
    ]
    return [tok(c, add_special_tokens=False)["input_ids"] for c in chats]


def _spec(key, params):
    """A resolved request of engine/algorithm `key` (the runners come from the tests' factories)."""
    algorithm = AlgorithmSpec(key[1], runner="unused:Runner", params="unused:Params")
    return RequestSpec(EngineSpec(key[0], (algorithm,), default_algorithm=key[1]), algorithm, params)


async def _run(scheduler, model, prompts, key=("fastdllm", "x")):
    loop = asyncio.get_running_loop()
    handles = []
    for ids in prompts:
        params = FastDLLMParams(block_length=16, threshold=0.9)
        seq = Sequence(ids, 32, params, spec=_spec(key, params))
        tracker = OutputTracker(model.tokenizer, seq.gen_length, 32, model.info.stop_ids)
        handles.append(GenerationHandle(seq, tracker, loop))
    scheduler.submit(handles)
    outcomes = []
    for h in handles:
        while True:
            event = await asyncio.wait_for(h.events.get(), 120)
            if event.kind == "done":
                outcomes.append(("ok", h.tracker.output_ids))
                break
            if event.kind == "error":
                outcomes.append((event.error.code, event.error.status))
                break
    return outcomes


@pytest.mark.parametrize("runner_cls", [BasicRunner, DualCacheRunner])
def test_out_of_memory_sheds_newest_and_keeps_serving(model, runner_cls):
    prompts = _prompts(model, 6)
    alone = Scheduler(lambda spec: runner_cls(model, max_batch_size=8))
    alone.start()
    try:
        expected = [asyncio.run(_run(alone, model, [p]))[0] for p in prompts]
    finally:
        alone.stop()

    capped = RowCappedModel(model, max_rows=2)
    scheduler = Scheduler(lambda spec: runner_cls(capped, max_batch_size=8))
    scheduler.start()
    try:
        outcomes = asyncio.run(_run(scheduler, model, prompts))
        # batch 6 fails: the newest 3 get 503, batch 3 fails: 2 more; the oldest finishes
        assert outcomes[1:] == [("out_of_memory", 503)] * 5
        assert outcomes[0] == expected[0]  # the retried steps decoded exactly what it would alone
        assert scheduler.stats.requests_shed == 5
        runner = scheduler.runners[("fastdllm", "x")]
        assert runner.max_batch_size == 1 and not runner.sequences
        # the server keeps serving: later requests queue behind the cap and all succeed
        assert asyncio.run(_run(scheduler, model, prompts[1:4])) == expected[1:4]
    finally:
        scheduler.stop()


class FitsWithoutTheIdleCache:
    """The real model, except that every forward runs out of memory while another runner's idle
    KV cache is still allocated (as on a GPU shared by two algorithms' caches)."""

    def __init__(self, model, idle_runner):
        self.model, self.idle_runner = model, idle_runner

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        if self.idle_runner.pool.cache is not None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.model(*args, **kwargs)


def test_out_of_memory_frees_idle_runners_caches_before_failing_anyone(model):
    """A runner keeps its KV cache after its last request (the next one reuses it and its CUDA
    graphs); when another runner's step runs out of memory, the scheduler frees the idle cache
    and retries the step: nobody gets a 503 and the outputs are what they would be."""
    prompts = _prompts(model, 3)
    idle = DualCacheRunner(model, max_batch_size=8)
    runners = {
        ("fastdllm", "idle"): idle,
        ("fastdllm", "busy"): DualCacheRunner(FitsWithoutTheIdleCache(model, idle), max_batch_size=8),
    }
    scheduler = Scheduler(lambda spec: runners[spec.runner_key])
    scheduler.start()
    try:
        expected = asyncio.run(_run(scheduler, model, prompts, key=("fastdllm", "idle")))
        assert all(kind == "ok" for kind, _ in expected)
        assert idle.pool.cache is not None and not idle.sequences  # kept for the next request
        assert asyncio.run(_run(scheduler, model, prompts, key=("fastdllm", "busy"))) == expected
        assert idle.pool.cache is None
        assert scheduler.stats.idle_memory_releases == 1 and scheduler.stats.requests_shed == 0
        assert scheduler.runners[("fastdllm", "busy")].max_batch_size == 8  # no cap: nothing was shed
    finally:
        scheduler.stop()
