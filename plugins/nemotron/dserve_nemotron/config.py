"""The config.json of NVIDIA's diffusion LMs, read into one dataclass.

Two published layouts share the parameter names `encoder.*` + `diffusion_head` (models.md 3.2-3.6):
- Ministral-based (NemotronLabsDiffusionModel and its older names MinistralDiffEncoderModel,
  NemotronLabsDiffusionEncoderModel): RoPE settings nested in `rope_parameters` (YaRN, with the
  Llama-4 query scaling `llama_4_scaling_beta`), no q/k norms, causal prompt prefix at decoding.
- Qwen3-based research variant (DiffEncoderModel): top-level `rope_theta` / `rope_scaling`, per-head
  q/k RMSNorm unless `disable_qk_norm`, bidirectional prompt prefix. Its files are not public:
  this reading follows the public SGLang port and is unverified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MINISTRAL_ARCHITECTURES = (
    "NemotronLabsDiffusionModel",
    "MinistralDiffEncoderModel",
    "NemotronLabsDiffusionEncoderModel",
)
QWEN3_ARCHITECTURES = ("DiffEncoderModel",)


@dataclass(frozen=True)
class NemotronConfig:
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope_parameters: dict[str, Any]  # transformers' standard form: rope_type, rope_theta, ...
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (Qwen3 research variant)
    causal_prefix: bool  # the published decoding encodes the prompt causally
    mask_token_id: int
    eos_token_ids: tuple[int, ...]
    block_size: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def llama4_beta(self) -> float | None:
        """Query scaling 1 + beta * ln(1 + floor(pos / original_max)), None = off."""
        return self.rope_parameters.get("llama_4_scaling_beta")

    @property
    def llama4_original_max(self) -> int | None:
        return self.rope_parameters.get("original_max_position_embeddings")

    @classmethod
    def from_dict(cls, cfg: dict) -> NemotronConfig:
        archs = cfg.get("architectures") or []
        arch = next((a for a in archs if a in MINISTRAL_ARCHITECTURES + QWEN3_ARCHITECTURES), None)
        if arch is None:
            raise ValueError(f"not a Nemotron diffusion config: architectures {archs}")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError("Nemotron configs with attention_bias / mlp_bias are not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {cfg.get('hidden_act')!r} not supported (silu only)")
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        qwen = arch in QWEN3_ARCHITECTURES
        eos = cfg.get("eos_token_id", 11 if not qwen else 151643)
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        return cls(
            architecture=arch,
            hidden_size=hidden,
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,  # heads * head_dim may differ from hidden
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5 if not qwen else 1e-6)),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            rope_parameters=_rope_parameters(cfg),
            qk_norm=qwen and not cfg.get("disable_qk_norm", False),
            causal_prefix=not qwen,
            mask_token_id=cfg.get("mask_token_id", 100 if not qwen else 151662),
            eos_token_ids=eos_ids,
            block_size=cfg.get("block_size", 32),
            extra={k: cfg[k] for k in ("dlm_paradigm", "dlm_type", "bos_token_id") if k in cfg},
        )


def _rope_parameters(cfg: dict) -> dict[str, Any]:
    """RoPE settings in transformers' v5 form (`rope_parameters`), from either layout:
    nested `rope_parameters` (Ministral) or top-level `rope_theta` + optional `rope_scaling`."""
    if cfg.get("rope_parameters"):
        params = dict(cfg["rope_parameters"])
    else:
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta", 1_000_000.0))
    if "type" in params and "rope_type" not in params:  # the pre-v5 key
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    return params
