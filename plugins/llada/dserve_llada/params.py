"""Parameters of the LLaDA reference loop (torch-free: listing algorithms must not load torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dserve.params import DecodingParams


class ReferenceParams(DecodingParams):
    """ML-GSAI/LLaDA `generate`: semi-autoregressive blocks, a fixed per-block step split."""

    remasking: Literal["low_confidence", "random"] = Field(
        "low_confidence", description="which masked positions to commit each step"
    )
    cfg_scale: float = Field(0.0, ge=0.0, le=20.0, description="classifier-free guidance; 0 = off")
