"""dserve-fastdllm's registration: the `fastdllm` engine, its three published algorithms and `apd`."""

from __future__ import annotations

from dserve.hookspecs import hookimpl
from dserve.registry import BIDIRECTIONAL, KV_CACHE, AlgorithmSpec, EngineSpec

_PARAMS = "dserve_fastdllm.params:FastDLLMParams"


@hookimpl
def register_server_flags(register):
    # torch-free: params.py imports pydantic only
    from dserve_fastdllm.params import APD_MAX_PARALLEL, APD_THRESHOLD, ENABLE_APD

    for flag in (ENABLE_APD, APD_MAX_PARALLEL, APD_THRESHOLD):
        register(flag)


@hookimpl
def register_engines(register):
    register(
        EngineSpec(
            name="fastdllm",
            aliases=("fast-dllm",),
            default_algorithm="dual_cache",
            algorithms=(
                AlgorithmSpec(
                    name="basic",
                    runner="dserve_fastdllm.runner:BasicRunner",
                    params=_PARAMS,
                    requires=frozenset({BIDIRECTIONAL}),
                    description="parallel decoding (threshold / factor / fixed split), full canvas each step, no cache",
                ),
                AlgorithmSpec(
                    name="prefix_cache",
                    runner="dserve_fastdllm.runner:PrefixCacheRunner",
                    params=_PARAMS,
                    requires=frozenset({BIDIRECTIONAL, KV_CACHE}),
                    description="K/V of everything before the block cached at block start; steps forward block + suffix",
                ),
                AlgorithmSpec(
                    name="dual_cache",
                    runner="dserve_fastdllm.runner:DualCacheRunner",
                    params=_PARAMS,
                    requires=frozenset({BIDIRECTIONAL, KV_CACHE}),
                    description="K/V of prefix and suffix cached at block start; steps forward only the block",
                ),
                AlgorithmSpec(
                    name="apd",
                    runner="dserve_fastdllm.runner:APDRunner",
                    params="dserve_fastdllm.params:APDParams",
                    requires=frozenset({BIDIRECTIONAL, KV_CACHE}),
                    description="confidence-adaptive parallel decoding (vdiff's --enable-apd) on the dual cache: "
                    "commits the leftmost confident run of masks, up to apd_max_parallel per step",
                ),
            ),
            description="Fast-dLLM (NVlabs/Fast-dLLM llada/generate.py): training-free parallel decoding with KV caches",
        )
    )
