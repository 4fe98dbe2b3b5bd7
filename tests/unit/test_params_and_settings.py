"""Parameter resolution order and validation; settings from flags and DSERVE_* variables."""

import pytest

from dserve.cli import build_parser
from dserve.params import DecodingParams, ParamError, resolve_params
from dserve.settings import Settings
from dserve_llada.params import ReferenceParams


def test_layers_resolve_request_over_server_over_model_over_algorithm():
    model_defaults = {"steps": 64, "block_length": 16}
    server = {"block_length": 8, "temperature": None}
    request = {"temperature": 0.5, "steps": None}
    p = resolve_params(ReferenceParams, model_defaults, server, request)
    assert (p.steps, p.block_length, p.temperature, p.remasking) == (64, 8, 0.5, "low_confidence")


def test_common_fields_an_algorithm_does_not_use_are_ignored_others_rejected():
    assert resolve_params(ReferenceParams, {"threshold": 0.9, "factor": 2.0}).block_length == 32
    with pytest.raises(ParamError) as err:
        resolve_params(ReferenceParams, {"tresholld": 0.9}, algorithm="llada/reference")
    assert err.value.param == "tresholld" and "remasking" in str(err.value)


def test_out_of_range_values_name_the_parameter():
    with pytest.raises(ParamError) as err:
        resolve_params(ReferenceParams, {"steps": 0})
    assert err.value.param == "steps"


@pytest.mark.parametrize(
    "max_tokens, block, steps, gen, per_block",
    [(128, 32, None, 128, 32), (100, 32, 64, 128, 16), (8, 32, None, 32, 32), (24, 8, 12, 24, 4), (16, 8, 5, 16, 3)],
)
def test_canvas_rounds_up_to_whole_blocks(max_tokens, block, steps, gen, per_block):
    p = DecodingParams(block_length=block, steps=steps)
    assert p.gen_length(max_tokens) == gen
    assert p.steps_per_block(gen) == per_block


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("DSERVE_PORT", "9123")
    monkeypatch.setenv("DSERVE_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("DSERVE_API_KEY", '["k1", "k2"]')
    s = Settings()
    assert (s.port, s.max_batch_size, s.api_key) == (9123, 4, ["k1", "k2"])
    assert Settings(port=9000).port == 9000  # a flag wins over the environment


def test_cli_aliases_of_the_earlier_servers():
    args = build_parser().parse_args(["serve", "--batch-size", "8", "--diffusion-steps", "64", "--block-size", "16", "--trust-remote-code"])
    assert (args.max_batch_size, args.steps, args.block_length, args.trust_remote_code) == (8, 64, 16, True)
