"""The generation service: the loaded model, its scheduler, and the request path from
validated body to queued sequences (engine/algorithm choice, parameter resolution, prompt
tokenization, limits)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from dserve.errors import APIError, BadRequest, NotFound, Unavailable
from dserve.output import OutputTracker
from dserve.params import ParamError, params_schema, resolve_params
from dserve.registry import AlgorithmSpec, EngineSpec, ModelSpec, Registry, import_string
from dserve.scheduler import GenerationHandle, RunnerKey, Scheduler
from dserve.sequence import Sequence
from dserve.settings import Settings

log = structlog.get_logger("dserve.service")


@dataclass(frozen=True)
class Choice:
    engine: EngineSpec
    algorithm: AlgorithmSpec


class GenerationService:
    """Owns the model and the scheduler; everything between a validated request and the queue."""

    def __init__(self, settings: Settings, registry: Registry):
        self.settings = settings
        self.registry = registry
        self.model: Any = None
        self.model_spec: ModelSpec | None = None
        self.model_path: Path | None = None
        self.model_id: str = settings.served_model_name or ""
        self.scheduler: Scheduler | None = None
        self.load_error: str | None = None
        self.created = int(time.time())
        self.on_step = None  # set by the server to feed metrics
        self._ready = threading.Event()

    # ---- loading ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.scheduler is not None and not self.scheduler.draining

    def load(self) -> None:
        """Load the model and start the scheduler (runs on a background thread at startup)."""
        from dserve.modeling.loading import resolve_checkpoint_dir
        from dserve.modeling.quantization import load_dtype

        try:
            path = resolve_checkpoint_dir(self.settings.model or default_model_dir(self.registry))
            device = resolve_device(self.settings.device)
            if device.type == "cuda" and self.settings.gpu_memory_utilization < 1.0:
                import torch

                index = device.index if device.index is not None else torch.cuda.current_device()
                torch.cuda.set_per_process_memory_fraction(self.settings.gpu_memory_utilization, index)
            dtype = load_dtype(self.settings.quantization, self.settings.dtype, device)
            model, spec = load_model(path, self.registry, dtype=dtype, device=device, load_format=self.settings.load_format)
            apply_speed_settings(model, self.settings)
            if self.settings.tokenizer:
                from dserve.modeling.tokenizer import load_tokenizer

                model.tokenizer = load_tokenizer(self.settings.tokenizer)
            if model.tokenizer is None:
                raise ValueError(f"no tokenizer found in {path}; pass --tokenizer")
            self.model, self.model_spec, self.model_path = model, spec, path
            if not self.model_id:
                self.model_id = default_model_id(self.settings.model, path, self.registry)
            self.default_choice()  # fail at startup, not per request, if the defaults are wrong
            self.scheduler = Scheduler(
                self._make_runner,
                max_queue_size=self.settings.max_queue_size,
                max_wait_time=self.settings.max_wait_time,
                on_step=self.on_step,
            )
            self.scheduler.start()
            log.info("model loaded", model=self.model_id, path=str(path), family=spec.name, device=str(device))
            self._ready.set()
        except Exception as exc:  # noqa: BLE001
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model load failed", error=self.load_error)
            raise

    def _make_runner(self, key: RunnerKey):
        choice = self._choice(key[0], key[1])
        runner_cls = choice.algorithm.load_runner()
        # compile modes with CUDA graphs of their own replace dserve's graphs
        eager = self.settings.enforce_eager or (
            self.settings.compile and self.settings.compile_mode in ("reduce-overhead", "max-autotune")
        )
        return runner_cls(model_for_runner(self.model, runner_cls, eager), max_batch_size=self.settings.max_batch_size)

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
            if s.enable_apd and engine is None and algorithm is None:
                engine, algorithm = "fastdllm", "apd"
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

    def _choice(self, engine_name: str, algorithm: str | None) -> Choice:
        engine = self.registry.engine(engine_name)
        if engine is None:
            raise BadRequest(
                f"unknown engine {engine_name!r}; valid: {', '.join(sorted(self.registry.engines))}",
                param="engine",
                code="unknown_engine",
            )
        if algorithm is None:
            algorithm = (
                self.settings.algorithm
                if self.settings.algorithm and engine.algorithm(self.settings.algorithm)
                else (self.model_spec.default_algorithm if self.model_spec and engine.algorithm(self.model_spec.default_algorithm or "") else engine.default_algorithm)
            )
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
                        "default": default is not None and (engine.name, alg.name) == (default.engine.name, default.algorithm.name),
                        "parameters": params_schema(alg.load_params()),
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
            raise NotFound(f"The model {name!r} does not exist; this server serves {self.model_id!r}", param="model", code="model_not_found")

    def submit(
        self,
        prompt_ids: list[int],
        *,
        fields: dict[str, Any],
        engine: str | None,
        algorithm: str | None,
        max_tokens: int | None,
        n: int,
        seed: int | None,
        stop: list[str],
        loop: asyncio.AbstractEventLoop,
        ignore_eos: bool = False,
    ) -> tuple[Choice, list[GenerationHandle]]:
        choice = self.choose(engine, algorithm)
        params_cls = choice.algorithm.load_params()
        try:
            params = resolve_params(
                params_cls,
                self.model.info.default_params,
                self.settings.decoding_defaults(),
                fields,
                algorithm=f"{choice.engine.name}/{choice.algorithm.name}",
            )
        except ParamError as exc:
            raise BadRequest(str(exc), param=exc.param) from None
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
        key = (choice.engine.name, choice.algorithm.name)
        handles = []
        for i in range(n):
            seq = Sequence(prompt_ids, max_tokens, params, seed=None if seed is None else seed + i, ignore_eos=ignore_eos)
            stop_ids = () if ignore_eos else self.model.info.stop_ids
            tracker = OutputTracker(self.model.tokenizer, seq.gen_length, max_tokens, stop_ids, stop)
            handles.append(GenerationHandle(seq, key, tracker, loop, deadline=deadline))
        self.scheduler.submit(handles)
        return choice, handles


_graphed: dict[int, Any] = {}


def load_model(path: Path, registry: Registry, *, dtype, device, load_format: str = "auto"):
    """(model, its ModelSpec): the checkpoint directory's family, picked by config.json's
    `architectures`, loads it (load_format "dummy": random weights in its shape)."""
    from dserve.modeling.loading import read_config

    config = read_config(path)
    spec = registry.model_for_architectures(config.get("architectures") or [])
    if spec is None:
        known = sorted(a for m in registry.models.values() for a in m.architectures)
        raise ValueError(f"no installed plugin serves architectures {config.get('architectures')}; known: {known}")
    loader = import_string(spec.loader)
    if load_format == "dummy":
        return loader(path, dtype=dtype, device=device, load_format="dummy"), spec
    return loader(path, dtype=dtype, device=device), spec


def apply_speed_settings(model, settings: Settings) -> None:
    """--quantization, --no-flash-attention and --compile, applied once to a loaded model."""
    import torch

    if settings.quantization:
        from dserve.modeling.quantization import quantize_weights

        quantize_weights(model, settings.quantization)
        log.info("weights quantized", mode=settings.quantization)

    if not settings.flash_attention and torch.cuda.is_available():
        # process-wide SDPA switches: the flash and cuDNN (flash-style) kernels are off
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
    if settings.compile:
        mode = None if settings.compile_mode == "default" else settings.compile_mode
        # an instance attribute: nn.Module.__call__ finds it first, the class stays the same
        model.forward = torch.compile(model.forward, mode=mode, dynamic=True)
        log.info("model forward compiled", mode=settings.compile_mode)


def model_for_runner(model, runner_cls, enforce_eager: bool = False):
    """The model itself, or (GPU, graphable runner) one CUDA-graph wrapper shared by runners."""
    if enforce_eager or not runner_cls.graphable or model.device.type != "cuda":
        return model
    if id(model) not in _graphed:
        from dserve.modeling.cuda_graphs import GraphedModel

        _graphed[id(model)] = GraphedModel(model)
    return _graphed[id(model)]


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_model_dir(registry: Registry) -> str:
    """The embedded model: the first installed plugin that exposes EMBEDDED_MODEL_DIR."""
    import importlib

    for spec in registry.models.values():
        package = importlib.import_module(spec.loader.split(":")[0].split(".")[0])
        path = getattr(package, "EMBEDDED_MODEL_DIR", None)
        if path is not None and Path(path).is_dir():
            return str(path)
    raise ValueError("no --model given and no installed plugin ships an embedded model (install dserve-llada)")


def default_model_id(model_arg: str | None, path: Path, registry: Registry) -> str:
    if model_arg is None:
        import importlib

        for spec in registry.models.values():
            package = importlib.import_module(spec.loader.split(":")[0].split(".")[0])
            if getattr(package, "EMBEDDED_MODEL_DIR", None) == path:
                return getattr(package, "EMBEDDED_MODEL_ID", path.name)
        return path.name
    return model_arg.rstrip("/") if not Path(model_arg).is_dir() else Path(model_arg).resolve().name


async def collect_text(handle: GenerationHandle) -> str:
    """Await a handle's whole text; raise its error."""
    parts = []
    while True:
        event = await handle.events.get()
        if event.kind == "delta":
            parts.append(event.text)
        elif event.kind == "error":
            raise event.error or APIError("generation failed")
        else:
            return "".join(parts)
