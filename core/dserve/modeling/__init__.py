"""Model contract and shared layers used by every model plugin."""

from dserve.modeling.kv_cache import KVCache, LayerCache
from dserve.modeling.model import DiffusionModel, ModelInfo

__all__ = ["DiffusionModel", "KVCache", "LayerCache", "ModelInfo"]
