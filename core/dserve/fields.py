"""A request's decoding fields, declared once.

Each :class:`DecodingField` gives a field's name, type, bounds, description, CLI flags and
whether the server has a default for it. Everything else derives from this table:

- the wire protocol (``protocol.DiffusionFields``: request body fields, with their bounds),
- the server defaults (``Settings``: one attribute per field, read from ``--flag`` or
  ``DSERVE_<NAME>``, checked against the same bounds at startup),
- the ``dserve serve`` flags and their help,
- the async-jobs route and ``GET /generation/algorithms`` (through the same models),
- the base of every algorithm's parameter model (``params.DecodingParams``).

Plugins add fields of their own (their algorithms' server flags) through the
``register_server_flags`` hook; they are the same kind of declaration.

Bounds are checked where a value enters: the request body (a 400 naming the field) or the
settings (startup refuses). An algorithm's parameter model may only narrow a field by a rule of
its own (e.g. "not with threshold"), never with other bounds for the same field.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field


@dataclass(frozen=True)
class DecodingField:
    """One decoding field: a request body field and/or a server flag."""

    name: str  # the request body field, and the parameter name algorithms see
    type: Any  # the value's type; everywhere optional (None = not given, a lower layer decides)
    description: str
    bounds: Mapping[str, float] | None = None  # pydantic constraints: ge, gt, le, lt, max_length
    flags: tuple[str, ...] = ()  # CLI flags, canonical first (default: --name-with-dashes)
    setting: str | None = ""  # Settings attribute and DSERVE_ suffix; "" = name; None = no server flag
    server_default: Any = None  # what the server uses when neither flag nor variable gives one
    wire: bool = True  # a request body field
    param: bool = True  # handed to the algorithm's parameter model (False: engine / algorithm choice)
    negative_flags: tuple[str, ...] = ()  # boolean flags: extra spellings that turn it off
    selects: tuple[str, str] | None = None  # boolean flags: when on, the default (engine, algorithm)
    request_description: str | None = None  # on the wire, where it differs from the flag's

    @property
    def setting_name(self) -> str | None:
        return self.name if self.setting == "" else self.setting

    @property
    def env_var(self) -> str | None:
        return f"DSERVE_{self.setting_name.upper()}" if self.setting_name else None

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return self.flags or ("--" + (self.setting_name or self.name).replace("_", "-"),)

    def field_info(self, default: Any = None, description: str | None = None) -> Any:
        """The pydantic field: this declaration's bounds, with a default (and a description of
        its own where an algorithm's parameter model explains what the field means to it).
        Typed Any, as pydantic's own `Field` is, so that `x: int = spec.field_info(1)` checks."""
        bounds: dict[str, Any] = dict(self.bounds or {})
        return Field(default, description=description or self.description, **bounds)

    def optional_type(self) -> Any:
        return self.type | None


REMASKING = Literal["low_confidence", "random"]

# The core's decoding fields, in the order the help and the docs list them.
CORE_FIELDS: tuple[DecodingField, ...] = (
    DecodingField(
        "engine",
        str,
        "decoding engine, e.g. llada, fastdllm, dinfer (default: the model family's)",
        bounds={"max_length": 64},
        param=False,
    ),
    DecodingField(
        "generation_algorithm",
        str,
        "algorithm of the engine, e.g. dual_cache (default: the model family's)",
        bounds={"max_length": 64},
        setting="algorithm",
        flags=("--algorithm",),
        param=False,
    ),
    DecodingField(
        "steps",
        int,
        "denoising steps for the whole generation (default: one token per step)",
        bounds={"ge": 1, "le": 512},
        flags=("--steps", "--diffusion-steps"),
    ),
    DecodingField(
        "block_length",
        int,
        "semi-autoregressive block length (default: the algorithm's)",
        bounds={"ge": 1, "le": 4096},
        flags=("--block-length", "--block-size"),
    ),
    DecodingField("remasking", REMASKING, "which masked positions a step commits: low_confidence | random"),
    DecodingField(
        "threshold",
        float,
        "confidence threshold for parallel decoding (0: commit every masked position)",
        bounds={"ge": 0.0, "le": 1.0},
    ),
    DecodingField("factor", float, "factor rule for parallel decoding", bounds={"gt": 0.0, "le": 64.0}),
    DecodingField("cfg_scale", float, "classifier-free guidance scale (0: off)", bounds={"ge": 0.0, "le": 20.0}),
    DecodingField("temperature", float, "sampling temperature (0: greedy)", bounds={"ge": 0.0, "le": 2.0}),
    DecodingField(
        "max_tokens",
        int,
        "tokens to generate when a request gives no max_tokens",
        bounds={"ge": 1, "le": 65536},
        server_default=128,
        param=False,
        request_description="most tokens to generate (default: the server's --max-tokens)",
    ),
)


def declared(name: str) -> DecodingField:
    """The core's declaration of a field (for parameter models that use it)."""
    return next(f for f in CORE_FIELDS if f.name == name)


def wire_fields(fields: Iterable[DecodingField] = CORE_FIELDS) -> dict[str, Any]:
    """``create_model`` field definitions for the request body: every wire field, optional."""
    return {f.name: (f.optional_type(), f.field_info(None, f.request_description)) for f in fields if f.wire}


def settings_fields(fields: Iterable[DecodingField]) -> dict[str, Any]:
    """``create_model`` field definitions for Settings: one per field with a server flag."""
    out = {}
    for f in fields:
        if f.setting_name is None:
            continue
        annotation = f.type if f.server_default is not None else f.optional_type()
        out[f.setting_name] = (annotation, f.field_info(f.server_default))
    return out


def add_cli_arguments(group: argparse._ActionsContainer, fields: Iterable[DecodingField]) -> None:
    """One option per server flag (its aliases too); the value goes to the Settings attribute."""
    for f in fields:
        if f.setting_name is None:
            continue
        dest = f.setting_name
        if f.type is bool:
            group.add_argument(*f.cli_flags, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=f.description)
            for negative in f.negative_flags:  # older spellings of --no-<flag>
                group.add_argument(negative, dest=dest, action="store_false", default=None, help=argparse.SUPPRESS)
            continue
        choices = getattr(f.type, "__args__", None) if getattr(f.type, "__origin__", None) is Literal else None
        if choices:
            group.add_argument(*f.cli_flags, dest=dest, choices=choices, help=f.description)
        else:
            group.add_argument(*f.cli_flags, dest=dest, type=f.type, help=f.description)


def server_param_defaults(settings: Any, fields: Iterable[DecodingField]) -> dict[str, Any]:
    """The server's defaults for the algorithm parameters (None = not set)."""
    return {f.name: getattr(settings, f.setting_name, None) for f in fields if f.param and f.setting_name}


def param_names(fields: Iterable[DecodingField]) -> frozenset[str]:
    """Fields any algorithm may be given: one that does not use a field ignores it."""
    return frozenset(f.name for f in fields if f.param)
