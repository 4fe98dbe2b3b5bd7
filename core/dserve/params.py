"""Decoding parameters: the base every algorithm's parameter model extends.

Parameter models are plain pydantic (no torch) so that listing algorithms and validating
requests never loads a model. Values are resolved in this order, first wins:
request body > server defaults (CLI / DSERVE_* env) > model defaults > algorithm defaults.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from dserve.fields import CORE_FIELDS, declared, param_names

# The declared decoding fields (dserve.fields) every request may carry: an algorithm that does
# not use one of them ignores it, so one request body works across algorithms; any other
# unknown field is rejected, so typos do not pass silently. Plugins' server flags join them
# (the service passes the registry's list).
CORE_PARAM_NAMES = param_names(CORE_FIELDS)


class DecodingParams(BaseModel):
    """Parameters shared by the masked-diffusion algorithms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = declared("temperature").field_info(0.0)
    steps: int | None = declared("steps").field_info(None)
    block_length: int = declared("block_length").field_info(32)

    def steps_per_block(self, gen_length: int) -> int:
        """Steps each block gets: total steps split over the blocks, at least one."""
        blocks = max(1, -(-gen_length // self.block_length))
        total = self.steps if self.steps is not None else gen_length
        return max(1, -(-total // blocks))

    def gen_length(self, max_tokens: int) -> int:
        """The canvas is whole blocks: max_tokens rounded up (the output is cut back)."""
        return -(-max_tokens // self.block_length) * self.block_length

    def block_starts(self, prompt_len: int, gen_length: int) -> list[int]:
        """Where the canvas's blocks start, as offsets after the prompt (the first is 0): what
        a canvas stream (`stream_canvas`) reports. An algorithm with another layout overrides it."""
        return list(range(0, gen_length, self.block_length))


class ParamError(ValueError):
    """A decoding parameter is invalid; `param` names it for the OpenAI error object."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def resolve_params(
    params_cls: type[DecodingParams],
    *layers: Mapping[str, Any] | None,
    request: Mapping[str, Any] | None = None,
    algorithm: str = "",
    shared: Collection[str] = CORE_PARAM_NAMES,
) -> DecodingParams:
    """Merge parameter layers (lowest priority first, then `request`) and validate them for
    one algorithm.

    In `layers` (defaults) `None` means "not set" and never overrides a lower layer. In
    `request` (the body's fields, as sent) an explicit `null` is a value: for a nullable
    parameter it gives exactly what that parameter documents null to mean, whatever the
    defaults say; for a parameter that has no null meaning it is as if not sent. `shared`
    fields (the declared decoding fields) the algorithm does not use are dropped; any other
    unknown field is an error.
    """
    fields = params_cls.model_fields
    merged: dict[str, Any] = {}
    for layer, explicit in [*((layer, False) for layer in layers), (request, True)]:
        for key, value in (layer or {}).items():
            if value is None and not (explicit and key in fields):
                continue
            if value is None:  # an explicit null for one of this algorithm's parameters
                if nullable(fields[key].annotation):
                    merged[key] = None
                continue  # no null meaning: as if not sent (the defaults stand)
            if key not in fields:
                if key in shared:
                    continue
                known = ", ".join(sorted(fields))
                raise ParamError(
                    f"unknown parameter {key!r} for algorithm {algorithm!r}; its parameters are: {known}",
                    param=key,
                )
            merged[key] = value
    try:
        return params_cls.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or None
        raise ParamError(f"invalid value for {loc!r}: {err['msg']}", param=loc) from None


def nullable(annotation: Any) -> bool:
    """Whether a parameter's type admits None (`X | None`, `Optional[X]`)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(annotation)
    return annotation is type(None)


def params_schema(params_cls: type[DecodingParams]) -> dict[str, Any]:
    """Per parameter: type, default, bounds and description (for /generation/algorithms)."""
    schema = params_cls.model_json_schema()
    out = {}
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        variants = prop.pop("anyOf", None)
        if variants:  # Optional[X]: describe X, and say that null (= default rule) is allowed
            for variant in variants:
                if variant.get("type") != "null":
                    prop.update(variant)
            prop["nullable"] = True
        prop.pop("title", None)
        out[name] = prop
    return out
