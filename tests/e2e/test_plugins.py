"""Plugins through a real install: the example plugin package in tests/example_plugin is
pip-installed into a temporary directory and found through its entry point."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from dserve import hookspecs
from e2e.conftest import MODEL_ARGS
from e2e.server import ServerProcess

EXAMPLE = Path(__file__).parent.parent / "example_plugin"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> str:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
    )
    return str(target)


def _env(plugin_path, **extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [plugin_path, os.environ.get("PYTHONPATH")]))}
    env.update(extra)
    return env


def _dserve(plugin_path, *args, **env):
    return subprocess.run(
        [sys.executable, "-m", "dserve", *args], env=_env(plugin_path, **env), capture_output=True, text=True, check=True
    )


def test_listing_shows_the_plugin_without_importing_torch(plugin_path):
    code = "import sys, json; from dserve.cli import main; main(['plugins', '--json']); print(json.dumps('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=_env(plugin_path), capture_output=True, text=True, check=True).stdout
    *listing, torch_loaded = out.strip().splitlines()
    rows = {row["name"]: row for row in json.loads("\n".join(listing))}
    assert rows["example"]["distribution"] == "dserve-example-plugin 0.1.0"
    assert rows["example"]["engines"] == [
        {"name": "example", "aliases": ["example-engine"], "default_algorithm": "left_to_right", "algorithms": ["left_to_right"]}
    ]
    assert rows["llada"]["models"][0]["architectures"] == ["LLaDAModelLM"]
    assert json.loads(torch_loaded) is False


def test_dserve_plugins_env_narrows_loading(plugin_path):
    only_llada = json.loads(_dserve(plugin_path, "plugins", "--json", DSERVE_PLUGINS="llada").stdout)
    assert [r["name"] for r in only_llada] == ["llada"]
    none = json.loads(_dserve(plugin_path, "plugins", "--json", DSERVE_PLUGINS="").stdout)
    assert none == []
    # the core's own operations wing loads anyway: listed with --all, its commands still there
    builtin = json.loads(_dserve(plugin_path, "plugins", "--json", "--all", DSERVE_PLUGINS="").stdout)
    assert [(r["name"], r["builtin"]) for r in builtin] == [("ops", True)]
    assert "dserve bench" in _dserve(plugin_path, "bench", "--help", DSERVE_PLUGINS="").stdout


def test_serve_hooks_rewrite_settings_and_launch(plugin_path):
    """prepare_serve_settings and launch_server: `dserve serve` runs what the plugin returns."""
    env = _env(plugin_path, DSERVE_EXAMPLE_DRY_RUN="1", DSERVE_EXAMPLE_SERVED_NAME="renamed")
    done = subprocess.run([sys.executable, "-m", "dserve", "--port", "8123"], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (3, "example plugin: would serve renamed on port 8123")


def test_register_commands_hook(plugin_path):
    assert _dserve(plugin_path, "example-hello", "--name", "tests").stdout.strip() == "hello from the example plugin, tests"


def test_register_server_flags_hook(plugin_path):
    """The plugin's flag is a serve option with its help, an environment variable checked
    against its declared bounds, and the default of its algorithm's parameter on a real server."""
    help_text = _dserve(plugin_path, "--help").stdout
    assert "--tokens-per-step" in help_text and "DSERVE_TOKENS_PER_STEP" in help_text
    listed = {row["name"]: row for row in json.loads(_dserve(plugin_path, "plugins", "--json").stdout)}
    assert listed["example"]["server_flags"] == [
        {"name": "tokens_per_step", "flags": ["--tokens-per-step"], "env": "DSERVE_TOKENS_PER_STEP"}
    ]
    refused = subprocess.run(
        [sys.executable, "-m", "dserve", "--port", "0"],
        env=_env(plugin_path, DSERVE_TOKENS_PER_STEP="0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "tokens_per_step" in refused.stderr, refused.stderr

    srv = ServerProcess(*MODEL_ARGS, "--tokens-per-step", "4", env={"PYTHONPATH": _env(plugin_path)["PYTHONPATH"]})
    try:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        model_id = client.models.list().data[0].id
        messages = [{"role": "user", "content": "Reverse the word: planet"}]
        body = {"engine": "example", "block_length": 16}
        by_default = client.chat.completions.create(model=model_id, messages=messages, max_tokens=16, extra_body=body)
        one = client.chat.completions.create(
            model=model_id, messages=messages, max_tokens=16, extra_body={**body, "tokens_per_step": 1}
        )
        assert by_default.usage.model_extra["nfe"] <= 4 < one.usage.model_extra["nfe"]  # 16 slots, 4 per step
        # another engine's algorithm does not get the example's default (it has no such parameter)
        other = client.chat.completions.create(model=model_id, messages=messages, max_tokens=8, extra_body={"engine": "llada"})
        assert other.choices[0].finish_reason in ("stop", "length")
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def plugin_server(plugin_path, tmp_path_factory):
    marker = tmp_path_factory.mktemp("marker") / "events.txt"
    srv = ServerProcess(*MODEL_ARGS, env={"PYTHONPATH": _env(plugin_path)["PYTHONPATH"], "DSERVE_EXAMPLE_MARKER": str(marker)})
    yield srv, marker
    srv.stop()


def _greedy_left_to_right(prompt_ids, gen_length, per_step):
    """The algorithm computed independently of the plugin, with the same model."""
    import torch

    from dserve.loader import default_model_dir
    from dserve.plugins import get_registry
    from dserve_llada.model import load_llada

    model = load_llada(os.environ.get("DSERVE_TEST_MODEL") or default_model_dir(get_registry()), dtype="float32")
    x = torch.tensor(prompt_ids + [model.info.mask_id] * gen_length)
    nfe = 0
    while (x == model.info.mask_id).any():
        logits = model(x[None])[0]
        idx = (x == model.info.mask_id).nonzero().flatten()[:per_step]
        x[idx] = logits[idx].argmax(-1)
        nfe += 1
    return x[len(prompt_ids) :].tolist(), nfe, model.tokenizer, model.info.stop_ids


def test_request_selects_the_plugin_engine(plugin_server):
    srv, _ = plugin_server
    client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    model_id = client.models.list().data[0].id
    messages = [{"role": "user", "content": "Reverse the word: planet"}]
    r = client.chat.completions.create(
        model=model_id,
        messages=messages,
        max_tokens=16,
        extra_body={"engine": "example", "generation_algorithm": "left_to_right", "tokens_per_step": 2, "block_length": 16},
    )
    from dserve.modeling.tokenizer import chat_prompt_ids

    tokens, _, tok, stop_ids = _greedy_left_to_right([], 0, 1)  # loads the model and tokenizer
    prompt = chat_prompt_ids(tok, messages)
    tokens, nfe, _, _ = _greedy_left_to_right(prompt, 16, 2)
    answer = tokens[: next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))]
    assert r.choices[0].message.content == tok.decode(answer, skip_special_tokens=True)
    assert r.usage.model_extra["nfe"] <= nfe
    # the algorithm name alone is enough when one engine has it; the alias works too
    alone = client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=16, extra_body={"generation_algorithm": "left_to_right", "block_length": 16}
    )
    alias = client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=16, extra_body={"engine": "example-engine", "block_length": 16}
    )
    assert alone.choices[0].message.content == alias.choices[0].message.content
    algos = httpx.get(srv.url + "/generation/algorithms").json()["algorithms"]
    ex = next(a for a in algos if a["engine"] == "example")
    assert ex["parameters"]["tokens_per_step"]["default"] == 1 and ex["available"]


