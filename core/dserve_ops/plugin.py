"""The operations wing as a dserve plugin: its sub-commands, and the two `dserve serve` hooks
through which it converts a `--dcp-path` checkpoint and runs the multi-GPU front.

Each command module is imported only when the CLI is built, as before the move, and the
front only when `--gpus` / `--gpu-ids` ask for it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from dserve.hookspecs import hookimpl

if TYPE_CHECKING:  # dserve.settings builds Settings from the loaded plugins: importing it here would be a loop
    from dserve.settings import Settings


@hookimpl
def register_commands(subparsers: argparse._SubParsersAction) -> None:
    from dserve_ops import bench, dcp, ray_serve, slurm
    from dserve_ops.evaluation import harness, lm_eval_command
    from dserve_ops.front import status

    bench_parser = subparsers.add_parser("bench", help="HTTP load test against an OpenAI-compatible server")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=bench.main)

    eval_parser = subparsers.add_parser(
        "eval", help="quality harness: held-out task accuracy per engine/algorithm through a server"
    )
    harness.add_arguments(eval_parser)
    eval_parser.set_defaults(handler=harness.main)

    lm_eval_parser = subparsers.add_parser(
        "lm-eval",
        help="lm-evaluation-harness with the `dserve` model (scores through /v1/loglikelihood)",
        prefix_chars="+",  # every argument, options included, is lm-eval's
        add_help=False,
    )
    lm_eval_command.add_arguments(lm_eval_parser)
    lm_eval_parser.set_defaults(handler=lm_eval_command.main)

    status_parser = subparsers.add_parser("status", help="show a multi-GPU front's workers and load (/worker-status, /stats)")
    status.add_arguments(status_parser)
    status_parser.set_defaults(handler=status.main)

    convert_parser = subparsers.add_parser("convert", help="convert a NeMo-RL DCP checkpoint to a Hugging Face directory")
    dcp.add_arguments(convert_parser)
    convert_parser.set_defaults(handler=dcp.main)

    slurm.register(subparsers)  # dserve slurm submit|connect
    ray_serve.register(subparsers)  # dserve ray-serve


@hookimpl
def prepare_serve_settings(settings: Settings) -> Settings | None:
    """`--dcp-path P --base-model M`: convert once (cached), then serve the converted directory."""
    if not (settings.dcp_path or settings.base_model):
        return None
    if not settings.dcp_path:
        raise ValueError("--base-model is only used with --dcp-path")
    from dserve_ops.dcp import prepare_settings

    try:
        return prepare_settings(settings)  # before any worker starts
    except FileNotFoundError as exc:  # ConversionError already is a ValueError
        raise ValueError(str(exc)) from exc


@hookimpl
def launch_server(settings: Settings) -> int | None:
    """`--gpus N` / `--gpu-ids`: one worker per GPU behind the routing front."""
    if not (settings.gpus or settings.gpu_ids):
        return None
    from dserve_ops.front import run_front

    return run_front(settings)
