"""A KV cache that also keeps each position's last hidden state, for shifted logits.

Dream predicts the token at position i from the output at position i-1. When a forward over a
cache starts at position s (a block, or the suffix from s on), the output at s-1 is not among its
inputs; it was computed by the forward that wrote the cache (the full canvas at a block start),
so the model stores every position's final hidden state next to its K/V and reads it back.

The store is one more `LayerCache` appended to `layers` ([rows, 1, capacity, hidden], with an
empty V), so everything the core does to a cache (row selection, growth in CachePool, CUDA graph
capture) applies to it unchanged. Model layers index `cache[i]` for i < num_layers only.
"""

from __future__ import annotations

import torch

from dserve.modeling import KVCache, LayerCache


class HiddenStateKVCache(KVCache):
    def __init__(
        self,
        n_layers: int,
        rows: int,
        capacity: int,
        kv_heads: int,
        head_dim: int,
        hidden_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        super().__init__(n_layers, rows, capacity, kv_heads, head_dim, dtype, device)
        self.hidden = LayerCache(
            torch.zeros((rows, 1, capacity, hidden_size), dtype=dtype, device=device),
            torch.zeros((rows, 1, capacity, 0), dtype=dtype, device=device),
        )
        self.layers.append(self.hidden)

    def write_hidden(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Store hidden [B, T, d] at `positions` [B, T]; return the batch's store [B, capacity, d]."""
        empty = hidden.new_empty((*hidden.shape[:2], 0))
        store, _ = self.hidden.write(hidden[:, None], empty[:, None], positions)
        return store[:, 0]