def test_plugin_parameters_are_validated(plugin_server):
    srv, _ = plugin_server
    model_id = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
    r = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": model_id, "messages": [{"role": "user", "content": "hi"}], "engine": "example", "tokens_per_step": 0},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens_per_step"
    r = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": model_id, "messages": [{"role": "user", "content": "hi"}], "tokens_per_step": 2},
    )
    assert r.status_code == 400 and "tokens_per_step" in r.json()["error"]["message"]  # not a reference parameter


def test_register_routes_and_lifecycle_hooks(plugin_server):
    srv, marker = plugin_server
    model_id = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
    assert httpx.get(srv.url + "/example/ping").json() == {"plugin": "example", "model": model_id}
    assert "/example/ping" in httpx.get(srv.url + "/openapi.json").json()["paths"]  # documented like the core's routes
    assert marker.read_text().splitlines() == [f"startup {model_id}"]
    srv.stop()
    assert marker.read_text().splitlines() == [f"startup {model_id}", f"shutdown {model_id}"]


def test_every_hook_is_documented_and_exercised():
    """Each hookspec has a docstring and is implemented by the example plugin (tested above)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_plugin_source", EXAMPLE / "dserve_example_plugin" / "plugin.py")
    plugin_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin_module)
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "dserve_spec")]
    assert specs, "no hookspecs found"
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 40, f"hook {name} lacks documentation"
        assert hasattr(plugin_module, name), f"hook {name} is not exercised by the example plugin"
