"""LLaDA (GSAI-ML/LLaDA-8B-Instruct, -Base, LLaDA-1.5) with its published parameter names.

Module attributes mirror the checkpoint (`model.transformer.blocks.{i}.q_proj.weight`, ...), so
weights load by name with no mapping table. The arithmetic comes from the core's shared layers.
"""

from __future__ import annotations

import os
from typing import cast

import torch
from torch import nn

from dserve.modeling import DiffusionModel, KVCache, ModelInfo
from dserve.modeling.fp8 import linear
from dserve.modeling.fused import fuse_linears
from dserve.modeling.layers import RMSNorm, RotaryEmbedding, attention, swiglu
from dserve.modeling.loading import has_tokenizer, load_native, randomize
from dserve.modeling.tokenizer import load_tokenizer
from dserve.registry import BIDIRECTIONAL, INPUTS_EMBEDS, KV_CACHE
from dserve_llada.config import LLaDAConfig


class LLaDABlock(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(cfg.n_heads * hd, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)  # gate (through SiLU)
        self.up_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, d, bias=False)  # down
        # set by fuse_projections(); plain attributes, so state_dict() keeps the published names
        self.qkv_weight: torch.Tensor | None = None
        self.gate_up_weight: torch.Tensor | None = None

    def forward(self, x, rotary, cos, sin, positions, attention_mask, cache):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        if self.qkv_weight is None:
            q = self.q_proj(h).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
            q, k = rotary.rotate(q, cos, sin), rotary.rotate(k, cos, sin)
        else:  # fused: one GEMM for q/k/v and one RoPE over q and k together ([B, T, heads, D])
            qkv = linear(h, self.qkv_weight).view(B, T, -1, self.head_dim)
            nq, nqk = self.n_heads, self.n_heads + self.n_kv_heads
            qk = rotary.rotate(qkv[:, :, :nqk], cos.transpose(1, 2), sin.transpose(1, 2))
            q, k, v = qk[:, :, :nq].transpose(1, 2), qk[:, :, nq:].transpose(1, 2), qkv[:, :, nqk:].transpose(1, 2)
        a = attention(q, k, v, positions, attention_mask, cache)
        x = x + self.attn_out(a.transpose(1, 2).reshape(B, T, -1))
        return x + swiglu(self.ff_norm(x), self.ff_proj, self.up_proj, self.ff_out, self.gate_up_weight)

    def fuse_projections(self) -> None:
        """Inference only: q/k/v and gate/up as one GEMM each (dserve.modeling.fused)."""
        self.qkv_weight = fuse_linears(self.q_proj, self.k_proj, self.v_proj)
        self.gate_up_weight = fuse_linears(self.ff_proj, self.up_proj)


class LLaDATransformer(nn.Module):
    """`model.transformer` in the checkpoint: a container (no forward of its own) whose children
    are declared here so that they are typed (nn.Module.__getattr__ says `Tensor | Module`)."""

    wte: nn.Embedding
    blocks: nn.ModuleList  # of LLaDABlock
    ln_f: RMSNorm
    ff_out: nn.Linear  # only without weight tying


class LLaDAWrapper(nn.Module):
    """`model` in the checkpoint: holds `transformer` only."""

    transformer: LLaDATransformer


class LLaDAModel(DiffusionModel):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.cfg = cfg
        self.num_layers, self.num_kv_heads, self.head_dim = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
        transformer = LLaDATransformer()
        transformer.wte = nn.Embedding(cfg.embedding_size, cfg.d_model)
        transformer.blocks = nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers))
        transformer.ln_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        if not cfg.weight_tying:
            transformer.ff_out = nn.Linear(cfg.d_model, cfg.embedding_size, bias=False)
        self.model = LLaDAWrapper()
        self.model.transformer = transformer
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, full_precision=cfg.rope_full_precision)
        stop_ids = tuple(i for i in (cfg.eos_token_id, cfg.eot_token_id) if i is not None)
        self.info = ModelInfo(
            family="llada",
            mask_id=cfg.mask_token_id,
            eos_id=cfg.eos_token_id,
            stop_ids=stop_ids,
            vocab_size=cfg.embedding_size,
            max_length=cfg.max_sequence_length,
            capabilities=frozenset({BIDIRECTIONAL, KV_CACHE, INPUTS_EMBEDS}),
        )

    def fuse_projections(self) -> None:
        """Fuse each block's projections for inference (after the weights are on their device;
        a later `.to()` would unshare the views, so loaders call this last)."""
        for block in self.model.transformer.blocks:
            cast(LLaDABlock, block).fuse_projections()  # ModuleList yields nn.Module; all are LLaDABlocks

    def unfuse_projections(self) -> None:
        """Back to one GEMM per projection (weight-only quantization replaces module weights)."""
        for module in self.model.transformer.blocks:
            block = cast(LLaDABlock, module)  # ModuleList yields nn.Module; all are LLaDABlocks
            block.qkv_weight = block.gate_up_weight = None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

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
        t = self.model.transformer
        x = t.wte(input_ids) if inputs_embeds is None else inputs_embeds  # soft tokens (dinfer_soft)
        B, T = x.shape[:2]
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        cos, sin = self.rotary.cos_sin(positions)
        for i, block in enumerate(t.blocks):
            x = block(x, self.rotary, cos, sin, positions, attention_mask, kv_cache[i] if kv_cache else None)
        if logits_index is not None:
            x = x.gather(1, logits_index[..., None].expand(-1, -1, x.shape[-1]))
        x = t.ln_f(x)
        head = t.wte.weight if self.cfg.weight_tying else t.ff_out.weight
        return linear(x, head)  # an FP8 head too (dserve.modeling.fp8)


def load_llada(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    load_format: str = "auto",
) -> LLaDAModel:
    """Load a LLaDA checkpoint directory (config.json, safetensors, tokenizer) by parameter name.

    load_format "dummy": random weights in the config's shape (only config.json is read)."""
    model, path = load_native(
        path,
        config_from_dict=LLaDAConfig.from_dict,
        build=LLaDAModel,
        random=random_llada,
        on_device=_rotary_on,
        dtype=dtype,
        device=device,
        load_format=load_format,
    )
    if has_tokenizer(path):
        model.tokenizer = load_tokenizer(path)
    return model


def _rotary_on(model: nn.Module, cfg: LLaDAConfig, device) -> None:
    """RoPE frequencies are not in the checkpoint: build them on the device, in float32."""
    model.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, full_precision=cfg.rope_full_precision).to(device)


def random_llada(cfg: LLaDAConfig, *, dtype=torch.bfloat16, device="cuda", seed: int = 0) -> LLaDAModel:
    """A LLaDA model with random weights in a real shape (for GPU benchmarks)."""
    with torch.device(device):
        model = LLaDAModel(cfg).to(dtype)
    _rotary_on(model, cfg, device)
    randomize(model, seed=seed)
    model.fuse_projections()
    return model
