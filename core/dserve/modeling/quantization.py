"""Weight-only quantization (`--quantization 8bit|4bit`) through torchao.

Every `nn.Linear` of the model (projections, MLP, LM head) gets int8 (per output channel) or
int4 (groups of 128) weights; activations stay in the model's dtype. torchao is the maintained
PyTorch-native library for this and runs on the CPU and the GPU (bitsandbytes is GPU-only);
it is an optional dependency: `pip install dserve[quant]`. Fused projections
(dserve.modeling.fused) are undone first: the quantized weights live in the original modules.
"""

from __future__ import annotations

from torch import nn

MODES = ("8bit", "4bit")


def quantize_weights(model: nn.Module, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"quantization must be one of {MODES}, got {mode!r}")
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise RuntimeError("--quantization needs torchao: pip install 'dserve[quant]'") from exc
    unfuse = getattr(model, "unfuse_projections", None)
    if unfuse is not None:
        unfuse()
    config = Int8WeightOnlyConfig() if mode == "8bit" else Int4WeightOnlyConfig(group_size=128)
    try:
        quantize_(model, config, filter_fn=lambda module, _name: isinstance(module, nn.Linear))
    except (ImportError, RuntimeError, NotImplementedError) as exc:
        raise RuntimeError(f"{mode} weight-only quantization is not available here ({exc})") from exc
