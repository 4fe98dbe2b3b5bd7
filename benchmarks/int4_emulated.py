"""Write a copy of a checkpoint whose linear weights went through `--quantization 4bit`'s round
trip, so that its quality can be measured where the int4 kernel does not run (the CPU).

    python benchmarks/int4_emulated.py SRC_DIR DST_DIR
    dserve serve --model DST_DIR --dtype bfloat16 &
    dserve eval --url http://127.0.0.1:8000 ...

`--quantization 4bit` on CUDA stores every nn.Linear weight as torchao's tinygemm int4 (groups
of 128 along the input, asymmetric, bfloat16 scales and float zero points) and multiplies bfloat16
activations by it. This script applies torchao's own tinygemm quantize and dequantize primitives to
the same weights and saves the result: the weights the kernel computes with, exactly, in a plain
checkpoint. What differs on the GPU is only the kernel's accumulation order.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

GROUP = 128  # dserve.modeling.quantization's int4 group size


def int4_round_trip(weight: torch.Tensor) -> torch.Tensor:
    from torchao.quantization.quant_primitives import (
        MappingType,
        _choose_qparams_affine_tinygemm,
        _dequantize_affine_tinygemm,
        _quantize_affine_tinygemm,
    )

    w = weight.to(torch.bfloat16)
    block = (1, GROUP)
    scale, zero = _choose_qparams_affine_tinygemm(
        w, MappingType.ASYMMETRIC, block, torch.int32, 0, 15, scale_dtype=torch.bfloat16, zero_point_dtype=torch.bfloat16
    )
    q = _quantize_affine_tinygemm(w, block, scale, zero, torch.int32, 0, 15)
    return _dequantize_affine_tinygemm(q, block, scale, zero, torch.int32, 0, 15, output_dtype=torch.bfloat16).to(weight.dtype)


def linear_weight_names(src: Path) -> set[str]:
    """The checkpoint names of the weights `quantize_weights` would quantize (every nn.Linear of
    the model as dserve loads it, projections unfused)."""
    from dserve.loader import load_model
    from dserve.plugins import get_registry

    model, _ = load_model(src, get_registry(), dtype="float32", device="cpu")
    if hasattr(model, "unfuse_projections"):
        model.unfuse_projections()
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    args = ap.parse_args(argv)
    names = linear_weight_names(args.src)
    state = load_file(str(args.src / "model.safetensors"))
    missing = names - state.keys()
    if missing:
        sys.exit(f"linear weights not found by name in the checkpoint: {sorted(missing)[:5]}")
    for name in names:
        state[name] = int4_round_trip(state[name]).contiguous()
    shutil.copytree(args.src, args.dst, dirs_exist_ok=True)
    save_file(state, str(args.dst / "model.safetensors"))
    print(f"{len(names)} linear weights round-tripped through int4 (groups of {GROUP}) -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
