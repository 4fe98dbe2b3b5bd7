"""inclusionAI's LLaDA2 MoE diffusion LM (`LLaDA2MoeModelLM`) with its published parameter names.

Module attributes mirror the checkpoint (`model.word_embeddings.weight`,
`model.layers.{i}.attention.query_key_value.weight`, `...attention.{query,key}_layernorm.weight`,
`...attention.dense.weight`, `...mlp.gate.{weight,expert_bias}`, `...mlp.experts.{e}.gate_proj.weight`,
`...mlp.shared_experts.*`, `model.norm.weight`, `lm_head.weight`), so the published safetensors
load by name with no mapping table and no remote code.

The arithmetic is the published `modeling_llada2_moe.py`'s: pre-norm decoder layers; one fused
q/k/v projection split by heads; per-head RMSNorm of q and k (`use_qk_norm`) before RoPE; RoPE on
the first `head_dim * partial_rotary_factor` dims of each head (rotate-half within them, cos/sin
computed in float32 and cast to the activations' dtype); attention never causal by itself: the
pattern comes from the mask (the published decoding uses a block-causal one: a query sees its own
block and every earlier block); a dense SwiGLU MLP in the first `first_k_dense_replace` layers,
the MoE MLP (dserve_llada2.moe) after; untied `lm_head`, no shift (position i predicts token i).
"""

from __future__ import annotations

import os
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from dserve.modeling import DiffusionModel, KVCache, ModelInfo
from dserve.modeling.layers import RMSNorm, RotaryEmbedding, attention
from dserve.modeling.loading import has_tokenizer, load_native, randomize
from dserve.modeling.tokenizer import load_tokenizer
from dserve.registry import BLOCK_CAUSAL, KV_CACHE
from dserve_llada2.config import LLaDA2Config
from dserve_llada2.moe import LLaDA2MLP, LLaDA2SparseMoE


class LLaDA2Attention(nn.Module):
    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.rotary_dim = cfg.rotary_dim
        qkv_out = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, qkv_out, bias=cfg.use_qkv_bias)
        if cfg.use_qk_norm:
            self.query_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.key_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.use_qk_norm = cfg.use_qk_norm
        self.dense = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.use_bias)

    def _rope(self, x: torch.Tensor, rotary: RotaryEmbedding, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.rotary_dim == self.head_dim:
            return rotary.rotate(x, cos, sin)
        rot, keep = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat([rotary.rotate(rot, cos, sin), keep], dim=-1)

    def forward(self, x, rotary, cos, sin, positions, attention_mask, cache):
        B, T, _ = x.shape
        qkv = self.query_key_value(x).view(B, T, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
        q, k, v = qkv.transpose(1, 2).split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=1)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = self._rope(q, rotary, cos, sin), self._rope(k, rotary, cos, sin)
        a = attention(q, k, v.contiguous(), positions, attention_mask, cache)
        return self.dense(a.transpose(1, 2).reshape(B, T, -1))


class LLaDA2Layer(nn.Module):
    def __init__(self, cfg: LLaDA2Config, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = LLaDA2Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp: nn.Module = (
            LLaDA2SparseMoE(cfg) if cfg.is_moe_layer(index) else LLaDA2MLP(cfg.hidden_size, cfg.intermediate_size)
        )

    def forward(self, x, rotary, cos, sin, positions, attention_mask, cache):
        x = x + self.attention(self.input_layernorm(x), rotary, cos, sin, positions, attention_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2Backbone(nn.Module):
    """`model` in the checkpoint: a container whose children are typed here."""

    word_embeddings: nn.Embedding
    layers: nn.ModuleList  # of LLaDA2Layer
    norm: RMSNorm


class LLaDA2DiffusionModel(DiffusionModel):
    def __init__(self, cfg: LLaDA2Config, family: str = "llada2"):
        super().__init__()
        self.cfg = cfg
        self.num_layers, self.num_kv_heads, self.head_dim = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
        self.model = LLaDA2Backbone()
        self.model.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(LLaDA2Layer(cfg, i) for i in range(cfg.num_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(cfg.rotary_dim, cfg.rope_theta, full_precision=False)
        self.info = ModelInfo(
            family=family,
            mask_id=cfg.mask_token_id,
            eos_id=cfg.eos_token_id,
            stop_ids=(cfg.eos_token_id,),  # the published loop stops on this id only
            vocab_size=cfg.vocab_size,
            max_length=cfg.max_position_embeddings,
            capabilities=frozenset({BLOCK_CAUSAL, KV_CACHE}),
        )

    def moe_layers(self) -> list[LLaDA2SparseMoE]:
        return [cast(LLaDA2Layer, la).mlp for la in self.model.layers if isinstance(cast(LLaDA2Layer, la).mlp, LLaDA2SparseMoE)]  # type: ignore[misc]

    def fuse_projections(self) -> None:
        """Inference only: stack each MoE layer's experts for the grouped GEMMs (called by the
        loader once the weights are on their device)."""
        for moe in self.moe_layers():
            moe.stack_experts()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

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
        x = self.model.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        cos, sin = self.rotary.cos_sin(positions)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, self.rotary, cos, sin, positions, attention_mask, kv_cache[i] if kv_cache else None)
        if logits_index is not None:
            x = x.gather(1, logits_index[..., None].expand(-1, -1, x.shape[-1]))
        x = self.model.norm(x)
        if self.lm_head is None:
            return F.linear(x, self.model.word_embeddings.weight)
        return self.lm_head(x)


def load_llada2(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    load_format: str = "auto",
) -> LLaDA2DiffusionModel:
    """Load a LLaDA2 MoE checkpoint directory by parameter name (no remote code).

    load_format "dummy": random weights in the config's shape (only config.json is read)."""
    model, path = load_native(
        path,
        config_from_dict=LLaDA2Config.from_dict,
        build=LLaDA2DiffusionModel,
        random=random_llada2,
        on_device=_rotary_on,
        dtype=dtype,
        device=device,
        load_format=load_format,
    )
    if has_tokenizer(path):
        model.tokenizer = load_tokenizer(path)
    return model


def _rotary_on(model: nn.Module, cfg: LLaDA2Config, device) -> None:
    """RoPE frequencies are not in the checkpoint: float32 on the device."""
    model.rotary = RotaryEmbedding(cfg.rotary_dim, cfg.rope_theta, full_precision=False).to(device)


def random_llada2(cfg: LLaDA2Config, *, dtype=torch.bfloat16, device="cuda", seed: int = 0) -> LLaDA2DiffusionModel:
    """A model with random weights in a real shape (benchmarks, `--load-format dummy`)."""
    # built on the meta device and allocated once in `dtype`: LLaDA2.0-mini in float32 first
    # (65 GB) would not leave room on an 80 GB GPU for the cast
    with torch.device("meta"):
        model = LLaDA2DiffusionModel(cfg).to(dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)  # randomize() leaves norm gains alone: they must start at 1
            elif name.endswith(".bias"):
                p.zero_()
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.zero_()
    _rotary_on(model, cfg, device)
    randomize(model, seed=seed)
    model.fuse_projections()
    return model
