"""The request side of serving: from a validated body to queued sequences (engine and
algorithm choice, parameter resolution into a RequestSpec, limits) on the model and scheduler
that loader.py provides."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import create_model

from dserve import loader
from dserve.errors import APIError, BadRequest, NotFound, Unavailable
from dserve.fields import server_param_defaults
from dserve.output import OutputTracker
from dserve.params import CORE_PARAM_NAMES, ParamError, params_schema, resolve_params
from dserve.registry import AlgorithmSpec, EngineSpec, ModelSpec, Registry
from dserve.request_fields import SortedFields, sort_fields
from dserve.scheduler import GenerationHandle, Scheduler
from dserve.sequence import RequestSpec, Sequence
from dserve.settings import Settings

log = structlog.get_logger("dserve.service")


@dataclass(frozen=True)
class Choice:
    """An engine and one of its algorithms (a request's, or the server's default)."""

    engine: EngineSpec
    algorithm: AlgorithmSpec


class GenerationService:
    """Everything between a validated request and the scheduler's queue."""

    def __init__(self, settings: Settings, registry: Registry):
        self.settings = settings
        self.registry = registry
        self.model: Any = None
        self.model_spec: ModelSpec | None = None
        self.model_id: str = settings.served_model_name or ""
        self.scheduler: Scheduler | None = None
        self.load_error: str | None = None  # why loading failed, for /health
        self.load_exception: BaseException | None = None
        self.created = int(time.time())
        self.on_step: Callable[[int, list[int]], None] | None = None  # set by the server to feed metrics
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.scheduler is not None and not self.scheduler.draining

    def load(self) -> None:
        """Load the model and start the scheduler (loader.py); runs on a thread at startup.
        A failure is kept in `load_error` (for /health) and raised."""
        try:
            if self.settings.engine:  # a name that cannot resolve fails before the model loads
                self._choice(self.settings.engine, self.settings.algorithm)
            loaded = loader.load(self.settings, self.registry)
            self.model, self.model_spec, self.model_id = loaded.model, loaded.spec, loaded.model_id
            self.default_choice()  # fail at startup, not per request, if the defaults are wrong
            self.scheduler = loader.start_scheduler(self.model, self.settings, self.on_step)
            self._ready.set()
        except Exception as exc:  # noqa: BLE001
            self.load_exception, self.load_error = exc, describe_error(exc)
            log.error("model load failed", error=self.load_error)
            raise

    def shutdown(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    # ---- engine / algorithm -------------------------------------------------------------------

    def default_choice(self) -> Choice:
        return self.choose(None, None)

    def choose(self, engine: str | None, algorithm: str | None) -> Choice:
        """Pick the engine and algorithm: request > server default > model family default."""
        s, spec = self.settings, self.model_spec
        if engine is None and algorithm is None:
            engine, algorithm = s.engine, s.algorithm
            if engine is None and algorithm is None:
                engine, algorithm = self._selected_by_flag()
        if engine is None and algorithm is not None:
            default = s.engine or (spec.default_engine if spec else None)
            candidates = self.registry.engines_with_algorithm(algorithm)
            preferred = [e for e in candidates if e.name == default]
            if preferred or len(candidates) == 1:
                engine = (preferred or candidates)[0].name
            elif not candidates:
                raise BadRequest(
                    f"unknown generation_algorithm {algorithm!r}; valid: {', '.join(self.registry.all_algorithm_names())}",
                    param="generation_algorithm",
                    code="unknown_algorithm",
                )
            else:
                raise BadRequest(
                    f"generation_algorithm {algorithm!r} exists in several engines "
                    f"({', '.join(e.name for e in candidates)}); name one with 'engine'",
                    param="engine",
                )
        engine = engine or (spec.default_engine if spec else None)
        if engine is None:
            raise BadRequest("no engine given and the model family names no default", param="engine")
        return self._choice(engine, algorithm)

    def _selected_by_flag(self) -> tuple[str | None, str | None]:
        """A plugin's boolean server flag that, when on, picks the default engine and algorithm."""
        for flag in self.registry.server_flags.values():
            if flag.selects and flag.setting_name and getattr(self.settings, flag.setting_name, False):
                return flag.selects
        return None, None

    def _choice(self, engine_name: str, algorithm: str | None) -> Choice:
        engine = self.registry.engine(engine_name)
        if engine is None:
            raise BadRequest(
                f"unknown engine {engine_name!r}; valid: {', '.join(sorted(self.registry.engines))}",
                param="engine",
                code="unknown_engine",
            )
        if algorithm is None:  # the server's default, else the family's, else the engine's
            family_default = self.model_spec.default_algorithm if self.model_spec else None
            if self.settings.algorithm and engine.algorithm(self.settings.algorithm):
                algorithm = self.settings.algorithm
            elif family_default and engine.algorithm(family_default):
                algorithm = family_default
            else:
                algorithm = engine.default_algorithm
        alg = engine.algorithm(algorithm)
        if alg is None:
            raise BadRequest(
                f"unknown generation_algorithm {algorithm!r} for engine {engine.name!r}; "
                f"valid: {', '.join(a.name for a in engine.algorithms)}",
                param="generation_algorithm",
                code="unknown_algorithm",
            )
        if self.model is not None:
            missing = alg.requires - self.model.info.capabilities
            if missing:
                raise BadRequest(
                    f"{engine.name}/{alg.name} needs model capabilities {sorted(missing)}, "
                    f"which {self.model_id} ({self.model.info.family}) does not have "
                    f"(it has {sorted(self.model.info.capabilities)})",
                    param="generation_algorithm",
                    code="unsupported_algorithm",
                )
        return Choice(engine, alg)

    def algorithms_for_model(self) -> list[dict]:
        caps = self.model.info.capabilities if self.model is not None else frozenset()
        default = self.default_choice() if self.model is not None else None
        out = []
        for engine in self.registry.engines.values():
            for alg in engine.algorithms:
                missing = sorted(alg.requires - caps)
                out.append(
                    {
                        "engine": engine.name,
                        "engine_aliases": list(engine.aliases),
                        "algorithm": alg.name,
                        "description": alg.description,
                        "available": not missing,
                        "missing_capabilities": missing,
                        "default": default is not None
                        and (engine.name, alg.name) == (default.engine.name, default.algorithm.name),
                        "parameters": params_schema(alg.load_params()),
                    }
                )
        return out

    def decoding_fields(self) -> list[dict]:
        """The declared decoding fields (the core's and the plugins'): bounds, flag, variable and
        the server's default for each (for /generation/algorithms)."""
        out = []
        for f in self.registry.decoding_fields:
            one_field: dict[str, Any] = {f.name: (f.optional_type(), f.field_info(None))}
            schema = params_schema(create_model("F", **one_field))[f.name]
            schema.pop("default", None)
            out.append(
                {
                    "name": f.name,
                    **schema,
                    "request_field": f.wire,
                    "flags": list(f.cli_flags) if f.setting_name else [],
                    "env": f.env_var,
                    "server_default": getattr(self.settings, f.setting_name) if f.setting_name else None,
                }
            )
        return out

    # ---- requests -----------------------------------------------------------------------------

    def check_model(self, name: str) -> None:
        if not self.ready:
            if self.scheduler is not None and self.scheduler.draining:
                raise Unavailable("the server is shutting down", code="server_shutting_down")
            raise Unavailable("the model is still loading", code="model_loading")
        if name != self.model_id:
            raise NotFound(
                f"The model {name!r} does not exist; this server serves {self.model_id!r}", param="model", code="model_not_found"
            )

    def resolve(self, engine: str | None, algorithm: str | None, fields: dict[str, Any]) -> RequestSpec:
        """A request's engine, algorithm and parameters, resolved once (request > server
        defaults > model defaults > algorithm defaults) into what its sequences carry."""
        choice = self.choose(engine, algorithm)
        params_cls = choice.algorithm.load_params()
        server = server_param_defaults(self.settings, self.registry.decoding_fields)
        # a plugin's server flag is a default for the algorithms that have that parameter only;
        # in a request body it is an unknown field for the others, like any typo
        server = {k: v for k, v in server.items() if k in params_cls.model_fields or k in CORE_PARAM_NAMES}
        try:
            params = resolve_params(
                params_cls,
                self.model.info.default_params,
                server,
                request=fields,
                algorithm=f"{choice.engine.name}/{choice.algorithm.name}",
            )
        except ParamError as exc:
            raise BadRequest(str(exc), param=exc.param) from None
        return RequestSpec(choice.engine, choice.algorithm, params)

    def resolve_body(self, body: Any) -> tuple[RequestSpec, SortedFields]:
        """A request body's RequestSpec, after the field policy (request_fields.py): its
        unknown fields ignored (or refused with --strict-fields), unhonourable ones refused."""
        choice = self.choose(body.engine, body.generation_algorithm)
        own = choice.algorithm.load_params().model_fields
        fields = body.algorithm_fields()
        extras = {k: fields.pop(k) for k in list(body.model_extra or {}) if k in fields}
        sorted_fields = sort_fields(
            extras,
            algorithm_params=own,
            algorithm=f"{choice.engine.name}/{choice.algorithm.name}",
            known_params=self.known_params(),
            strict=self.settings.strict_fields,
        )
        fields.update(sorted_fields.params)
        if "top_p" in own and getattr(body, "top_p", None) is not None:  # the samplers that filter with it
            fields["top_p"] = body.top_p
        spec = self.resolve(choice.engine.name, choice.algorithm.name, fields)
        return spec, sorted_fields

    def known_params(self) -> dict[str, list[str]]:
        """Every parameter name some registered algorithm has, with the algorithms that have it."""
        if not hasattr(self, "_known_params"):
            known: dict[str, list[str]] = {}
            for engine in self.registry.engines.values():
                for alg in engine.algorithms:
                    for name in alg.load_params().model_fields:
                        known.setdefault(name, []).append(f"{engine.name}/{alg.name}")
            for f in self.registry.decoding_fields:
                known.setdefault(f.name, [])
            self._known_params = known
        return self._known_params

    def submit(
        self,
        prompt_ids: list[int],
        spec: RequestSpec,
        *,
        max_tokens: int | None,
        n: int,
        seed: int | None,
        stop: list[str],
        loop: asyncio.AbstractEventLoop,
        ignore_eos: bool = False,
        logprobs: int | None = None,
        stream_canvas: bool = False,
    ) -> list[GenerationHandle]:
        """Queue `n` sequences of one prompt, decoded as `spec` (from `resolve`) says; with
        `logprobs`, each committed token's log-probability and that many alternatives."""
        params = spec.params
        if logprobs is not None and not spec.algorithm.load_runner().reports_logprobs:
            raise BadRequest(
                f"{spec.engine.name}/{spec.algorithm.name} does not report logprobs",
                param="logprobs",
                code="logprobs_not_supported",
            )
        max_tokens = max_tokens or self.settings.max_tokens
        if not prompt_ids:
            raise BadRequest("the prompt is empty", param="messages")
        canvas = len(prompt_ids) + params.gen_length(max_tokens)
        if canvas > self.model.info.max_length:
            raise BadRequest(
                f"prompt ({len(prompt_ids)} tokens) + generation ({params.gen_length(max_tokens)} slots, max_tokens "
                f"rounded up to whole blocks) exceeds the model's context of {self.model.info.max_length} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        deadline = time.monotonic() + self.settings.request_timeout if self.settings.request_timeout else None
        handles = []
        for i in range(n):
            seq = Sequence(
                prompt_ids, max_tokens, params, seed=None if seed is None else seed + i, ignore_eos=ignore_eos, spec=spec
            )
            seq.logprobs = logprobs
            stop_ids = () if ignore_eos else self.model.info.stop_ids
            tracker = OutputTracker(self.model.tokenizer, seq.gen_length, max_tokens, stop_ids, stop)
            handles.append(GenerationHandle(seq, tracker, loop, deadline=deadline, stream_canvas=stream_canvas))
        if self.scheduler is None:  # check_model() said loading already; a plugin route may not have asked
            raise Unavailable("the model is still loading", code="model_loading")
        self.scheduler.submit(handles)
        return handles


def describe_error(exc: BaseException) -> str:
    """One line: an APIError's message as clients see it, else the exception's type and text."""
    if isinstance(exc, APIError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def collect_text(handle: GenerationHandle) -> str:
    """Await a handle's whole text; raise its error."""
    parts = []
    while True:
        event = await handle.events.get()
        if event.kind == "delta":
            parts.append(event.text)
        elif event.kind == "error":
            raise event.error or APIError("generation failed")
        elif event.kind == "done":
            return "".join(parts)
