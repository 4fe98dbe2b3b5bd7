"""dserve-dream's registrations: the Dream model family and the `dream` engine."""

from __future__ import annotations

from dserve.hookspecs import hookimpl
from dserve.registry import BIDIRECTIONAL, AlgorithmSpec, EngineSpec, ModelSpec

_PARAMS = "dserve_dream.params:DreamParams"
_RUNNERS = {
    "origin": ("OriginRunner", "each masked position committed independently at random, at the schedule's rate"),
    "maskgit_plus": ("MaskGitPlusRunner", "the scheduled number of positions with the highest top-1 probability"),
    "topk_margin": ("TopKMarginRunner", "the scheduled number of positions with the largest top-1 minus top-2 margin"),
    "entropy": ("EntropyRunner", "the scheduled number of positions with the lowest entropy (Dream's recommended)"),
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="dream",
            architectures=("DreamModel",),
            loader="dserve_dream.model:load_dream",
            default_engine="dream",
            default_algorithm="entropy",
            description="Dream-v0-Instruct-7B/-Base-7B and same-architecture checkpoints (shifted logits)",
        )
    )


@hookimpl
def register_engines(register):
    register(
        EngineSpec(
            name="dream",
            default_algorithm="entropy",
            algorithms=tuple(
                AlgorithmSpec(
                    name=name,
                    runner=f"dserve_dream.runner:{cls}",
                    params=_PARAMS,
                    requires=frozenset({BIDIRECTIONAL}),
                    description=description,
                )
                for name, (cls, description) in _RUNNERS.items()
            ),
            description="Dream's own sampler (diffusion_generate): whole canvas each step, time-scheduled commits",
        )
    )
