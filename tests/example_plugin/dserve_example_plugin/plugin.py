"""Implements every dserve hook, so the test suite exercises each one through a real install."""

import os
from pathlib import Path

from starlette.responses import JSONResponse

from dserve.hookspecs import hookimpl
from dserve.registry import BIDIRECTIONAL, AlgorithmSpec, EngineSpec


@hookimpl
def register_models(register):
    """This plugin adds no model family (the hook is optional)."""


@hookimpl
def register_engines(register):
    register(
        EngineSpec(
            name="example",
            aliases=("example-engine",),
            default_algorithm="left_to_right",
            algorithms=(
                AlgorithmSpec(
                    name="left_to_right",
                    runner="dserve_example_plugin.left_to_right:LeftToRightRunner",
                    params="dserve_example_plugin.params:LeftToRightParams",
                    requires=frozenset({BIDIRECTIONAL}),
                    description="commit the leftmost masked positions each step",
                ),
            ),
        )
    )


@hookimpl
def register_server_flags(register):
    from dserve_example_plugin.params import TOKENS_PER_STEP

    register(TOKENS_PER_STEP)


async def _ping(request):
    return JSONResponse({"plugin": "example", "model": request.app.state.dserve.model_id})


@hookimpl
def register_routes(add_route):
    add_route("/example/ping", _ping, methods=["GET"])


def _hello(args):
    print(f"hello from the example plugin, {args.name}")
    return 0


@hookimpl
def register_commands(subparsers):
    parser = subparsers.add_parser("example-hello", help="say hello (example plugin)")
    parser.add_argument("--name", default="world")
    parser.set_defaults(handler=_hello)


@hookimpl
def prepare_serve_settings(settings):
    """DSERVE_EXAMPLE_SERVED_NAME renames the served model (a plugin may rewrite the settings)."""
    name = os.environ.get("DSERVE_EXAMPLE_SERVED_NAME")
    return settings.model_copy(update={"served_model_name": name}) if name else None


@hookimpl
def launch_server(settings):
    """DSERVE_EXAMPLE_DRY_RUN: say what would be served and exit instead of serving."""
    if not os.environ.get("DSERVE_EXAMPLE_DRY_RUN"):
        return None
    print(f"example plugin: would serve {settings.served_model_name} on port {settings.port}")
    return 3


def _mark(event, state):
    marker = os.environ.get("DSERVE_EXAMPLE_MARKER")
    if marker:
        with Path(marker).open("a") as f:
            f.write(f"{event} {state.model_id}\n")


@hookimpl
def server_startup(state):
    _mark("startup", state)


@hookimpl
def server_shutdown(state):
    _mark("shutdown", state)
