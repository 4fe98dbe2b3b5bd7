"""FP8 weights and activations (`--quantization fp8`): every projection and the LM head as an
e4m3 matrix product with row-wise scales.

Weights are quantized once, per output channel (scale = max |w| of the row / 448, e4m3's
largest value); activations per token at every call (the same rule over each input row). The
product runs as `torch._scaled_mm(x_q, w_q.T, scale_x [M, 1], scale_w [1, N])` with a bf16/fp32
output: one FP8 tensor-core GEMM on Hopper/Ada (twice bf16's peak, half its weight bytes), and
PyTorch's own kernel on the CPU. Where `_scaled_mm` cannot run (an older GPU, a dimension that is
not a multiple of 16), the same quantized numbers are multiplied in float32 after dequantizing
(`emulated`), which is also the reference the kernel is tested against. Everything is tensor
arithmetic with no host synchronisation, so FP8 forwards are CUDA-graphed like bf16 ones.

Fused projections (dserve.modeling.fused) stay fused: the fused weight is quantized as one
matrix and the modules it fused become row slices of it (no second copy). The embedding stays in
the model's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
_TINY = 1e-12  # floor of a scale (an all-zero row)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (e4m3 values [..., K], float32 scales [..., 1]) with x ~ values * scales."""
    amax = x.abs().amax(dim=-1, keepdim=True).to(torch.float32).clamp(min=_TINY)
    scale = amax / E4M3_MAX
    q = (x.to(torch.float32) / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


class Fp8Weight:
    """A weight [N, K] as e4m3 values and one float32 scale per output row."""

    def __init__(self, values: torch.Tensor, scales: torch.Tensor, emulate: bool = False):
        self.values = values  # [N, K] e4m3
        self.scales = scales  # [N, 1] float32
        self.emulate = emulate  # multiply in float32 (where torch._scaled_mm cannot run)

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Fp8Weight:
        values, scales = quantize_rows(weight.detach())
        return cls(values, scales)

    def rows(self, start: int, stop: int) -> Fp8Weight:
        """Output rows [start, stop) as views (the slice a fused projection's part owns)."""
        return Fp8Weight(self.values[start:stop], self.scales[start:stop], self.emulate)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.values.to(torch.float32) * self.scales).to(dtype)


def kernel_fits(weight: Fp8Weight, device: torch.device) -> bool:
    """Whether torch._scaled_mm takes this weight here: FP8 tensor cores (compute capability 8.9,
    Ada/Hopper, or later) or the CPU, and both dimensions multiples of 16."""
    n, k = weight.shape
    if n % 16 or k % 16:
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return device.type == "cpu"


def fp8_linear(x: torch.Tensor, weight: Fp8Weight, *, emulate: bool = False) -> torch.Tensor:
    """x [..., K] @ weight.T -> [..., N] in x's dtype, both operands in e4m3 with row-wise scales.
    emulate=True: the same quantized numbers multiplied in float32 (the reference)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    xq, xs = quantize_rows(x2)
    if emulate:
        out = (xq.to(torch.float32) * xs) @ weight.dequantized().T
        return out.to(x.dtype).reshape(*lead, -1)
    # CUDA's row-wise scaled GEMM writes bfloat16 only; the CPU kernel writes the input's dtype
    out_dtype = torch.bfloat16 if x.is_cuda or x.dtype not in (torch.float16, torch.float32) else x.dtype
    # _scaled_mm: the second operand column-major (a transposed row-major weight is), scales
    # [M, 1] and [1, N] (row-wise)
    out = torch._scaled_mm(xq, weight.values.T, scale_a=xs, scale_b=weight.scales.T, out_dtype=out_dtype)
    return out.to(x.dtype).reshape(*lead, -1)


class Fp8Linear(nn.Module):
    """An nn.Linear with an FP8 weight (the module that replaces each projection); a bias stays
    in the model's dtype. `.weight` is the Fp8Weight, for model code that multiplies by a
    module's weight itself (through `linear`, as LM heads do)."""

    def __init__(self, weight: Fp8Weight, bias: torch.Tensor | None = None):
        super().__init__()
        self.fp8_weight = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @property
    def weight(self) -> Fp8Weight:
        return self.fp8_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fp8_linear(x, self.fp8_weight, emulate=self.fp8_weight.emulate)
        return out if self.bias is None else out + self.bias

    def _apply(self, fn, recurse=True):  # .to(device) etc. move the quantized tensors too
        w = self.fp8_weight
        self.fp8_weight = Fp8Weight(fn(w.values), fn(w.scales), w.emulate)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, emulate={self.fp8_weight.emulate}"


def linear(x: torch.Tensor, weight: torch.Tensor | Fp8Weight) -> torch.Tensor:
    """F.linear for a weight that may be FP8: what model code calls on a fused weight."""
    if isinstance(weight, Fp8Weight):
        return fp8_linear(x, weight, emulate=weight.emulate)
    return nn.functional.linear(x, weight)


def quantize_fp8(model: nn.Module, *, emulate: bool | None = None) -> int:
    """Replace every nn.Linear of `model` (and every fused projection weight, a plain
    2-D tensor attribute named `*_weight` that Linear weights are views of) by its FP8 form;
    returns the number of matrices quantized. emulate=None: the kernel wherever it fits."""
    fused: dict[int, tuple[torch.Tensor, Fp8Weight]] = {}  # storage pointer -> (bf16 fused, fp8)
    count = 0
    for module in list(model.modules()):
        for name, value in list(vars(module).items()):
            if (
                name.endswith("_weight")
                and isinstance(value, torch.Tensor)
                and not isinstance(value, nn.Parameter)
                and value.dim() == 2
            ):
                q = Fp8Weight.quantize(value)
                q.emulate = not kernel_fits(q, value.device) if emulate is None else emulate
                fused[value.untyped_storage().data_ptr()] = (value, q)
                setattr(module, name, q)
                count += 1
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            w = child.weight
            base = fused.get(w.untyped_storage().data_ptr())
            if base is not None:  # a view of a fused weight: its rows of the quantized one
                start = (w.storage_offset() - base[0].storage_offset()) // w.shape[1]
                q = base[1].rows(start, start + w.shape[0])
            else:
                q = Fp8Weight.quantize(w)
                q.emulate = not kernel_fits(q, w.device) if emulate is None else emulate
                count += 1
            setattr(module, child_name, Fp8Linear(q, child.bias))
    return count
