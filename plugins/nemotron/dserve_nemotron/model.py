"""NVIDIA's diffusion LMs (Nemotron-Labs-Diffusion and its older names; the Qwen3-based research
variant) with their published parameter names.

Module attributes mirror the checkpoint (`encoder.layers.{i}.self_attn.q_proj.weight`, ...,
`diffusion_head.weight`), so weights load by name with no mapping table and no remote code.

One set of weights serves every decoding mode; only the attention pattern changes, and the
caller chooses it per query with `attention_mask` [B, T, Lk] (the core's dserve.batch.forward builds
causal, bidirectional and block-causal masks). Without a mask every query sees every key
(bidirectional). Logits come from `diffusion_head` in every mode: under a bidirectional pattern
position i's logits predict token i itself (no shift, LLaDA-style); under a causal pattern they
predict token i + 1 (next token), which is how the published `ar` and `linear_spec` loops read them.
"""

from __future__ import annotations

import os
from typing import cast

import torch
from torch import nn

from dserve.modeling import DiffusionModel, KVCache, ModelInfo
from dserve.modeling.fp8 import linear
from dserve.modeling.fused import fuse_linears
from dserve.modeling.layers import RMSNorm, attention, swiglu
from dserve.modeling.loading import has_tokenizer, load_native, randomize
from dserve.modeling.tokenizer import load_tokenizer
from dserve.registry import BLOCK_CAUSAL, KV_CACHE
from dserve_nemotron.config import NemotronConfig
from dserve_nemotron.rope import build_rotary


