"""Fused projections for inference: one matrix product where a layer has several over the same
input (q/k/v, gate/up).

At batch 1 a denoising step reads every weight once for a few dozen tokens, so it is bound by
memory bandwidth and kernel count; one large GEMM streams the weights closer to the bandwidth
limit than three small ones and launches fewer kernels. The fused weight is one tensor and the
original `nn.Linear` weights become views into it: parameter names, `state_dict()` and memory
stay as they were (no second copy).
"""

from __future__ import annotations

import torch
from torch import nn


def fuse_linears(*linears: nn.Linear) -> torch.Tensor:
    """Concatenate the (bias-free) weights of `linears` along the output dimension and make
    each linear's weight a view of the result. Returns the fused weight [sum(out), in]."""
    if any(lin.bias is not None for lin in linears):
        raise ValueError("fuse_linears handles bias-free projections only")
    fused = torch.cat([lin.weight.detach() for lin in linears])
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[start : start + rows], requires_grad=False)
        start += rows
    return fused
