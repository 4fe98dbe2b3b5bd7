"""Starting a server: API keys in every accepted form, startup that cannot serve exits with
one clear line, and `dserve --help` is the serve help with defaults and variables."""

import os
import re
import socket
import subprocess
import sys

import httpx
import pytest

from e2e.conftest import MODEL_ARGS
from e2e.server import ServerProcess

# Loading the tiny model and failing takes seconds; a busy 2-core machine may take minutes.
STARTUP_TIMEOUT_S = 600


@pytest.mark.parametrize(
    "args, env, keys",
    [
        (["--api-key", "secret"], {}, ["secret"]),
        (["--api-key", "k1,k2"], {}, ["k1", "k2"]),
        (["--api-key", '["k1", "k2"]'], {}, ["k1", "k2"]),
        ([], {"DSERVE_API_KEY": "secret"}, ["secret"]),
        ([], {"DSERVE_API_KEY": "k1,k2"}, ["k1", "k2"]),
        ([], {"DSERVE_API_KEY": '["k1", "k2"]'}, ["k1", "k2"]),
    ],
    ids=["flag-plain", "flag-comma", "flag-json", "env-plain", "env-comma", "env-json"],
)
def test_api_key_as_plain_comma_separated_or_json(args, env, keys):
    srv = ServerProcess(*MODEL_ARGS, *args, env=env, ready_timeout=STARTUP_TIMEOUT_S)
    try:
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        assert httpx.get(srv.url + "/v1/models", headers={"Authorization": "Bearer k1,k2"}).status_code == 401
        for key in keys:
            r = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, (key, r.text)
    finally:
        srv.stop()


def _serve(*args: str, port: int | None = None) -> subprocess.CompletedProcess:
    port = port or _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dserve", "--host", "127.0.0.1", "--port", str(port), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _failure_line(run: subprocess.CompletedProcess) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("dserve: cannot serve:")]
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, names",
    [
        (["--model", "/nonexistent"], ["model /nonexistent", "neither a directory nor a Hugging Face repo id"]),
        # HF_HUB_OFFLINE=1 (_serve): the cache alone (downloads: tests/e2e/test_hub_download.py)
        (["--model", "no-such-org/no-such-model"], ["model no-such-org/no-such-model", "not in the local cache"]),
        (["--engine", "nope"], ["--engine nope", "unknown engine 'nope'"]),
        (
            ["--engine", "dinfer", "--algorithm", "dual_cache"],
            ["--algorithm dual_cache", "unknown generation_algorithm 'dual_cache'"],
        ),
    ],
    ids=["model-path", "model-hub-id", "engine", "algorithm"],
)
def test_startup_that_cannot_serve_exits_1_naming_what_failed(args, names):
    run = _serve(*MODEL_ARGS, *args)
    assert run.returncode == 1, run.stderr
    line = _failure_line(run)
    for name in names:
        assert name in line, line


def test_port_in_use_exits_1_naming_the_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _serve(*MODEL_ARGS, port=port)
    assert run.returncode == 1, run.stderr
    assert f"port {port} on 127.0.0.1" in _failure_line(run)


def test_dserve_help_is_the_serve_help_with_defaults_and_variables():
    run = subprocess.run([sys.executable, "-m", "dserve", "--help"], capture_output=True, text=True, check=True)
    serve = subprocess.run([sys.executable, "-m", "dserve", "serve", "--help"], capture_output=True, text=True, check=True)
    assert run.stdout == serve.stdout
    text = " ".join(run.stdout.split())  # help lines wrap anywhere
    for command in ("bench", "eval", "plugins", "status"):  # the other commands are listed too
        assert re.search(rf"\b{command}\b", text.split("other commands", 1)[1]), command
    assert "--port PORT port to listen on (default: 8000; env: DSERVE_PORT)" in text
    assert (
        "--max-tokens MAX_TOKENS tokens to generate when a request gives no max_tokens (default: 128; env: DSERVE_MAX_TOKENS)"
        in text
    )
    assert "--diffusion-steps" in text and "--block-size" in text and "--batch-size" in text
    assert "--enable-apd" in text and "DSERVE_APD_THRESHOLD" in text  # the fastdllm plugin's flags

    from dserve.cli import build_parser

    serve_parser = build_parser()._subparsers._group_actions[0].choices["serve"]
    for action in serve_parser._actions:
        if not action.option_strings or action.dest == "help" or action.help == "==SUPPRESS==":
            continue
        assert f"env: DSERVE_{action.dest.upper()}" in action.help, action.option_strings
        assert "default" in action.help, action.option_strings


def test_front_gives_up_on_workers_that_cannot_serve():
    """Workers that exit at startup are not restarted forever: the front exits 1 as well."""
    run = _serve("--gpus", "2", "--worker-start-interval", "0", *MODEL_ARGS, "--engine", "nope")
    assert run.returncode == 1, run.stderr
    assert "dserve: cannot serve: every worker failed at startup" in run.stderr
    assert run.stderr.count("dserve: cannot serve: --engine nope: unknown engine 'nope'") == 2  # each worker's own line
