"""Which request body fields the server honours, ignores or refuses (docs/api.md, "Fields").

OpenAI clients and frameworks send fields by default that a diffusion server has no use for
(`store`, `parallel_tool_calls`, `tool_choice: "auto"`, ...). As vLLM does, a field the server
does not know is accepted, ignored and reported: logged once per field name per process and
named in the `X-Ignored-Fields` response header. `--strict-fields` turns that back into a 400.

Fields the server knows but cannot honour are refused by name whatever the mode, unless the
value asks for nothing (`tools: []`, `response_format: {"type": "text"}`, `logit_bias: {}`):
answering as if they had been honoured would be wrong output, not tolerance.

Token filters (`top_k`, `min_p`, `repetition_penalty`) reach an algorithm whose parameter model
has them (Dream's samplers have `top_k`); elsewhere their neutral value passes (it asks for
nothing) and any other value is refused by name, with the algorithms that have it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from dserve.errors import BadRequest

log = structlog.get_logger("dserve.request_fields")

IGNORED_FIELDS_HEADER = "X-Ignored-Fields"


@dataclass(frozen=True)
class Refused:
    """A known field the server cannot honour: `asks_nothing(value)` says when it is harmless."""

    name: str
    asks_nothing: Callable[[Any], bool]
    why: str


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {} or value == ""


def _text_format(value: Any) -> bool:
    return value is None or (isinstance(value, Mapping) and value.get("type") == "text")


def _no_forced_tool(value: Any) -> bool:
    return value in (None, "none", "auto")


REFUSED: tuple[Refused, ...] = (
    Refused("tools", _empty, "tool calling is not supported"),
    Refused("functions", _empty, "function calling is not supported"),
    Refused("tool_choice", _no_forced_tool, "tool calling is not supported (only 'none' or 'auto' with no tools)"),
    Refused("function_call", _no_forced_tool, "function calling is not supported"),
    Refused("response_format", _text_format, "structured output is not supported; only {'type': 'text'}"),
    Refused("logit_bias", _empty, "logit_bias is not supported by diffusion decoding"),
    Refused("guided_json", _empty, "guided decoding is not supported"),
    Refused("guided_regex", _empty, "guided decoding is not supported"),
    Refused("guided_choice", _empty, "guided decoding is not supported"),
    Refused("guided_grammar", _empty, "guided decoding is not supported"),
    Refused("suffix", _empty, "suffix (insertion) is not supported"),
    Refused("best_of", lambda v: v is None or v == 1, "best_of needs sequence scores, which diffusion decoding has not"),
    Refused("min_tokens", lambda v: v is None or v == 0, "min_tokens is not supported; use ignore_eos"),
    Refused("prompt_logprobs", lambda v: v is None or v == 0, "prompt_logprobs are not supported"),
)

# Token filters: value -> asks nothing (vLLM's "off" values included: top_k -1 or 0).
TOKEN_FILTERS: dict[str, Callable[[Any], bool]] = {
    "top_k": lambda v: v is None or v in (-1, 0),
    "min_p": lambda v: v is None or v == 0,
    "repetition_penalty": lambda v: v is None or v == 1,
}

_reported: set[str] = set()  # field names already logged as ignored (once per process)


@dataclass(frozen=True)
class SortedFields:
    """A body's extra fields after the policy: what goes on to the algorithm, what was ignored."""

    params: dict[str, Any]
    ignored: tuple[str, ...]


def check_refused(extras: Mapping[str, Any]) -> None:
    """400 naming the first field the server cannot honour that asks for something."""
    for rule in REFUSED:
        if rule.name in extras and not rule.asks_nothing(extras[rule.name]):
            raise BadRequest(f"{rule.name!r}: {rule.why}", param=rule.name, code="unsupported_field")


def sort_fields(
    extras: Mapping[str, Any],
    *,
    algorithm_params: Collection[str],
    algorithm: str,
    known_params: Mapping[str, Collection[str]],
    strict: bool,
) -> SortedFields:
    """Split a body's extra fields (those the request model does not declare).

    `algorithm_params`: the chosen algorithm's (`algorithm`, "engine/name") parameters, passed
    on; `known_params`: every name some registered algorithm or decoding field uses, with the
    algorithms that have it (another algorithm's parameter is refused, naming them); anything
    else is unknown.
    """
    check_refused(extras)
    refused_names = {rule.name for rule in REFUSED}
    params: dict[str, Any] = {}
    ignored: list[str] = []
    for name, value in extras.items():
        if name in TOKEN_FILTERS and TOKEN_FILTERS[name](value):
            continue  # asks for nothing ("off"), whatever the algorithm
        if name in algorithm_params:
            params[name] = value
        elif name in TOKEN_FILTERS:
            users = sorted(known_params.get(name, ()))
            where = f"; algorithms that have it: {', '.join(users)}" if users else ""
            raise BadRequest(f"{name!r} is not supported by this algorithm{where}", param=name, code="unsupported_field")
        elif known_params.get(name):
            raise BadRequest(
                f"{name!r} is a parameter of {', '.join(sorted(known_params[name]))}, not of {algorithm}",
                param=name,
                code="unsupported_field",
            )
        elif name in known_params:
            params[name] = value  # a declared decoding field: resolution drops it where unused
        elif name in refused_names:
            continue  # asks for nothing (checked above): honoured as it is
        elif strict:
            raise BadRequest(f"unknown field {name!r} (the server runs with --strict-fields)", param=name, code="unknown_field")
        else:
            ignored.append(name)
    report_ignored(ignored)
    return SortedFields(params, tuple(sorted(ignored)))


# a client choosing field names must not grow the process's memory or flood its log without bound
MAX_REPORTED_NAMES = 1000
MAX_HEADER_NAMES = 32
MAX_HEADER_NAME_CHARS = 64


def report_ignored(names: Collection[str]) -> None:
    for name in names:
        if name in _reported or len(_reported) > MAX_REPORTED_NAMES:
            continue
        _reported.add(name)
        if len(_reported) > MAX_REPORTED_NAMES:
            log.warning("request fields ignored", note=f"{MAX_REPORTED_NAMES} distinct names logged; no more are")
        else:
            log.warning("request field ignored", field=name, note="logged once per field name")


def header_safe(name: str) -> str:
    """A field name as a header may carry it: printable ASCII, anything else escaped as in JSON
    (`\\u00e9`, `\\n`), cut to MAX_HEADER_NAME_CHARS (a name is the client's choice: it
    may hold control characters, surrogates or non-Latin-1 text, none of which a header can)."""
    escaped = json.dumps(name)[1:-1]  # ensure_ascii: non-ASCII and control characters escaped
    return escaped if len(escaped) <= MAX_HEADER_NAME_CHARS else escaped[: MAX_HEADER_NAME_CHARS - 3] + "..."


def ignored_header(sorted_fields: SortedFields) -> dict[str, str]:
    names = [header_safe(n) for n in sorted_fields.ignored[:MAX_HEADER_NAMES]]
    if len(sorted_fields.ignored) > MAX_HEADER_NAMES:
        names.append(f"... ({len(sorted_fields.ignored) - MAX_HEADER_NAMES} more)")
    return {IGNORED_FIELDS_HEADER: ", ".join(names)} if names else {}
