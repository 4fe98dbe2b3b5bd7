"""The command line and environment of one worker process.

A worker is a plain single-GPU `dserve serve` on 127.0.0.1. It gets every serve setting of
the front (from flags or DSERVE_* variables alike) as flags, except:

- the front's own: --gpus, --gpu-ids, --worker-*, --host, --port, --device, and the DCP
  flags (the front converted the checkpoint already and passes --model <converted dir>);
- --rate-limit-requests and --cors-origin, which the front applies itself: behind the
  front every worker sees one client (127.0.0.1), and CORS headers must be added once.

Settings without a flag (added by code that does not touch the parser), and API keys
(a command line is visible to every local user in `ps`), travel as DSERVE_<NAME> variables. Inherited DSERVE_<setting> variables are removed from the worker's
environment, so what the worker runs with is exactly what this module wrote (a worker that
inherited DSERVE_GPUS would start a front of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dserve.settings import Settings

FRONT_ONLY = frozenset(
    {
        "gpus",
        "gpu_ids",
        "worker_start_interval",
        "worker_base_port",
        "worker_log_dir",
        "dcp_path",
        "base_model",
        "dcp_cache_dir",
        "host",
        "port",
        "device",
        "rate_limit_requests",
        "cors_origins",
    }
)

SECRET = frozenset({"api_key"})  # through the environment: a command line is visible in `ps`


def _serve_actions() -> dict[str, argparse.Action]:
    from dserve.cli import serve_parser

    parser = serve_parser()
    actions: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if a.option_strings:
            actions.setdefault(a.dest, a)  # the first flag of a dest, not a negative alias (--disable-x)
    return actions


def worker_argv(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """(serve flags, extra DSERVE_* variables) carrying the settings a worker inherits."""
    actions = _serve_actions()
    argv: list[str] = []
    env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        if name in FRONT_ONLY:
            continue
        value = getattr(settings, name)
        if value == field.default:
            continue
        action = actions.get(name)
        if action is None or name in SECRET:
            env[f"DSERVE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else action.option_strings[1])
        elif isinstance(action, argparse._StoreTrueAction):
            if value:
                argv.append(flag)
        elif isinstance(action, argparse._StoreFalseAction):
            if not value:
                argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value or []:
                argv += [flag, str(item)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv, env


def worker_command(
    settings: Settings, *, port: int, device: str, cuda_visible: str | None, index: int, workers: int = 1
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) for worker `index` of `workers`. `cuda_visible` is its CUDA_VISIBLE_DEVICES
    entry (then it runs on cuda:0), or None for a CPU worker."""
    flags, extra_env = worker_argv(settings)
    argv = [sys.executable, "-m", "dserve", "serve", "--host", "127.0.0.1", "--port", str(port), "--device", device, *flags]
    fields = {f"DSERVE_{n.upper()}" for n in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in fields}
    env.update(extra_env)
    env["DSERVE_WORKER_INDEX"] = str(index)  # informational; not a setting
    env.setdefault("PYTHONUNBUFFERED", "1")
    if cuda_visible is None:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker must not touch a GPU
        # CPU workers share the cores: each its slice of threads, or the OpenMP pools of N
        # workers oversubscribe the machine (measured: 2 workers on 2 cores ran 12x slower)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, workers))))
    else:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    return argv, env
