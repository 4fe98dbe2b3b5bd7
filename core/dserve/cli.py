"""The `dserve` command line. `dserve --model M ...` is short for `dserve serve --model M ...`.

Every serve flag can also come from a DSERVE_* environment variable (pydantic-settings);
a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any

from dserve import __version__


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The `dserve serve` flags. Each sets the Settings attribute of its dest; its help is that
    attribute's description, default and DSERVE_* variable (added by `_describe_settings`)."""
    from dserve.fields import add_cli_arguments
    from dserve.plugins import get_registry

    g = p.add_argument_group("model")
    g.add_argument("--model")
    g.add_argument("--revision")
    g.add_argument("--download-dir")
    g.add_argument("--tokenizer")
    g.add_argument("--served-model-name")
    g.add_argument("--dtype")
    g.add_argument("--device")
    g.add_argument("--trust-remote-code", action="store_true", default=None)
    g.add_argument("--enforce-eager", action="store_true", default=None)
    g.add_argument("--load-format")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--compile-mode")  # choices: the Settings field's Literal
    g.add_argument("--quantization")
    g.add_argument("--flash-attention", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--gpu-memory-utilization", type=float)

    # from the one declaration of decoding fields, then the installed plugins' server flags
    g = p.add_argument_group("decoding defaults (a request's own fields win)")
    add_cli_arguments(g, get_registry().decoding_fields)

    g = p.add_argument_group("server")
    g.add_argument("--host")
    g.add_argument("--port", type=int)
    g.add_argument("--log-json", action="store_true", default=None)
    g.add_argument("--log-level")
    g.add_argument("--log-prompts", action="store_true", default=None)

    g = p.add_argument_group("scheduling")
    g.add_argument("--max-batch-size", "--batch-size", dest="max_batch_size", type=int)
    g.add_argument("--max-wait-time", type=float)
    g.add_argument("--max-queue-size", type=int)
    g.add_argument("--request-timeout", type=float)
    g.add_argument("--shutdown-grace", type=float)
    g.add_argument("--result-ttl", type=float)

    g = p.add_argument_group("middleware")
    g.add_argument("--api-key", action="append")
    g.add_argument("--rate-limit-requests", type=int)
    g.add_argument("--strict-fields", action="store_true", default=None)
    g.add_argument("--max-body-bytes", type=int)
    g.add_argument("--body-read-timeout", type=float)
    g.add_argument("--cors-origin", dest="cors_origins", action="append")
    g.add_argument("--no-metrics", dest="metrics", action="store_false", default=None)
    g.add_argument("--metrics-require-key", action="store_true", default=None)

    g = p.add_argument_group("multi-GPU front and DCP checkpoints (docs/scale-out.md)")
    g.add_argument("--gpus", type=int)
    g.add_argument("--gpu-ids")
    g.add_argument("--worker-start-interval", type=float)
    g.add_argument("--worker-base-port", type=int)
    g.add_argument("--worker-log-dir")
    g.add_argument("--dcp-path")
    g.add_argument("--base-model")
    g.add_argument("--dcp-cache-dir")
    _describe_settings(p)


def _describe_settings(p: argparse.ArgumentParser) -> None:
    """Each flag's help from its Settings field: description, default, environment variable."""
    from dserve.settings import Settings

    for action in p._actions:
        field = Settings.model_fields.get(action.dest)
        if field is None or action.help == argparse.SUPPRESS:
            continue
        default = field.get_default()
        if isinstance(default, bool):  # --no-metrics too: the feature's default
            shown = "on" if default else "off"
        else:
            shown = "none" if default is None else str(default)
        text = (action.help or field.description or "").replace("%", "%%")
        env = f"env: DSERVE_{action.dest.upper()}"
        if default is None and "default" in text:  # the description says what "not set" means
            action.help = f"{text} ({env})"
        else:
            action.help = f"{text} (default: {shown}; {env})".lstrip()
        if action.choices is None and action.nargs != 0:
            action.choices = _literal_choices(field.annotation)


def _literal_choices(annotation: Any) -> tuple | None:
    """The values of a Literal[...] (or Literal[...] | None) annotation."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return typing.get_args(candidate)
    return None


def _commands_epilog(sub: argparse._SubParsersAction) -> str:
    lines = ["other commands (dserve COMMAND --help):"]
    for action in sub._choices_actions:
        if action.dest != "serve":
            lines.append(f"  {action.dest:<12} {action.help or ''}")
    lines.append("")
    lines.append("Every flag can also be set by its DSERVE_* environment variable; a flag given on the command line wins.")
    return "\n".join(lines)


def serve_parser() -> argparse.ArgumentParser:
    """A parser with exactly the `dserve serve` flags, for tools that validate or forward
    them: the multi-GPU front's worker command line, `dserve slurm submit`, `dserve ray-serve`."""
    parser = argparse.ArgumentParser(prog="dserve serve", add_help=False)
    add_serve_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dserve", description="Serve masked-diffusion language models with an OpenAI-compatible API."
    )
    parser.add_argument("--version", action="version", version=f"dserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible server (the default command)",
        description="Serve masked-diffusion language models with an OpenAI-compatible API "
        "(`dserve --model M` is `dserve serve --model M`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(serve)
    serve.set_defaults(handler=_serve)

    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.add_argument("--all", action="store_true", help="include dserve's own built-in plugins (the operations wing)")
    plugins.set_defaults(handler=_plugins)

    from dserve.plugins import get_plugin_manager

    get_plugin_manager().hook.register_commands(subparsers=sub)  # the operations wing's too
    serve.prog = "dserve [serve]"
    serve.epilog = _commands_epilog(sub)  # `dserve --help` is this help: it lists the other commands too
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
    from dserve.plugins import get_plugin_manager

    hook = get_plugin_manager().hook
    try:  # e.g. the operations wing converts a --dcp-path checkpoint once, before any worker starts
        settings = hook.prepare_serve_settings(settings=settings) or settings
    except ValueError as exc:
        print(f"dserve: {exc}", file=sys.stderr)
        return 2
    status = hook.launch_server(settings=settings)  # e.g. the multi-GPU front for --gpus / --gpu-ids
    if status is not None:
        return int(status)
    if settings.gpus or settings.gpu_ids or settings.dcp_path or settings.base_model:  # flags only a plugin acts on
        print(
            "dserve: --gpus, --gpu-ids, --dcp-path and --base-model need the operations wing (dserve_ops), which is not loaded",
            file=sys.stderr,
        )
        return 2
    from dserve.server import serve

    return serve(settings)


def _plugins(args: argparse.Namespace) -> int:
    from dserve.plugins import plugin_summary

    rows = [row for row in plugin_summary() if args.all or not row["builtin"]]
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
        for f in row["server_flags"]:
            print(f"  flag    {', '.join(f['flags'])} (env {f['env']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `dserve --model M` and `dserve --help` are the serve command's (its help lists the others)
    if not argv or (argv[0].startswith("-") and argv[0] != "--version"):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
