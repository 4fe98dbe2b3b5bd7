"""LLaDA's config.json (OLMo-style keys), with the values the published model uses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LLaDAConfig:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    vocab_size: int
    embedding_size: int
    max_sequence_length: int
    rope_theta: float
    rms_norm_eps: float
    rope_full_precision: bool
    weight_tying: bool
    mask_token_id: int
    eos_token_id: int
    eot_token_id: int | None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, cfg: dict) -> LLaDAConfig:
        unsupported = {
            k: cfg[k]
            for k in ("include_bias", "include_qkv_bias", "alibi", "attention_layer_norm", "input_emb_norm")
            if cfg.get(k)
        }
        if cfg.get("block_type", "llama") != "llama" or cfg.get("layer_norm_type", "rms") != "rms":
            unsupported["block_type/layer_norm_type"] = (cfg.get("block_type"), cfg.get("layer_norm_type"))
        if cfg.get("activation_type", "silu") != "silu":
            unsupported["activation_type"] = cfg.get("activation_type")
        if unsupported:
            raise ValueError(f"LLaDA config options not supported: {unsupported}")
        d_model = cfg["d_model"]
        mlp_hidden = cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * d_model
        n_heads = cfg["n_heads"]
        return cls(
            d_model=d_model,
            n_layers=cfg["n_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("n_kv_heads") or n_heads,
            mlp_hidden_size=mlp_hidden,
            vocab_size=cfg["vocab_size"],
            embedding_size=cfg.get("embedding_size") or cfg["vocab_size"],
            max_sequence_length=cfg.get("max_sequence_length", 4096),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_full_precision=bool(cfg.get("rope_full_precision", True)),
            weight_tying=bool(cfg.get("weight_tying", False)),
            mask_token_id=cfg.get("mask_token_id", 126336),
            eos_token_id=cfg.get("eos_token_id", 126081),
            # not in the published config; LLaDA-8B-Instruct's <|eot_id|> is 126348
            eot_token_id=cfg.get("eot_token_id", 126348 if cfg["vocab_size"] > 126348 else None),
        )
