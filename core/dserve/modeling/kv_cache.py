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
        self.rows: torch.Tensor | None = None  # which cache rows this forward's batch uses

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Write k/v [B, H, T, D] at `positions` [B, T]; return the batch's full K/V."""
        rows = self.rows
        if rows is None:
            rows = torch.arange(k.shape[0], device=k.device)
        r = rows[:, None].expand_as(positions)
        # index [r, :, p] puts the indexed dims first: values must be [B, T, H, D]
        self.k[r, :, positions] = k.transpose(1, 2).to(self.k.dtype)
        self.v[r, :, positions] = v.transpose(1, 2).to(self.v.dtype)
        if self.rows is None and k.shape[0] == self.k.shape[0]:
            return self.k, self.v
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

    def use_rows(self, rows: torch.Tensor | None) -> "KVCache":
        """Make the next forward's batch row i use cache row rows[i] (None: row i)."""
        for layer in self.layers:
            layer.rows = rows
        return self

    def __getitem__(self, layer: int) -> LayerCache:
        return self.layers[layer]
