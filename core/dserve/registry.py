"""What plugins register: model families and decoding engines, as lazy "module:attr" strings.

Nothing here imports torch, so `dserve plugins` can list everything without loading a model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dserve.fields import CORE_FIELDS, DecodingField

if TYPE_CHECKING:  # the registry imports no torch: runner classes are named, not imported
    from dserve.engine import AlgorithmRunner
    from dserve.params import DecodingParams


def import_string(target: str) -> Any:
    """Resolve "package.module:attribute" (the form every registration uses)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ImportError(f"{module_name!r} has no attribute {attr!r}") from exc


# Capabilities a model may offer and an algorithm may need.
BIDIRECTIONAL = "bidirectional"  # every position attends to every other (LLaDA, Dream)
BLOCK_CAUSAL = "block_causal"  # blocks attend to themselves and earlier blocks (Nemotron)
KV_CACHE = "kv_cache"  # forward can read/write a KV cache for chosen position ranges
INPUTS_EMBEDS = "inputs_embeds"  # forward accepts embeddings instead of ids (soft tokens)


@dataclass(frozen=True)
class ModelSpec:
    """A model family, matched against a checkpoint's config.json `architectures`."""

    name: str
    architectures: tuple[str, ...]
    loader: str  # "module:callable(path, *, dtype, device) -> DiffusionModel"
    default_engine: str | None = None
    default_algorithm: str | None = None
    description: str = ""


@dataclass(frozen=True)
class AlgorithmSpec:
    """One decoding algorithm of an engine.

    `runner` builds the step-wise runner; `params` is a torch-free pydantic model listing the
    algorithm's parameters with their published defaults; `requires` are model capabilities.
    """

    name: str
    runner: str  # "module:Class", a dserve.engine.AlgorithmRunner subclass
    params: str  # "module:Class", a dserve.params.DecodingParams subclass
    requires: frozenset[str] = frozenset()
    description: str = ""

    def load_params(self) -> type[DecodingParams]:
        return import_string(self.params)

    def load_runner(self) -> type[AlgorithmRunner]:
        return import_string(self.runner)


@dataclass(frozen=True)
class EngineSpec:
    """A decoding engine: a named set of algorithms."""

    name: str
    algorithms: tuple[AlgorithmSpec, ...]
    default_algorithm: str
    aliases: tuple[str, ...] = ()
    description: str = ""

    def algorithm(self, name: str) -> AlgorithmSpec | None:
        return next((a for a in self.algorithms if a.name == name), None)


@dataclass
class Registry:
    """Everything the loaded plugins registered, with the plugin that registered it."""

    models: dict[str, ModelSpec] = field(default_factory=dict)
    engines: dict[str, EngineSpec] = field(default_factory=dict)
    server_flags: dict[str, DecodingField] = field(default_factory=dict)  # plugins' own decoding fields
    owners: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> plugin

    def add_model(self, spec: ModelSpec, plugin: str) -> None:
        if spec.name in self.models:
            raise ValueError(f"model family {spec.name!r} registered twice")
        self.models[spec.name] = spec
        self.owners[("model", spec.name)] = plugin

    def add_engine(self, spec: EngineSpec, plugin: str) -> None:
        taken = {n for e in self.engines.values() for n in (e.name, *e.aliases)}
        clash = {spec.name, *spec.aliases} & taken
        if clash:
            raise ValueError(f"engine name(s) {sorted(clash)} registered twice")
        if spec.algorithm(spec.default_algorithm) is None:
            raise ValueError(f"engine {spec.name!r}: default algorithm not among its algorithms")
        self.engines[spec.name] = spec
        self.owners[("engine", spec.name)] = plugin

    def add_server_flag(self, spec: DecodingField, plugin: str) -> None:
        taken = {f.name for f in self.decoding_fields} | {f.setting_name for f in self.decoding_fields}
        if {spec.name, spec.setting_name} & taken:
            raise ValueError(f"server flag {spec.name!r} registered twice (or it is a core field)")
        self.server_flags[spec.name] = spec
        self.owners[("server_flag", spec.name)] = plugin

    @property
    def decoding_fields(self) -> tuple[DecodingField, ...]:
        """The core's decoding fields, then the plugins' server flags."""
        return CORE_FIELDS + tuple(self.server_flags.values())

    def model_for_architectures(self, architectures: list[str]) -> ModelSpec | None:
        for arch in architectures:
            for spec in self.models.values():
                if arch in spec.architectures:
                    return spec
        return None

    def engine(self, name: str) -> EngineSpec | None:
        key = name.lower()
        for spec in self.engines.values():
            if key == spec.name or key in spec.aliases:
                return spec
        return None

    def engines_with_algorithm(self, algorithm: str) -> list[EngineSpec]:
        return [e for e in self.engines.values() if e.algorithm(algorithm) is not None]

    def all_algorithm_names(self) -> list[str]:
        return sorted({a.name for e in self.engines.values() for a in e.algorithms})
