"""Dream (Dream-org/Dream-v0-Instruct-7B, -Base-7B) with its published parameter names.

A Qwen2.5 layout: pre-norm decoder, q/k/v with biases and o_proj without, grouped-query
attention, RMSNorm in float32, rotate-half RoPE whose cos/sin are cast to the activation dtype
before rotating, SiLU-gated MLP, untied LM head, attention never causal.

Dream was initialised from an autoregressive model and keeps its alignment: the output at
position i predicts the token at i+1. Engines want logits aligned to positions, so the model
shifts them itself: aligned[i] = raw[i-1], aligned[0] = raw[0] (the published sampler's
`cat([l[:, :1], l[:, :-1]])`). Without a cache the shift is along the input columns, exactly as
published. With a cache it is by position: the output at position p-1 comes from the input when
p-1 is among the inputs, otherwise from the hidden state stored by the forward that wrote it
(hidden_cache.py), so a block forwarded over a cache gets the logit of its first position too.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from dserve.modeling import DiffusionModel, KVCache, ModelInfo
from dserve.modeling.fp8 import linear
from dserve.modeling.layers import RMSNorm, RotaryEmbedding, attention, swiglu
from dserve.modeling.loading import load_native, randomize
from dserve.registry import BIDIRECTIONAL, KV_CACHE
from dserve_dream.config import DreamConfig
from dserve_dream.hidden_cache import HiddenStateKVCache
from dserve_dream.tokenizer import load_dream_tokenizer


class DreamAttention(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)

    def forward(self, h, rotary, cos, sin, positions, attention_mask, cache):
        B, T, _ = h.shape
        q = self.q_proj(h).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotary.rotate(q, cos, sin), rotary.rotate(k, cos, sin)
        a = attention(q, k, v, positions, attention_mask, cache)
        return self.o_proj(a.transpose(1, 2).reshape(B, T, -1))


class DreamMLP(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return swiglu(x, self.gate_proj, self.up_proj, self.down_proj)


class DreamDecoderLayer(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DreamAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DreamMLP(cfg)

    def forward(self, x, rotary, cos, sin, positions, attention_mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), rotary, cos, sin, positions, attention_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBackbone(nn.Module):
    """`model` in the checkpoint: a container (no forward of its own) whose children are
    declared here so that they are typed (nn.Module.__getattr__ says `Tensor | Module`)."""

    embed_tokens: nn.Embedding
    layers: nn.ModuleList  # of DreamDecoderLayer
    norm: RMSNorm


class DreamModel(DiffusionModel):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.cfg = cfg
        self.num_layers, self.num_kv_heads, self.head_dim = (
            cfg.num_hidden_layers,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.model = DreamBackbone()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DreamDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, full_precision=False)
        stop_ids = tuple(i for i in (cfg.eos_token_id, cfg.eot_token_id) if i is not None)
        self.info = ModelInfo(
            family="dream",
            mask_id=cfg.mask_token_id,
            eos_id=cfg.eos_token_id,
            stop_ids=stop_ids,
            vocab_size=cfg.vocab_size,
            max_length=cfg.max_position_embeddings,
            capabilities=frozenset({BIDIRECTIONAL, KV_CACHE}),
        )

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def new_kv_cache(self, rows: int, capacity: int) -> HiddenStateKVCache:
        p = next(self.parameters())
        return HiddenStateKVCache(
            self.num_layers, rows, capacity, self.num_kv_heads, self.head_dim, self.cfg.hidden_size, p.dtype, p.device
        )

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
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        if kv_cache is not None and not isinstance(kv_cache, HiddenStateKVCache):
            raise TypeError("Dream needs the cache from model.new_kv_cache() (it keeps hidden states for the logit shift)")
        cos, sin = self.rotary.cos_sin(positions)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, self.rotary, cos, sin, positions, attention_mask, kv_cache[i] if kv_cache is not None else None)
        if logits_index is None:
            logits_index = torch.arange(T, device=x.device).expand(B, T)
        x = self._previous_outputs(x, positions, logits_index, kv_cache)
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        return linear(x, head)  # an FP8 head too (dserve.modeling.fp8)

    def _previous_outputs(self, x, positions, index, kv_cache):
        """The final hidden states whose logits are aligned to the inputs at `index` [B, n]:
        the output one position earlier (the position itself at position 0)."""
        d = x.shape[-1]
        if kv_cache is None:
            source = (index - 1).clamp(min=0)  # by column, as the published sampler shifts
            return x.gather(1, source[..., None].expand(-1, -1, d))
        store = kv_cache.write_hidden(x, positions)  # [B, capacity, d], this forward's included
        source = (positions.gather(1, index) - 1).clamp(min=0)
        return store.gather(1, source[..., None].expand(-1, -1, d))


def load_dream(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    load_format: str = "auto",
) -> DreamModel:
    """Load a Dream checkpoint directory (config.json, safetensors, tokenizer) by parameter name.

    load_format "dummy": random weights in the config's shape (only config.json is read)."""
    model, path = load_native(
        path,
        config_from_dict=DreamConfig.from_dict,
        build=DreamModel,
        random=random_dream,
        on_device=_rotary_on,
        dtype=dtype,
        device=device,
        load_format=load_format,
    )
    model.tokenizer = load_dream_tokenizer(path)
    _add_end_of_turn(model)
    return model


def _rotary_on(model: nn.Module, cfg: DreamConfig, device) -> None:
    """RoPE frequencies are not in the checkpoint: float32 on the device (cast down when used)."""
    model.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, full_precision=False).to(device)


def _add_end_of_turn(model: DreamModel) -> None:
    """The published config names no end-of-turn id; the tokenizer knows <|im_end|>."""
    tok = model.tokenizer
    if tok is None or model.cfg.eot_token_id is not None:
        return
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(eot, int) and eot != tok.unk_token_id and eot not in model.info.stop_ids:
        model.info = dataclasses.replace(model.info, stop_ids=(*model.info.stop_ids, eot))


def random_dream(cfg: DreamConfig, *, dtype=torch.bfloat16, device="cuda", seed: int = 0) -> DreamModel:
    """A Dream model with random weights in a real shape (benchmarks, tests)."""
    with torch.device(device):
        model = DreamModel(cfg).to(dtype)
    _rotary_on(model, cfg, device)
    randomize(model, seed=seed)  # in place; returns the same model (typed nn.Module)
    return model
