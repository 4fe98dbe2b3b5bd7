"""Loading: resolve the checkpoint, load the model family that serves it, apply the speed
settings, and start the scheduler with a runner factory over the loaded model.

The request side (service.py) gets what this returns and never loads anything itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from dserve.registry import ModelSpec, Registry, import_string
from dserve.scheduler import Scheduler
from dserve.sequence import RequestSpec
from dserve.settings import Settings

log = structlog.get_logger("dserve.loader")


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a dserve.modeling.DiffusionModel
    spec: ModelSpec
    path: Path
    model_id: str


def load(settings: Settings, registry: Registry) -> LoadedModel:
    """The model --model (or the embedded one) names, ready to serve; raises what went wrong."""
    from dserve.hub import checkpoint_dir
    from dserve.modeling.quantization import load_dtype

    path = checkpoint_dir(
        settings.model or default_model_dir(registry), revision=settings.revision, download_dir=settings.download_dir
    )
    device = resolve_device(settings.device)
    if device.type == "cuda" and settings.gpu_memory_utilization < 1.0:
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(settings.gpu_memory_utilization, index)
    dtype = load_dtype(settings.quantization, settings.dtype, device)
    model, spec = load_model(path, registry, dtype=dtype, device=device, load_format=settings.load_format)
    apply_speed_settings(model, settings)
    if settings.tokenizer:
        from dserve.modeling.tokenizer import load_tokenizer

        model.tokenizer = load_tokenizer(settings.tokenizer)
    if model.tokenizer is None:
        raise ValueError(f"no tokenizer found in {path}; pass --tokenizer")
    model_id = settings.served_model_name or default_model_id(settings.model, path, registry)
    log.info("model loaded", model=model_id, path=str(path), family=spec.name, device=str(device))
    return LoadedModel(model, spec, path, model_id)


def start_scheduler(model: Any, settings: Settings, on_step: Callable[[int, list[int]], None] | None = None) -> Scheduler:
    """A running scheduler whose runners decode on `model`."""
    scheduler = Scheduler(
        runner_factory(model, settings),
        max_queue_size=settings.max_queue_size,
        max_wait_time=settings.max_wait_time,
        on_step=on_step,
    )
    scheduler.start()
    return scheduler


def runner_factory(model: Any, settings: Settings) -> Callable[[RequestSpec], Any]:
    """Builds the runner of a request's resolved algorithm (the scheduler calls it once per
    engine/algorithm pair; nothing is resolved by name here)."""
    # compile modes with CUDA graphs of their own replace dserve's graphs
    eager = settings.enforce_eager or (settings.compile and settings.compile_mode in ("reduce-overhead", "max-autotune"))

    def make(spec: RequestSpec):
        runner_cls = spec.algorithm.load_runner()
        return runner_cls(model_for_runner(model, runner_cls, eager), max_batch_size=settings.max_batch_size)

    return make


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
