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
    args = build_parser().parse_args(
        ["serve", "--batch-size", "8", "--diffusion-steps", "64", "--block-size", "16", "--trust-remote-code"]
    )
    assert (args.max_batch_size, args.steps, args.block_length, args.trust_remote_code) == (8, 64, 16, True)


# ---- one declaration of the decoding fields ------------------------------------------------


def _flags_by_dest():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags: dict[str, list[str]] = {}
    for action in serve._actions:
        flags.setdefault(action.dest, []).extend(action.option_strings)
    return flags


def test_wire_settings_cli_and_params_derive_from_the_one_declaration():
    from dserve.fields import CORE_FIELDS
    from dserve.protocol import ChatCompletionRequest, GenerateRequest

    flags = _flags_by_dest()
    for f in CORE_FIELDS:
        for model in (ChatCompletionRequest, GenerateRequest):
            assert model.model_fields[f.name].metadata == Settings.model_fields[f.setting_name].metadata, f.name
        assert list(f.cli_flags) == flags[f.setting_name][: len(f.cli_flags)], f.name
        if f.name in DecodingParams.model_fields:
            assert DecodingParams.model_fields[f.name].metadata == Settings.model_fields[f.setting_name].metadata


def test_a_bound_is_the_same_on_the_wire_in_settings_and_in_an_algorithm():
    """threshold 0 passed the protocol and failed fastdllm's parameters; now both accept it,
    and both refuse what the declaration refuses."""
    from pydantic import ValidationError

    from dserve.protocol import ChatCompletionRequest
    from dserve_fastdllm.params import FastDLLMParams

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert ChatCompletionRequest(**body, threshold=0.0).threshold == 0.0
    assert resolve_params(FastDLLMParams, {"threshold": 0.0}).threshold == 0.0
    assert Settings(threshold=0.0).threshold == 0.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            ChatCompletionRequest(**body, threshold=bad)
        with pytest.raises(ParamError):
            resolve_params(FastDLLMParams, {"threshold": bad})
        with pytest.raises(ValidationError):
            Settings(threshold=bad)


def test_every_core_default_flag_and_variable_still_works(monkeypatch):
    args = build_parser().parse_args(
        [
            "serve",
            "--engine",
            "fastdllm",
            "--algorithm",
            "basic",
            "--steps",
            "8",
            "--block-length",
            "8",
            "--remasking",
            "random",
            "--threshold",
            "0.5",
            "--factor",
            "2",
            "--cfg-scale",
            "1",
            "--temperature",
            "0.5",
            "--max-tokens",
            "64",
        ]
    )
    assert (args.engine, args.algorithm, args.steps, args.block_length, args.remasking) == ("fastdllm", "basic", 8, 8, "random")
    assert (args.threshold, args.factor, args.cfg_scale, args.temperature, args.max_tokens) == (0.5, 2.0, 1.0, 0.5, 64)
    monkeypatch.setenv("DSERVE_ALGORITHM", "basic")
    monkeypatch.setenv("DSERVE_STEPS", "16")
    s = Settings()
    assert (s.algorithm, s.steps, s.max_tokens) == ("basic", 16, 128)


def test_apd_flags_come_from_the_fastdllm_plugin_not_the_core(monkeypatch):
    from pathlib import Path

    import dserve
    from dserve.plugins import get_registry

    core = Path(dserve.__file__).parent
    assert not [p for p in core.rglob("*.py") if "apd" in p.read_text()], "the core names an engine's algorithm"
    registry = get_registry()
    assert registry.owners[("server_flag", "enable_apd")] == "fastdllm"
    args = build_parser().parse_args(["serve", "--enable-apd", "--apd-max-parallel", "4", "--apd-threshold", "0.5"])
    assert (args.enable_apd, args.apd_max_parallel, args.apd_threshold) == (True, 4, 0.5)
    assert build_parser().parse_args(["serve", "--disable-apd"]).enable_apd is False
    monkeypatch.setenv("DSERVE_ENABLE_APD", "1")
    monkeypatch.setenv("DSERVE_APD_THRESHOLD", "0.5")
    s = Settings()
    assert (s.enable_apd, s.apd_threshold) == (True, 0.5)
    monkeypatch.setenv("DSERVE_APD_THRESHOLD", "1.5")  # the plugin's declared bound
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize("given, keys", [("secret", ["secret"]), ("k1,k2", ["k1", "k2"]), ('["k1", "k2"]', ["k1", "k2"])])
def test_api_key_as_plain_comma_separated_or_json(monkeypatch, given, keys):
    monkeypatch.setenv("DSERVE_API_KEY", given)
    assert Settings().api_key == keys
    monkeypatch.delenv("DSERVE_API_KEY")
    args = build_parser().parse_args(["serve", "--api-key", given])
    assert Settings(api_key=args.api_key).api_key == keys
    assert Settings(api_key=build_parser().parse_args(["serve", "--api-key", "a", "--api-key", "b"]).api_key).api_key == [
        "a",
        "b",
    ]


def test_generation_algorithms_fields_show_bounds_flags_and_the_servers_defaults():
    from dserve.plugins import get_registry
    from dserve.service import GenerationService

    fields = {f["name"]: f for f in GenerationService(Settings(steps=8, threshold=0.5), get_registry()).decoding_fields()}
    assert (fields["steps"]["server_default"], fields["steps"]["minimum"], fields["steps"]["maximum"]) == (8, 1, 512)
    assert fields["threshold"]["server_default"] == 0.5 and fields["threshold"]["env"] == "DSERVE_THRESHOLD"
    assert fields["generation_algorithm"]["flags"] == ["--algorithm"] and fields["enable_apd"]["request_field"] is False


def test_a_plugin_flag_cannot_take_a_core_name():
    from dserve.fields import DecodingField
    from dserve.registry import Registry
    from dserve.settings import settings_class

    with pytest.raises(ValueError, match="registered twice"):
        Registry().add_server_flag(DecodingField("threshold", float, "a second threshold"), "someplugin")
    with pytest.raises(ValueError, match="port"):
        settings_class([DecodingField("port", int, "a second port")])