class NemotronAttention(nn.Module):
    def __init__(self, cfg: NemotronConfig):
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = nn.Linear(h, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, h, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.qkv_weight: torch.Tensor | None = None  # set by fuse_projections(); not in state_dict()

    def forward(self, x, rotary, cos, sin, q_scale, positions, attention_mask, cache):
        B, T, _ = x.shape
        if self.qkv_weight is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:  # one GEMM, split into views
            nq, nkv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            q, k, v = linear(x, self.qkv_weight).split([nq, nkv, nkv], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotary.rotate(q.transpose(1, 2), cos, sin), rotary.rotate(k.transpose(1, 2), cos, sin)
        if q_scale is not None:  # Llama-4 position-dependent query scaling, after RoPE
            q = q * q_scale.to(q.dtype)
        a = attention(q, k, v, positions, attention_mask, cache)
        return self.o_proj(a.transpose(1, 2).reshape(B, T, -1))


class NemotronMLP(nn.Module):
    """`mlp` in the checkpoint: the three projections (a container; the layer runs swiglu)."""

    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear


class NemotronLayer(nn.Module):
    def __init__(self, cfg: NemotronConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = NemotronAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = NemotronMLP()
        self.mlp.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.mlp.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.mlp.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_weight: torch.Tensor | None = None  # set by fuse_projections()

    def forward(self, x, rotary, cos, sin, q_scale, positions, attention_mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), rotary, cos, sin, q_scale, positions, attention_mask, cache)
        m = self.mlp
        return x + swiglu(self.post_attention_layernorm(x), m.gate_proj, m.up_proj, m.down_proj, self.gate_up_weight)

    def fuse_projections(self) -> None:
        """Inference only: q/k/v and gate/up as one GEMM each (dserve.modeling.fused)."""
        a, m = self.self_attn, self.mlp
        a.qkv_weight = fuse_linears(a.q_proj, a.k_proj, a.v_proj)
        self.gate_up_weight = fuse_linears(m.gate_proj, m.up_proj)


class NemotronEncoder(nn.Module):
    """`encoder` in the checkpoint: a container (no forward of its own) whose children are
    declared here so that they are typed (nn.Module.__getattr__ says `Tensor | Module`)."""

    embed_tokens: nn.Embedding
    layers: nn.ModuleList  # of NemotronLayer
    norm: RMSNorm


class NemotronDiffusionModel(DiffusionModel):
    def __init__(self, cfg: NemotronConfig, family: str = "nemotron"):
        super().__init__()
        self.cfg = cfg
        self.num_layers, self.num_kv_heads, self.head_dim = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
        self.encoder = NemotronEncoder()
        self.encoder.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.encoder.layers = nn.ModuleList(NemotronLayer(cfg) for _ in range(cfg.num_layers))
        self.encoder.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.diffusion_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)  # untied
        self.rotary = build_rotary(cfg)
        # the published decoding encodes the prompt causally (Nemotron-Labs) or not (research)
        self.causal_prefix = cfg.causal_prefix
        self.info = ModelInfo(
            family=family,
            mask_id=cfg.mask_token_id,
            eos_id=cfg.eos_token_ids[0],
            stop_ids=cfg.eos_token_ids,
            vocab_size=cfg.vocab_size,
            max_length=cfg.max_position_embeddings,
            capabilities=frozenset({BLOCK_CAUSAL, KV_CACHE}),
        )

    def fuse_projections(self) -> None:
        """Fuse each layer's projections for inference (after the weights are on their device;
        a later `.to()` would unshare the views, so loaders call this last)."""
        for layer in self.encoder.layers:
            cast(NemotronLayer, layer).fuse_projections()  # ModuleList yields nn.Module; all are NemotronLayers

    def unfuse_projections(self) -> None:
        """Back to one GEMM per projection (weight-only quantization replaces module weights)."""
        for module in self.encoder.layers:
            layer = cast(NemotronLayer, module)  # ModuleList yields nn.Module; all are NemotronLayers
            layer.self_attn.qkv_weight = layer.gate_up_weight = None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def _q_scale(self, positions: torch.Tensor) -> torch.Tensor | None:
        beta, original_max = self.cfg.llama4_beta, self.cfg.llama4_original_max
        if beta is None or original_max is None:
            return None
        scale = 1 + beta * torch.log(1 + torch.floor(positions / original_max))
        return scale[:, None, :, None]

    def forward(
        self,
        input_ids=None,
        positions=None,
        *,
        attention_mask=None,
        kv_cache: KVCache | None = None,
        logits_index=None,
        inputs_embeds=None,
    ):
        x = self.encoder.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        cos, sin = self.rotary.cos_sin(positions)
        q_scale = self._q_scale(positions)
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x, self.rotary, cos, sin, q_scale, positions, attention_mask, kv_cache[i] if kv_cache else None)
        if logits_index is not None:
            x = x.gather(1, logits_index[..., None].expand(-1, -1, x.shape[-1]))
        return self.diffusion_head(self.encoder.norm(x))


def load_nemotron(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    load_format: str = "auto",
) -> NemotronDiffusionModel:
    """Load a Nemotron diffusion checkpoint directory by parameter name (no remote code).

    load_format "dummy": random weights in the config's shape (only config.json is read)."""
    model, path = load_native(
        path,
        config_from_dict=NemotronConfig.from_dict,
        build=NemotronDiffusionModel,
        random=random_nemotron,
        on_device=_rotary_on,
        dtype=dtype,
        device=device,
        load_format=load_format,
    )
    if has_tokenizer(path):
        model.tokenizer = load_tokenizer(path)
    return model


def _rotary_on(model: nn.Module, cfg: NemotronConfig, device) -> None:
    """YaRN frequencies are not in the checkpoint: float32 on the device."""
    model.rotary = build_rotary(cfg, device)


def random_nemotron(cfg: NemotronConfig, *, dtype=torch.bfloat16, device="cuda", seed: int = 0) -> NemotronDiffusionModel:
    """A model with random weights in a real shape (benchmarks, `--load-format dummy`)."""
    with torch.device(device):
        model = NemotronDiffusionModel(cfg).to(dtype)
    _rotary_on(model, cfg, device)
    randomize(model, seed=seed)
    model.fuse_projections()
    return model
