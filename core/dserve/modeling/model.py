"""The contract between models and engines.

A model plugin's loader returns a :class:`DiffusionModel`: a torch module whose forward takes
token ids at explicit positions, optionally over a :class:`KVCache`, and returns logits already
aligned to those positions (a model trained with shifted logits, like Dream, shifts them itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dserve.modeling.kv_cache import KVCache


@dataclass(frozen=True)
class ModelInfo:
    family: str  # the registering ModelSpec's name
    mask_id: int
    eos_id: int
    stop_ids: tuple[int, ...]  # ids that end an answer: EOS and end-of-turn
    vocab_size: int
    max_length: int  # longest canvas (prompt + generation) the model supports
    capabilities: frozenset[str]
    default_params: dict[str, Any] = field(default_factory=dict)


class DiffusionModel(nn.Module):
    """Base class of dserve models. Subclasses set `info` and implement `forward`."""

    info: ModelInfo
    tokenizer: Any = None  # a transformers tokenizer with a chat template, set by the loader
    num_layers: int
    num_kv_heads: int
    head_dim: int

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        logits_index: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] for `input_ids` [B, T] ([B, n, V] with `logits_index`).

        positions: [B, T] absolute positions (default 0..T-1 per row).
        attention_mask: boolean, True = attend; [B, Lk] over keys or [B, T, Lk] per query,
            where Lk = T without a cache and the cache capacity with one.
        kv_cache: if given, the inputs' K/V are written at their positions and queries attend
            over every cache slot (mask out the slots that hold nothing valid).
        logits_index: [B, n] indices into T: compute logits only there (an engine that decodes
            one block needs no logits for the rest of the canvas; the LM head is costly).
        inputs_embeds: [B, T, d] used instead of the token lookup (capability `inputs_embeds`;
            the model then also has `get_input_embeddings()`).
        """
        raise NotImplementedError

    def new_kv_cache(self, rows: int, capacity: int) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.num_layers, rows, capacity, self.num_kv_heads, self.head_dim, p.dtype, p.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
