"""dserve-llada's registrations: the LLaDA model family and the `llada` engine."""

from __future__ import annotations

from dserve.hookspecs import hookimpl
from dserve.registry import BIDIRECTIONAL, AlgorithmSpec, EngineSpec, ModelSpec


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="llada",
            architectures=("LLaDAModelLM",),
            loader="dserve_llada.model:load_llada",
            default_engine="llada",
            default_algorithm="reference",
            description="LLaDA-8B-Instruct/-Base, LLaDA-1.5 and same-architecture checkpoints",
        )
    )


@hookimpl
def register_engines(register):
    register(
        EngineSpec(
            name="llada",
            default_algorithm="reference",
            algorithms=(
                AlgorithmSpec(
                    name="reference",
                    runner="dserve_llada.reference:ReferenceRunner",
                    params="dserve_llada.params:ReferenceParams",
                    requires=frozenset({BIDIRECTIONAL}),
                    description="the published LLaDA loop: full canvas each step, fixed per-block split",
                ),
            ),
            description="LLaDA's own sampler (ML-GSAI/LLaDA generate.py)",
        )
    )
