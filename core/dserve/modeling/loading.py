"""Checkpoint directories: config.json, safetensors weights (single file or sharded with an
index), loaded into a module by the checkpoint's own parameter names."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from torch import nn

from dserve.progress import ProgressBar

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_checkpoint_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory, or a Hugging Face repo id (downloaded, or found in the cache: dserve.hub)."""
    from dserve.hub import checkpoint_dir

    return checkpoint_dir(name_or_path)


def read_config(path: str | os.PathLike) -> dict:
    with open(Path(path) / "config.json", encoding="utf-8") as f:
        return json.load(f)


def resolve_dtype(dtype: str | torch.dtype | None, config: dict, device: str | torch.device) -> torch.dtype:
    """ "auto" = the checkpoint's torch_dtype on a GPU, float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if torch.device(device).type == "cpu":
            return torch.float32
        return DTYPES.get(str(config.get("torch_dtype", "bfloat16")), torch.bfloat16)
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(sorted(DTYPES))}") from None


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    return found


def load_weights(module: nn.Module, path: str | os.PathLike, *, dtype: torch.dtype, device) -> None:
    """Load every tensor of the checkpoint into `module` by name; names must match exactly."""
    expected: dict[str, torch.Tensor] = dict(module.named_parameters())
    expected.update({n: b for n, b in module.named_buffers() if n in module.state_dict()})
    seen: set[str] = set()
    unexpected: list[str] = []
    files = weight_files(Path(path))
    for file in ProgressBar(files, desc="Loading weight shards", unit="shard", total=len(files)):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name not in expected:
                    unexpected.append(name)
                    continue
                tensor = f.get_tensor(name)
                target = expected[name]
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(target.shape)}")
                with torch.no_grad():
                    if target.is_meta:
                        _assign(module, name, tensor.to(device=device, dtype=dtype))
                    else:
                        target.copy_(tensor.to(dtype=target.dtype))
                seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}")


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    setattr(owner, attr, nn.Parameter(tensor, requires_grad=False))


def randomize(model: nn.Module, *, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Random weights in the model's real shape (benchmarks, `--load-format dummy`): N(0, std)
    for every parameter except norm gains, which stay 1. Returns the model, in eval mode."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(("norm.weight", "ln_f.weight")):
                p.normal_(0.0, std, generator=generator)
    return model.eval().requires_grad_(False)


ModelT = TypeVar("ModelT", bound=nn.Module)


def load_native(
    path: str | os.PathLike,
    *,
    config_from_dict: Callable[[dict], Any],
    build: Callable[[Any], ModelT],
    random: Callable[..., ModelT],
    on_device: Callable[[ModelT, Any, Any], None] | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    load_format: str = "auto",
) -> tuple[ModelT, Path]:
    """What every model plugin's loader does: read config.json, then either random weights in
    its shape (`load_format="dummy"`: `random(cfg, dtype=, device=)`) or `build(cfg)` on the meta
    device with the checkpoint's tensors assigned by parameter name. `on_device(model, cfg,
    device)` recreates what is not in the checkpoint (non-persistent buffers such as RoPE
    frequencies, which the meta device leaves empty). A model with `fuse_projections()` gets its
    inference GEMMs fused once the weights are on their device (`random` fuses its own). Returns
    (model in eval mode, checkpoint directory); the caller adds its tokenizer."""
    path = resolve_checkpoint_dir(path)
    raw = read_config(path)
    cfg = config_from_dict(raw)
    dtype = resolve_dtype(dtype, raw, device)
    if load_format == "dummy":
        return random(cfg, dtype=dtype, device=device), path
    with torch.device("meta"):
        model = build(cfg)
    if on_device is not None:
        on_device(model, cfg, device)
    load_weights(model, path, dtype=dtype, device=device)
    fuse = getattr(model, "fuse_projections", None)
    if fuse is not None:
        fuse()
    return model.eval().requires_grad_(False), path


def has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()
