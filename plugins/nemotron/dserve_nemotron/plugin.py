"""dserve-nemotron's registrations: the Nemotron diffusion model family and the `nemotron` engine."""

from __future__ import annotations

from dserve.hookspecs import hookimpl
from dserve.registry import BLOCK_CAUSAL, KV_CACHE, AlgorithmSpec, EngineSpec, ModelSpec

_NEEDS = frozenset({BLOCK_CAUSAL, KV_CACHE})


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="nemotron",
            architectures=(
                "NemotronLabsDiffusionModel",
                "MinistralDiffEncoderModel",
                "NemotronLabsDiffusionEncoderModel",
                "DiffEncoderModel",
            ),
            loader="dserve_nemotron.model:load_nemotron",
            default_engine="nemotron",
            default_algorithm="block_diffusion",
            description="NVIDIA Nemotron-Labs-Diffusion 3B/8B/14B (and the older Ministral-based names); "
            "research DiffEncoderModel (Qwen3-based, format unverified)",
        )
    )


@hookimpl
def register_engines(register):
    register(
        EngineSpec(
            name="nemotron",
            default_algorithm="block_diffusion",
            algorithms=(
                AlgorithmSpec(
                    name="block_diffusion",
                    runner="dserve_nemotron.block_diffusion:BlockDiffusionRunner",
                    params="dserve_nemotron.params:BlockDiffusionParams",
                    requires=_NEEDS,
                    description="blocks denoised in parallel over an exact KV cache of the causal prefix; "
                    "threshold unmasking, next-token seed per block, EOS early stop",
                ),
                AlgorithmSpec(
                    name="ar",
                    runner="dserve_nemotron.autoregressive:AutoregressiveRunner",
                    params="dserve_nemotron.params:AutoregressiveParams",
                    requires=_NEEDS,
                    description="autoregressive decoding with a KV cache (causal attention, same weights)",
                ),
                AlgorithmSpec(
                    name="linear_spec",
                    runner="dserve_nemotron.linear_spec:LinearSpecRunner",
                    params="dserve_nemotron.params:LinearSpecParams",
                    requires=_NEEDS,
                    description="self-speculation: bidirectional draft of a block, causal verify, "
                    "accept the matching prefix plus one token (greedy AR output at T=0)",
                ),
            ),
            description="Nemotron-Labs-Diffusion's own loops (model card generate / ar_generate / linear_spec_generate)",
        )
    )
