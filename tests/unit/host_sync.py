"""A CPU stand-in for `torch.cuda.set_sync_debug_mode("error")` (tests only).

`no_host_sync()` raises on every tensor operation that, on a GPU, makes the host wait for the
device: reading a value (`item`, `tolist`, `bool`/`int`/`float`/`index` of a tensor, `cpu`,
`numpy`) and data-dependent shapes (`nonzero`, `masked_select`, `unique`, one-argument `where`,
indexing with a boolean tensor). `dserve.batch.readback`, the step's one sanctioned transfer,
is exempt. On the CPU nothing actually waits, so this finds in the unit tests what the GPU test
(tests/gpu/test_host_sync.py) finds on the device.
"""

from __future__ import annotations

import sys

import torch
from torch.overrides import TorchFunctionMode

from dserve.batch import readback

_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
}
_DATA_DEPENDENT = {
    torch.nonzero,
    torch.Tensor.nonzero,
    torch.masked_select,
    torch.Tensor.masked_select,
    torch.unique,
    torch.Tensor.unique,
    torch.argwhere,
}


class HostSync(AssertionError):
    pass


def _bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def _inside_readback() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is readback.__code__:
            return True
        frame = frame.f_back
    return False


class no_host_sync(TorchFunctionMode):
    """Context manager: tensor operations that would synchronise with a GPU raise HostSync."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bad = None
        if func in _READS or func in _DATA_DEPENDENT:
            bad = getattr(func, "__name__", str(func))
        elif func is torch.where and len(args) + len(kwargs) == 1:
            bad = "where(condition)"
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and len(args) > 1 and _bool_index(args[1]):
            bad = "boolean-tensor indexing"
        if bad is not None and not _inside_readback():
            raise HostSync(f"host synchronisation inside a step: {bad}")
        return func(*args, **kwargs)
