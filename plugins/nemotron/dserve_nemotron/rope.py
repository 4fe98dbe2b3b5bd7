"""RoPE as the published Ministral3 / Qwen3 code computes it, including YaRN.

The inverse frequencies and the cos/sin scaling come from transformers' own RoPE init functions
(`ROPE_INIT_FUNCTIONS`), so YaRN's frequency blend and attention factor are bit-for-bit those of
the reference. YaRN here is static: it changes the frequencies at every length, not only past
`original_max_position_embeddings`. The rotation itself is the core's rotate-half in the
activation dtype (cos/sin cast down first), which is what transformers' Ministral3 and Qwen3 do.
"""

from __future__ import annotations

import torch

from dserve.modeling.layers import RotaryEmbedding
from dserve_nemotron.config import NemotronConfig


def rope_inverse_frequencies(cfg: NemotronConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim / 2] float32, attention scaling of cos/sin)."""
    params = cfg.rope_parameters
    if params["rope_type"] == "default":
        d = cfg.head_dim
        return 1.0 / (params["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d)), 1.0
    from transformers import PretrainedConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.utils import logging as hf_logging

    hf_cfg = PretrainedConfig()
    hf_cfg.hidden_size, hf_cfg.num_attention_heads, hf_cfg.head_dim = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    hf_cfg.max_position_embeddings = cfg.max_position_embeddings
    hf_cfg.rope_parameters = dict(params)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # published configs trip YaRN's factor-vs-lengths warning
    try:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_cfg, None)
    finally:
        hf_logging.set_verbosity(verbosity)
    return inv_freq.to(torch.float32), float(scaling)


class ScaledRotaryEmbedding(RotaryEmbedding):
    """The core rotary embedding with given inverse frequencies and a cos/sin scale factor."""

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float = 1.0):
        super().__init__(2 * inv_freq.numel(), theta=10000.0, full_precision=False)
        self.inv_freq = inv_freq.clone()
        self.attention_scaling = attention_scaling

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = super().cos_sin(positions)
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos, sin


def build_rotary(cfg: NemotronConfig, device=None) -> ScaledRotaryEmbedding:
    inv_freq, scaling = rope_inverse_frequencies(cfg)
    return ScaledRotaryEmbedding(inv_freq, scaling).to(device)
