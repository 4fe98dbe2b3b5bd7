"""The config.json of inclusionAI's LLaDA2 MoE checkpoints (`LLaDA2MoeModelLM`, model_type
`llada2_moe`), read into one dataclass with the published defaults of `configuration_llada2_moe.py`.

Keys the published modeling code reads: sizes, `use_qkv_bias`, `use_qk_norm`, `use_bias` (the
attention output projection), `partial_rotary_factor` (RoPE covers the first part of each head),
`rope_theta`, the router (`num_experts`, `num_experts_per_tok`, `n_group`, `topk_group`,
`routed_scaling_factor`), `num_shared_experts`, `moe_intermediate_size`,
`first_k_dense_replace` (the first k layers have a dense MLP of `intermediate_size`).
Keys present in published configs but read by no published code are kept in `extra`
(`score_function`, `router_dtype`, `norm_topk_prob`, `moe_router_enable_expert_bias`, `rotary_dim`,
`norm_head`): the router is always sigmoid scores in float32 with the `expert_bias` buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("LLaDA2MoeModelLM",)
# the published generate's defaults (eos 156892 <|endoftext|>, mask 156895 <|mask|>)
PUBLISHED_EOS, PUBLISHED_MASK = 156892, 156895
_UNREAD = ("score_function", "router_dtype", "norm_topk_prob", "moe_router_enable_expert_bias", "rotary_dim", "norm_head")


@dataclass(frozen=True)
class LLaDA2Config:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # the dense MLP of the first `first_k_dense_replace` layers
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope_theta: float
    rotary_dim: int  # head_dim * partial_rotary_factor: RoPE on these leading dims of each head
    use_qkv_bias: bool
    use_qk_norm: bool
    use_bias: bool  # bias of the attention output projection `dense`
    tie_word_embeddings: bool
    num_experts: int | None  # None: every layer dense
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    moe_intermediate_size: int
    num_shared_experts: int | None
    first_k_dense_replace: int
    pad_token_id: int | None
    eos_token_id: int
    mask_token_id: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts is not None and i >= self.first_k_dense_replace

    @classmethod
    def from_dict(cls, cfg: dict) -> LLaDA2Config:
        archs = cfg.get("architectures") or []
        if not any(a in ARCHITECTURES for a in archs):
            raise ValueError(f"not a LLaDA2 MoE config: architectures {archs}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {cfg.get('hidden_act')!r} not supported (silu only)")
        scaling = cfg.get("rope_scaling")
        if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
            raise ValueError(f"rope_scaling {scaling!r} not supported (published LLaDA2 configs use none)")
        hidden, heads = cfg.get("hidden_size", 1024), cfg.get("num_attention_heads", 16)
        head_dim = cfg.get("head_dim") or hidden // heads
        eos = cfg.get("eos_token_id", PUBLISHED_EOS)
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        num_experts = cfg.get("num_experts", 16)
        moe_inter = cfg.get("moe_intermediate_size")
        if num_experts is not None and moe_inter is None:
            raise ValueError("a LLaDA2 MoE config needs moe_intermediate_size")
        n_group = cfg.get("n_group", 8)
        if num_experts is not None and num_experts % n_group:
            raise ValueError(f"num_experts {num_experts} is not a multiple of n_group {n_group}")
        return cls(
            hidden_size=hidden,
            num_layers=cfg.get("num_hidden_layers", 24),
            num_heads=heads,
            # the published default 0 would divide by zero: 0 / missing means no GQA
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            intermediate_size=cfg.get("intermediate_size") or 0,
            vocab_size=cfg.get("vocab_size", 30592),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            max_position_embeddings=cfg.get("max_position_embeddings", 16384),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rotary_dim=int(head_dim * cfg.get("partial_rotary_factor", 0.5)),
            use_qkv_bias=bool(cfg.get("use_qkv_bias", False)),
            use_qk_norm=bool(cfg.get("use_qk_norm", True)),
            use_bias=bool(cfg.get("use_bias", True)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            num_experts=num_experts,
            num_experts_per_tok=cfg.get("num_experts_per_tok", 2),
            n_group=n_group,
            topk_group=cfg.get("topk_group", 4),
            routed_scaling_factor=float(cfg.get("routed_scaling_factor", 2.5)),
            moe_intermediate_size=moe_inter or 0,
            num_shared_experts=cfg.get("num_shared_experts", 0),
            first_k_dense_replace=cfg.get("first_k_dense_replace", 0),
            pad_token_id=cfg.get("pad_token_id", 126081),
            eos_token_id=eos,
            mask_token_id=cfg.get("mask_token_id", PUBLISHED_MASK),
            extra={k: cfg[k] for k in _UNREAD if k in cfg},
        )
