"""Dream's config.json (Qwen2-style keys), with the values the published model uses."""

from __future__ import annotations

from dataclasses import dataclass

# Dream-v0-Instruct-7B's special tokens (Qwen2.5 vocabulary plus <|mask|>)
EOS_ID = 151643  # <|endoftext|>, also pad
IM_END_ID = 151645  # <|im_end|>, end of turn
MASK_ID = 151666  # <|mask|>


@dataclass(frozen=True)
class DreamConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    mask_token_id: int
    eos_token_id: int
    eot_token_id: int | None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, cfg: dict) -> DreamConfig:
        unsupported = {}
        if cfg.get("rope_scaling"):
            unsupported["rope_scaling"] = cfg["rope_scaling"]
        if cfg.get("use_sliding_window"):
            unsupported["use_sliding_window"] = True
        if cfg.get("hidden_act", "silu") != "silu":
            unsupported["hidden_act"] = cfg["hidden_act"]
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            unsupported["hidden_size % num_attention_heads"] = cfg["hidden_size"] % cfg["num_attention_heads"]
        if unsupported:
            raise ValueError(f"Dream config options not supported: {unsupported}")
        vocab = cfg["vocab_size"]
        heads = cfg["num_attention_heads"]
        # The published config has no eos/eot ids (the tokenizer and generation_config do); a
        # config that names them (our tiny checkpoints) wins, else Dream-7B's ids if they exist.
        eos = cfg.get("eos_token_id", cfg.get("pad_token_id", EOS_ID))
        if isinstance(eos, list):  # some Qwen2-derived configs list several
            eos = eos[0]
        eot = cfg.get("eot_token_id", IM_END_ID if vocab > IM_END_ID else None)
        return cls(
            hidden_size=cfg["hidden_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            intermediate_size=cfg["intermediate_size"],
            vocab_size=vocab,
            # the published config says 131072; the model was trained on 2048-token canvases
            max_position_embeddings=cfg.get("max_position_embeddings", 32768),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            mask_token_id=cfg.get("mask_token_id", MASK_ID),
            eos_token_id=eos,
            eot_token_id=eot,
        )
