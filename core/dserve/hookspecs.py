"""The hooks a dserve plugin can implement.

A plugin is a module named by a setuptools entry point in the ``dserve`` group::

    [project.entry-points.dserve]
    myplugin = "my_package.plugin"

and decorates functions with :data:`hookimpl`. Hooks are for registration and lifecycle only;
the work itself (models, engines) lives in classes the registrations name lazily as
"module:attr" strings, so listing plugins imports no torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from dserve.fields import DecodingField
    from dserve.registry import EngineSpec, ModelSpec
    from dserve.service import GenerationService
    from dserve.settings import Settings

hookspec = pluggy.HookspecMarker("dserve")
hookimpl = pluggy.HookimplMarker("dserve")


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register model families.

    Call ``register(ModelSpec(...))`` once per family. A checkpoint is matched to a family by
    the ``architectures`` list of its ``config.json``; the spec's ``loader`` string names a
    callable ``(path, *, dtype, device) -> dserve.modeling.DiffusionModel``.
    """


@hookspec
def register_engines(register: Callable[[EngineSpec], None]) -> None:
    """Register decoding engines.

    Call ``register(EngineSpec(...))`` once per engine, listing its algorithms, each with its
    runner class, its parameter model and the model capabilities it needs. Requests pick an
    engine with ``engine`` and an algorithm with ``generation_algorithm``.
    """


@hookspec
def register_server_flags(register: Callable[[DecodingField], None]) -> None:
    """Add server flags for an engine's own decoding parameters.

    Call ``register(DecodingField(...))`` once per flag. Each becomes a ``dserve serve`` option
    (``flags``, or ``--name-with-dashes``), a ``DSERVE_<NAME>`` environment variable and a
    ``Settings`` attribute, with the declared type and bounds. A field with ``param=True`` is a
    server default for the algorithm parameter of that name (algorithms that lack it ignore it);
    a boolean field with ``selects=(engine, algorithm)`` makes that pair the server's default
    when it is on and no ``--engine`` / ``--algorithm`` is given. The core names no engine's
    algorithm: an engine's own flags (fastdllm's among them) come through this hook.
    """


@hookspec
def register_routes(add_route: Callable[..., None]) -> None:
    """Add HTTP routes to the server.

    ``add_route(path, endpoint, methods=["GET"], summary=None)`` takes a Starlette endpoint
    (``async def endpoint(request) -> Response``). The server state is reachable as
    ``request.app.state.dserve``. Routes pass through the same middleware as the core's and
    appear in ``/openapi.json`` under ``summary`` (default: the endpoint's docstring).
    """


@hookspec
def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``dserve`` CLI.

    Add a parser with ``subparsers.add_parser(name, help=...)`` and set its handler with
    ``parser.set_defaults(handler=fn)``, where ``fn(args) -> int`` returns the exit status.
    """


@hookspec(firstresult=True)
def prepare_serve_settings(settings: Settings) -> Settings | None:
    """Rewrite `dserve serve`'s settings before anything starts, or return None.

    The operations wing converts a ``--dcp-path`` checkpoint here (once, before any worker
    starts) and returns settings that serve the converted directory. The first plugin that
    returns settings wins. Raise ``ValueError`` for bad input: `dserve serve` prints its
    message and exits with status 2.
    """


@hookspec(firstresult=True)
def launch_server(settings: Settings) -> int | None:
    """Run `dserve serve` in place of the core's single-process server, or return None.

    The operations wing runs its multi-GPU front here for ``--gpus`` / ``--gpu-ids``. The
    first plugin that returns an exit status wins; with none, the core serves in-process.
    """


@hookspec
def server_startup(state: GenerationService) -> None:
    """Called once the server has loaded its model and started its scheduler.

    ``state`` is the server's :class:`dserve.service.GenerationService` (also
    ``request.app.state.dserve`` in a route): ``settings``, ``registry``, ``model`` (the loaded
    ``DiffusionModel``), ``model_id``, ``model_spec`` and ``scheduler``.
    """


@hookspec
def server_shutdown(state: GenerationService) -> None:
    """Called when the server stops, after in-flight requests have drained.

    ``state`` is the same :class:`dserve.service.GenerationService` ``server_startup`` got;
    its model may be absent when loading never finished.
    """
