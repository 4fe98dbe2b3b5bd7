"""Fault injection for the reliability tests, in a real server process.

A server started with this folder on PYTHONPATH (see `reliability.helpers.fault_env`) imports
this module at start-up (Python's `sitecustomize` hook). `DSERVE_TEST_FAULT` names the fault
and the runner it hits, `<fault>:<engine>/<algorithm>`:

- `runner_init_raises`: building that runner raises (a plugin whose import or constructor fails);
- `step_hangs`: that runner's steps never return (a hung kernel or lock);
- `step_sleeps`: that runner's steps take `DSERVE_TEST_STEP_SLEEP` seconds longer (default
  0.5; a slow GPU);
- `load_sleeps:<seconds>`: the model load takes that much longer (a big checkpoint).

Other runners are untouched, so the same server keeps serving them. Nothing is mocked: the
real server, scheduler and engines run; only the named runner misbehaves.
"""

import os
import threading
import time

_FAULT = os.environ.get("DSERVE_TEST_FAULT", "")

if _FAULT:
    from dserve.service import GenerationService

    _kind, _, _target = _FAULT.partition(":")
    _make_runner = GenerationService._make_runner

    def _faulty_make_runner(self, key):
        if "/".join(key) != _target:
            return _make_runner(self, key)
        if _kind == "runner_init_raises":
            raise RuntimeError(f"injected fault: building {_target} fails")
        runner = _make_runner(self, key)
        if _kind == "step_hangs":
            forever = threading.Event()
            runner.step = lambda: forever.wait()
        elif _kind == "step_sleeps":
            step, pause = runner.step, float(os.environ.get("DSERVE_TEST_STEP_SLEEP", "0.5"))

            def slow_step():
                time.sleep(pause)
                return step()

            runner.step = slow_step
        return runner

    GenerationService._make_runner = _faulty_make_runner

    if _kind == "load_sleeps":
        _load = GenerationService.load

        def _slow_load(self):
            time.sleep(float(_target))
            return _load(self)

        GenerationService.load = _slow_load
