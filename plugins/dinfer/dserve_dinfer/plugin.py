"""dserve-dinfer's registration: the `dinfer` engine and its four algorithms."""

from __future__ import annotations

from dserve.hookspecs import hookimpl
from dserve.registry import BIDIRECTIONAL, INPUTS_EMBEDS, KV_CACHE, AlgorithmSpec, EngineSpec

_NEEDS = frozenset({BIDIRECTIONAL, KV_CACHE})


@hookimpl
def register_engines(register):
    register(
        EngineSpec(
            name="dinfer",
            default_algorithm="dinfer_blockwise",
            algorithms=(
                AlgorithmSpec(
                    name="dinfer_blockwise",
                    runner="dserve_dinfer.runner:DInferRunner",
                    params="dserve_dinfer.params:DInferParams",
                    requires=_NEEDS,
                    description="threshold parallel decoding per block; KV cache none / prefix / dual with vicinity refresh",
                ),
                AlgorithmSpec(
                    name="dinfer_hierarchy",
                    runner="dserve_dinfer.runner:HierarchyRunner",
                    params="dserve_dinfer.params:HierarchyParams",
                    requires=_NEEDS,
                    description="hierarchical decoding: the best slot of every run of masks (above low_threshold) plus all above threshold",
                ),
                AlgorithmSpec(
                    name="dinfer_credit",
                    runner="dserve_dinfer.runner:CreditRunner",
                    params="dserve_dinfer.params:CreditParams",
                    requires=_NEEDS,
                    description="threshold decoding on logits fused with a per-block credit EMA of past top-1 predictions",
                ),
                AlgorithmSpec(
                    name="dinfer_soft",
                    runner="dserve_dinfer.runner:SoftRunner",
                    params="dserve_dinfer.params:SoftParams",
                    requires=_NEEDS | {INPUTS_EMBEDS},
                    description="soft diffusion iterations (IterSmooth): masked inputs carry part of the predicted embedding",
                ),
            ),
            description="dInfer (inclusionAI/dInfer) decoders and iteration managers",
        )
    )
