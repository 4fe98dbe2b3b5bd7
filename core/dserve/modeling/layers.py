"""Transformer layers shared by every model plugin: RMSNorm, rotary embeddings, attention over
an optional KV cache, and the SwiGLU MLP. Model plugins own the parameter layout (so checkpoint
names load as published) and call these for the arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dserve.modeling.fp8 import Fp8Weight, linear
from dserve.modeling.kv_cache import LayerCache


class RMSNorm(nn.Module):
    """x / rms(x) in float32, cast back to the input dtype, then times the weight
    (the order LLaDA, Dream/Qwen2 and Mistral-style models all use)."""

    def __init__(self, dim: int, eps: float = 1e-5, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is x * rsqrt(mean(x^2) + eps), one fused kernel on the GPU
        x32 = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return x32.to(x.dtype) * self.weight


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE at explicit positions.

    `full_precision=True` rotates q and k in float32 and casts back (LLaDA); False casts
    cos/sin to the activation dtype and rotates in it (Dream, Qwen2).
    """

    inv_freq: torch.Tensor

    def __init__(self, head_dim: int, theta: float, full_precision: bool = True):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.full_precision = full_precision

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, 1, T, head_dim] in float32."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos(), emb.sin()

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, H, T, D] with cos/sin as returned; x [B, T, H, D] with cos/sin transposed(1, 2)."""
        if self.full_precision:
            xf = x.float()
            return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return x * cos + _rotate_half(x) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: LayerCache | None,
) -> torch.Tensor:
    """Scaled dot-product attention, never causal by itself.

    q, k, v: [B, H(kv), T, D] for the T input positions (RoPE applied). Without a cache the keys
    are the inputs. With a cache, the inputs' K/V are first written into the cache slots given
    by `positions` ([B, T]), and queries attend over every cache slot. `attention_mask` is
    boolean, True = attend: [B, Lk] (keys only) or [B, T, Lk] (per query; block-causal models).
    """
    if cache is not None:
        k, v = cache.write(k, v, positions)
    mask = None
    if attention_mask is not None:
        mask = attention_mask[:, None, None, :] if attention_mask.dim() == 2 else attention_mask[:, None]
    gqa = q.shape[1] != k.shape[1]
    if gqa and mask is not None and q.is_cuda:
        # the fused kernel that takes a mask (memory-efficient) has no grouped-query mode: with
        # enable_gqa and a mask SDPA falls back to the unfused math kernel, which materialises
        # the scores; repeating the K/V heads keeps the fused kernel
        groups = q.shape[1] // k.shape[1]
        k, v, gqa = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def swiglu(
    x: torch.Tensor, gate: nn.Linear, up: nn.Linear, down: nn.Linear, gate_up: torch.Tensor | Fp8Weight | None = None
) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)); with `gate_up` (gate and up fused by
    dserve.modeling.fused.fuse_linears) the two projections are one GEMM."""
    if gate_up is None:
        return down(F.silu(gate(x)) * up(x))
    g, u = linear(x, gate_up).chunk(2, dim=-1)
    return down(F.silu(g) * u)
