"""dserve: a serving framework for masked-diffusion language models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dserve.llm import LLM

__all__ = ["LLM", "__version__"]


def __getattr__(name: str) -> Any:
    # `from dserve import LLM` without importing torch for everything else that imports dserve
    if name == "LLM":
        from dserve.llm import LLM

        return LLM
    raise AttributeError(f"module 'dserve' has no attribute {name!r}")
