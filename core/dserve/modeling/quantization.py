"""Weight-only quantization (`--quantization 8bit|4bit`) through torchao, and FP8 weights and
activations (`--quantization fp8`, dserve.modeling.fp8).

Every `nn.Linear` of the model (projections, MLP, LM head) gets int8 (per output channel) or
int4 (groups of 128; tinygemm's layout on CUDA) weights; activations stay in the model's dtype.
torchao is the maintained PyTorch-native library for this and runs on the CPU and the GPU
(bitsandbytes is GPU-only); it is an optional dependency: `pip install dserve[quant]`. Fused
projections (dserve.modeling.fused) are undone first: the quantized weights live in the
original modules.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("8bit", "4bit", "fp8")


def load_dtype(mode: str | None, dtype: str, device: torch.device) -> str:
    """The dtype to load a model in for `--quantization mode`: `--dtype auto` with 4bit on CUDA
    means bfloat16, the int4 kernel's only dtype (vLLM downcasts likewise); else `dtype`."""
    return "bfloat16" if mode == "4bit" and dtype == "auto" and device.type == "cuda" else dtype


def quantize_weights(model: nn.Module, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"quantization must be one of {MODES}, got {mode!r}")
    if mode == "fp8":  # weights and activations, PyTorch's own kernel (no torchao)
        from dserve.modeling.fp8 import quantize_fp8

        quantize_fp8(model)
        return
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise RuntimeError("--quantization needs torchao: pip install 'dserve[quant]'") from exc
    unfuse = getattr(model, "unfuse_projections", None)
    if unfuse is not None:
        unfuse()
    if mode == "8bit":
        config = Int8WeightOnlyConfig()
    else:
        # On CUDA, tinygemm's tile-packed layout: its kernel ships inside torch, while torchao's
        # default ("plain") layout needs the separate mslk package.
        weight = next(model.parameters())
        on_cuda = weight.device.type == "cuda"
        if on_cuda and weight.dtype != torch.bfloat16:
            raise RuntimeError(f"4bit weights on CUDA need a bfloat16 model (--dtype bfloat16), not {weight.dtype}")
        packing = "tile_packed_to_4d" if on_cuda else "plain"
        config = Int4WeightOnlyConfig(group_size=128, int4_packing_format=packing)
    try:
        quantize_(model, config, filter_fn=lambda module, _name: isinstance(module, nn.Linear))
    except (ImportError, RuntimeError, NotImplementedError) as exc:
        raise RuntimeError(f"{mode} weight-only quantization is not available here ({exc})") from exc
