"""An explicit `null` in a request is a value: for every nullable parameter of every registered
algorithm, a request sending null gets what the parameter documents null to mean, whatever the
server, model and algorithm defaults say (docs/api.md, "null")."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dserve.params import nullable, resolve_params
from dserve.plugins import get_registry


def _nullable_params() -> list[tuple[str, type, str]]:
    out = []
    for engine in get_registry().engines.values():
        for alg in engine.algorithms:
            cls = alg.load_params()
            for name, info in cls.model_fields.items():
                if nullable(info.annotation):
                    out.append((f"{engine.name}/{alg.name}", cls, name))
    return out


NULLABLE = _nullable_params()


def _a_value(cls, name: str):
    """A non-null value the parameter accepts (so that a default layer can set one), or None
    where it accepts none (apd refuses threshold and factor outright: null is all it takes)."""
    for candidate in (True, 1, 0.5, 2, 8, 0.9):
        try:
            cls.model_validate({name: candidate})
        except ValidationError:
            continue
        if getattr(cls.model_validate({name: candidate}), name) == candidate:
            return candidate
    return None


def test_there_are_nullable_parameters_in_every_kind_of_engine():
    engines = {alg.split("/")[0] for alg, _, _ in NULLABLE}
    names = {name for _, _, name in NULLABLE}
    assert {"fastdllm", "dinfer", "dream", "nemotron"} <= engines
    assert {"steps", "threshold", "factor", "cache_update_freq", "top_p", "top_k", "alg_temp", "causal_context"} <= names


@pytest.mark.parametrize("algorithm, cls, name", NULLABLE, ids=[f"{a}:{n}" for a, _, n in NULLABLE])
def test_explicit_null_overrides_every_default(algorithm, cls, name):
    value = _a_value(cls, name)
    defaults: tuple[dict, ...] = ()
    if value is not None:
        defaults = ({name: value}, {name: value})  # model defaults, server defaults
        assert getattr(resolve_params(cls, *defaults, algorithm=algorithm), name) == value
    resolved = resolve_params(cls, *defaults, request={name: None}, algorithm=algorithm)
    assert getattr(resolved, name) is None
    # absent, the defaults stand
    if defaults:
        assert getattr(resolve_params(cls, *defaults, request={}, algorithm=algorithm), name) == value


def test_class_defaults_are_overridden_by_null_too():
    # nemotron/block_diffusion's threshold defaults to 0.9 (the model card); null = fixed split
    from dserve_nemotron.params import BlockDiffusionParams

    assert resolve_params(BlockDiffusionParams).threshold == 0.9
    assert resolve_params(BlockDiffusionParams, request={"threshold": None}).threshold is None


def test_null_for_a_parameter_without_a_null_meaning_leaves_the_defaults():
    from dserve_llada.params import ReferenceParams

    p = resolve_params(ReferenceParams, {"block_length": 8}, request={"block_length": None, "temperature": None})
    assert (p.block_length, p.temperature) == (8, 0.0)


def test_null_in_a_default_layer_still_means_not_set():
    from dserve_fastdllm.params import FastDLLMParams

    p = resolve_params(FastDLLMParams, {"threshold": 0.9}, {"threshold": None}, request={})
    assert p.threshold == 0.9
