"""The plugin host: pluggy over setuptools entry points in the ``dserve`` group.

``DSERVE_PLUGINS`` narrows what loads: a comma-separated list of entry-point names
(``DSERVE_PLUGINS=llada,fastdllm``); unset loads every installed plugin, and an empty value
loads none (like ``LLM_LOAD_PLUGINS`` in simonw/llm). The core distribution's own entry points
(its operations wing, ``dserve_ops``) always load, as llm's default plugins do: narrowing the
model and engine plugins must not take `dserve bench` or `--gpus` away.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib.metadata import entry_points

import pluggy

from dserve import hookspecs
from dserve.fields import DecodingField
from dserve.registry import EngineSpec, ModelSpec, Registry

ENTRY_POINT_GROUP = "dserve"
PLUGINS_ENV = "DSERVE_PLUGINS"
CORE_DISTRIBUTION = "dserve"


def _allowed_plugins() -> set[str] | None:
    raw = os.environ.get(PLUGINS_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def create_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        allowed = _allowed_plugins()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and ep.name not in allowed and not _is_builtin(ep):
                continue
            if pm.get_plugin(ep.name) is None:
                pm.register(ep.load(), name=ep.name)
    return pm


def _is_builtin(ep) -> bool:
    return ep.dist is not None and ep.dist.name.lower() == CORE_DISTRIBUTION


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    return create_plugin_manager()


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Ask every plugin to register; remember which plugin registered what."""
    registry = Registry()
    for name, plugin in pm.list_name_plugin():
        # Call one plugin at a time so that every registration records its owner.
        others = [p for p in pm.get_plugins() if p is not plugin]
        only_this = pm.subset_hook_caller
        only_this("register_models", remove_plugins=others)(
            register=lambda spec, _n=name: _add(registry.add_model, spec, ModelSpec, _n)
        )
        only_this("register_engines", remove_plugins=others)(
            register=lambda spec, _n=name: _add(registry.add_engine, spec, EngineSpec, _n)
        )
        only_this("register_server_flags", remove_plugins=others)(
            register=lambda spec, _n=name: _add(registry.add_server_flag, spec, DecodingField, _n)
        )
    return registry


def _add(add, spec, expected: type, plugin: str) -> None:
    if not isinstance(spec, expected):
        raise TypeError(f"plugin {plugin!r} registered {spec!r}, expected a {expected.__name__}")
    add(spec, plugin)


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    return build_registry(get_plugin_manager())


def plugin_summary(pm: pluggy.PluginManager | None = None) -> list[dict]:
    """Per plugin: its name, distribution, whether it is built in (comes with the core
    distribution), and what it registers (for `dserve plugins`)."""
    pm = pm or get_plugin_manager()
    registry = build_registry(pm)
    dists = _distributions()
    builtin = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if _is_builtin(ep)}
    rows = []
    for name, _plugin in pm.list_name_plugin():
        rows.append(
            {
                "name": name,
                "distribution": dists.get(name),
                "builtin": name in builtin,
                "models": [
                    {"name": m.name, "architectures": list(m.architectures)}
                    for m in registry.models.values()
                    if registry.owners[("model", m.name)] == name
                ],
                "engines": [
                    {
                        "name": e.name,
                        "aliases": list(e.aliases),
                        "default_algorithm": e.default_algorithm,
                        "algorithms": [a.name for a in e.algorithms],
                    }
                    for e in registry.engines.values()
                    if registry.owners[("engine", e.name)] == name
                ],
                "server_flags": [
                    {"name": f.name, "flags": list(f.cli_flags), "env": f.env_var}
                    for f in registry.server_flags.values()
                    if registry.owners[("server_flag", f.name)] == name
                ],
            }
        )
    return rows


def _distributions() -> dict[str, str]:
    out = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None:
            out[ep.name] = f"{ep.dist.name} {ep.dist.version}"
    return out
