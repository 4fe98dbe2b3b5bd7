"""The `dserve` command line. `dserve --model M ...` is short for `dserve serve --model M ...`.

Every serve flag can also come from a DSERVE_* environment variable (pydantic-settings);
a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from dserve import __version__

SUBCOMMANDS = {"serve", "plugins", "bench", "eval"}


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="checkpoint directory or HF repo id in the local cache (default: the embedded tiny model)")
    g.add_argument("--tokenizer", help="tokenizer directory (default: the model's)")
    g.add_argument("--served-model-name", help="the model id clients send")
    g.add_argument("--dtype", help="auto | float32 | bfloat16 | float16 (auto: checkpoint dtype on GPU, float32 on CPU)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--trust-remote-code", action="store_true", default=None, help="accepted and ignored: dserve's models are native")
    g.add_argument("--enforce-eager", action="store_true", default=None, help="disable CUDA graphs (GPU only)")
    g.add_argument("--load-format", choices=["auto", "dummy"], help="dummy: random weights in the shape of --model's config.json (benchmarks)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model's forward (default off; --no-compile)")
    g.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    g.add_argument("--quantization", choices=["8bit", "4bit"],
                   help="weight-only int8 / int4 linear layers through torchao (pip install 'dserve[quant]')")
    g.add_argument("--flash-attention", action=argparse.BooleanOptionalAction, default=None,
                   help="SDPA may use flash / cuDNN attention on the GPU (default on; --no-flash-attention)")
    g.add_argument("--gpu-memory-utilization", type=float,
                   help="fraction of the GPU's memory the server may allocate (default 1.0); a step that needs more "
                   "sheds its newest requests with 503 instead of crashing")

    g = p.add_argument_group("decoding defaults (a request's own fields win)")
    g.add_argument("--engine", help="default engine (default: the model family's)")
    g.add_argument("--algorithm", help="default generation algorithm")
    g.add_argument("--steps", "--diffusion-steps", dest="steps", type=int, help="denoising steps (default: one token per step)")
    g.add_argument("--block-length", "--block-size", dest="block_length", type=int)
    g.add_argument("--remasking", choices=["low_confidence", "random"])
    g.add_argument("--threshold", type=float)
    g.add_argument("--factor", type=float)
    g.add_argument("--cfg-scale", type=float)
    g.add_argument("--enable-apd", action=argparse.BooleanOptionalAction, default=None,
                   help="default to fastdllm/apd, confidence-adaptive parallel decoding (--disable-apd/--no-enable-apd: off)")
    g.add_argument("--disable-apd", dest="enable_apd", action="store_false", default=None, help=argparse.SUPPRESS)
    g.add_argument("--apd-max-parallel", type=int, help="apd: most tokens committed per step (default 8)")
    g.add_argument("--apd-threshold", type=float, help="apd: confidence each token needs, left to right (default 0.3)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--max-tokens", type=int, help="max_tokens when a request gives none (default 128)")

    g = p.add_argument_group("server")
    g.add_argument("--host", help="bind address (default 0.0.0.0)")
    g.add_argument("--port", type=int, help="port (default 8000)")
    g.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    g.add_argument("--log-level", help="debug | info | warning | error")
    g.add_argument("--log-prompts", action="store_true", default=None, help="include prompt text in logs")

    g = p.add_argument_group("scheduling")
    g.add_argument("--max-batch-size", "--batch-size", dest="max_batch_size", type=int, help="sequences per running batch (default 16)")
    g.add_argument("--max-wait-time", type=float, help="seconds an idle server waits to fill its first batch (default 0)")
    g.add_argument("--max-queue-size", type=int, help="waiting requests before 429 (default 256)")
    g.add_argument("--request-timeout", type=float, help="seconds before a request fails with a timeout error")
    g.add_argument("--shutdown-grace", type=float, help="seconds in-flight requests get after SIGTERM (default 30)")
    g.add_argument("--result-ttl", type=float, help="seconds async job results are kept (default 600)")

    g = p.add_argument_group("middleware")
    g.add_argument("--api-key", action="append", help="accepted bearer key (repeatable); env DSERVE_API_KEY='[\"k1\",\"k2\"]'")
    g.add_argument("--rate-limit-requests", type=int, help="requests per minute per client")
    g.add_argument("--max-body-bytes", type=int, help="largest request body (default 4 MiB)")
    g.add_argument("--body-read-timeout", type=float, help="seconds a request body may take to arrive before 408 (default 60)")
    g.add_argument("--cors-origin", dest="cors_origins", action="append", help="allowed CORS origin (repeatable)")
    g.add_argument("--no-metrics", dest="metrics", action="store_false", default=None, help="disable /metrics")
    g.add_argument("--metrics-require-key", action="store_true", default=None, help="/metrics needs the API key")

    g = p.add_argument_group("multi-GPU front and DCP checkpoints (docs/scale-out.md)")
    g.add_argument("--gpus", type=int, help="one worker per GPU 0..N-1 behind a routing front")
    g.add_argument("--gpu-ids", help="GPU ids for the workers, e.g. 0,2,4,6 (implies the front)")
    g.add_argument("--worker-start-interval", type=float, help="seconds between worker launches (default 1)")
    g.add_argument("--worker-base-port", type=int, help="worker i listens on 127.0.0.1:<this + i> (default: free ports)")
    g.add_argument("--worker-log-dir", help="write worker i's output to DIR/worker-i.log (default: the front's output)")
    g.add_argument("--dcp-path", help="NeMo-RL torch.distributed.checkpoint directory to serve (converted once, cached)")
    g.add_argument("--base-model", help="the Hugging Face model the DCP checkpoint was trained from (config, tokenizer, names)")
    g.add_argument("--dcp-cache-dir", help="where converted DCP checkpoints are kept (default ~/.cache/dserve/dcp)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dserve", description="Serve masked-diffusion language models with an OpenAI-compatible API.")
    parser.add_argument("--version", action="version", version=f"dserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the OpenAI-compatible server")
    _add_serve_arguments(serve)
    serve.set_defaults(handler=_serve)

    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(handler=_plugins)

    from dserve import bench

    bench_parser = sub.add_parser("bench", help="HTTP load test against an OpenAI-compatible server")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=bench.main)

    from dserve.evaluation import harness

    eval_parser = sub.add_parser("eval", help="quality harness: held-out task accuracy per engine/algorithm through a server")
    harness.add_arguments(eval_parser)
    eval_parser.set_defaults(handler=harness.main)

    from dserve import dcp
    from dserve.front import status

    status_parser = sub.add_parser("status", help="show a multi-GPU front's workers and load (/worker-status, /stats)")
    status.add_arguments(status_parser)
    status_parser.set_defaults(handler=status.main)

    convert_parser = sub.add_parser("convert", help="convert a NeMo-RL DCP checkpoint to a Hugging Face directory")
    dcp.add_arguments(convert_parser)
    convert_parser.set_defaults(handler=dcp.main)

    from dserve import ray_serve, slurm

    slurm.register(sub)  # dserve slurm submit|connect
    ray_serve.register(sub)  # dserve ray-serve

    from dserve.plugins import get_plugin_manager

    get_plugin_manager().hook.register_commands(subparsers=sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from dserve.logs import configure_logging
    from dserve.settings import Settings

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "handler") and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"dserve: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_json, settings.log_level)
    if settings.trust_remote_code:
        import structlog

        structlog.get_logger("dserve").warning("--trust-remote-code is ignored: dserve runs no remote model code")
    if settings.dcp_path or settings.base_model:
        from dserve.dcp import ConversionError, prepare_settings

        if not settings.dcp_path:
            print("dserve: --base-model is only used with --dcp-path", file=sys.stderr)
            return 2
        try:
            settings = prepare_settings(settings)  # converts once, before any worker starts
        except (ConversionError, FileNotFoundError) as exc:
            print(f"dserve: {exc}", file=sys.stderr)
            return 2
    if settings.gpus or settings.gpu_ids:
        from dserve.front import run_front

        return run_front(settings)
    from dserve.server import serve

    serve(settings)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from dserve.plugins import plugin_summary

    rows = plugin_summary()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no dserve plugins installed")
    for row in rows:
        print(f"{row['name']}  ({row['distribution'] or 'not from a distribution'})")
        for m in row["models"]:
            print(f"  model   {m['name']}: architectures {', '.join(m['architectures'])}")
        for e in row["engines"]:
            aliases = f" (aliases: {', '.join(e['aliases'])})" if e["aliases"] else ""
            print(f"  engine  {e['name']}{aliases}: {', '.join(e['algorithms'])} [default {e['default_algorithm']}]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = SUBCOMMANDS | set(parser._subparsers._group_actions[0].choices)  # plugin commands too
    if not argv or (argv[0] not in known and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
