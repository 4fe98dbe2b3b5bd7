"""dserve-llada2's registrations: the LLaDA2 MoE model family and the `llada2` engine."""

from __future__ import annotations

from dserve.hookspecs import hookimpl
from dserve.registry import BLOCK_CAUSAL, KV_CACHE, AlgorithmSpec, EngineSpec, ModelSpec


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="llada2",
            architectures=("LLaDA2MoeModelLM",),
            loader="dserve_llada2.model:load_llada2",
            default_engine="llada2",
            default_algorithm="llada2",
            description="inclusionAI LLaDA2.0-mini / LLaDA2.0-flash (Mixture-of-Experts, block-causal "
            "diffusion; published Hugging Face layout, no remote code)",
        )
    )


@hookimpl
def register_engines(register):
    register(
        EngineSpec(
            name="llada2",
            default_algorithm="llada2",
            algorithms=(
                AlgorithmSpec(
                    name="llada2",
                    runner="dserve_llada2.block_diffusion:LLaDA2BlockDiffusionRunner",
                    params="dserve_llada2.params:LLaDA2Params",
                    requires=frozenset({BLOCK_CAUSAL, KV_CACHE}),
                    description="the published LLaDA2 generate: absolute blocks over a block-causal KV cache, "
                    "threshold / low-confidence commits with a per-block step schedule, EOS stop after a block "
                    "(or at once with eos_early_stop)",
                ),
                AlgorithmSpec(
                    name="llada2_editing",
                    runner="dserve_llada2.block_diffusion:LLaDA2BlockDiffusionRunner",
                    params="dserve_llada2.params:LLaDA2EditingParams",
                    requires=frozenset({BLOCK_CAUSAL, KV_CACHE}),
                    description="LLaDA2.1's generate: the same blocks and cache, plus token editing (decoded "
                    "positions rewritten above editing_threshold, up to max_post_steps after the last mask); "
                    "a block streams when it ends",
                ),
            ),
            description="LLaDA2's own decoding loops (LLaDA2MoeModelLM.generate of the published LLaDA2.0 and 2.1 code) (LLaDA2MoeModelLM.generate of the published modeling code)",
        )
    )
