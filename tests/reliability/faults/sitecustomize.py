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
    import dserve.loader
    from dserve.service import GenerationService

    _kind, _, _target = _FAULT.partition(":")
    _runner_factory = dserve.loader.runner_factory

    def _faulty_runner_factory(model, settings):
        make = _runner_factory(model, settings)

        def faulty_make(spec):
            if "/".join(spec.runner_key) != _target:
                return make(spec)
            if _kind == "runner_init_raises":
                raise RuntimeError(f"injected fault: building {_target} fails")
            runner = make(spec)
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

        return faulty_make

    # start_scheduler looks runner_factory up when it runs, so the server's scheduler gets this one
    dserve.loader.runner_factory = _faulty_runner_factory

    if _kind == "load_sleeps":
        _load = GenerationService.load

        def _slow_load(self):
            time.sleep(float(_target))
            return _load(self)

        GenerationService.load = _slow_load
