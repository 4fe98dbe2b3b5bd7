"""A preallocated KV cache with one row per batch slot and one entry per canvas position.

Engines own caches (one per running batch); models read and write them. A forward writes the
K/V of its inputs into the slots of their positions, and attends over all slots, so the same
call serves prefix caching (forward the suffix over a cached prefix), dual caching (forward one
block over cached prefix and suffix) and exact block-causal caches.
"""

from __future__ import annotations

import torch


class LayerCache:
    """K and V of one layer: [rows, kv_heads, capacity, head_dim]."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k = k
        self.v = v
        # which cache rows this forward's batch uses: None = rows 0..B-1, a slice = a contiguous
        # range (a view: no copy), a tensor = any rows (gathered: a copy of those rows)
        self.rows: torch.Tensor | slice | None = None

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Write k/v [B, H, T, D] at `positions` [B, T]; return the batch's full K/V."""
        rows = self.rows
        if rows is None:
            rows = slice(0, k.shape[0])
        if isinstance(rows, slice):
            ck, cv = self.k[rows], self.v[rows]
            r = torch.arange(k.shape[0], device=k.device)[:, None].expand_as(positions)
            # index [r, :, p] puts the indexed dims first: values must be [B, T, H, D]
            ck[r, :, positions] = k.transpose(1, 2).to(ck.dtype)
            cv[r, :, positions] = v.transpose(1, 2).to(cv.dtype)
            return ck, cv
        r = rows[:, None].expand_as(positions)
        self.k[r, :, positions] = k.transpose(1, 2).to(self.k.dtype)
        self.v[r, :, positions] = v.transpose(1, 2).to(self.v.dtype)
        return self.k[rows], self.v[rows]


class KVCache:
    """Per-layer K/V for `rows` sequences of up to `capacity` positions."""

    def __init__(
        self,
        n_layers: int,
        rows: int,
        capacity: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (rows, kv_heads, capacity, head_dim)
        self.layers = [
            LayerCache(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(n_layers)
        ]
        self.capacity = capacity
        self.num_rows = rows

    def use_rows(self, rows: torch.Tensor | slice | None) -> KVCache:
        """Make the next forward's batch row i use cache row rows[i] (None: row i; a slice
        of consecutive rows avoids copying them)."""
        for layer in self.layers:
            layer.rows = rows
        return self

    def __getitem__(self, layer: int) -> LayerCache:
        return self.layers[layer]
