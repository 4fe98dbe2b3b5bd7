"""`--model ORG/NAME` from the Hugging Face Hub, end to end against a stand-in hub on 127.0.0.1
(HF_ENDPOINT) that serves the embedded checkpoint's files (docs/api.md, "What --model accepts")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from openai import OpenAI

from dserve_llada import EMBEDDED_MODEL_DIR
from e2e.server import ServerProcess
from e2e.stand_in_hub import Repo, StandInHub

MAIN, V2 = "a" * 40, "b" * 40
TOKEN = "hf_test_token_1234"
NOT_SERVING = {"pytorch_model.bin": b"\0" * 4096, "original/consolidated.pth": b"\0" * 4096}  # never fetched


def _repo(**kwargs) -> Repo:
    return Repo.from_dir(EMBEDDED_MODEL_DIR, extra=NOT_SERVING, revisions={"main": MAIN, "v2": V2}, **kwargs)


@pytest.fixture()
def hub():
    h = StandInHub({"acme/tiny": _repo(), "acme/private": _repo(private_token=TOKEN), "acme/gated": _repo(gated=True)})
    yield h
    h.stop()


def _env(hub: StandInHub, home, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


def test_downloads_only_serving_files_resumes_a_dropped_file_then_serves_offline(hub, tmp_path):
    download_dir = tmp_path / "models"
    hub.drop_once.add("model.safetensors")  # the connection drops half-way through the weights
    env = _env(hub, tmp_path / "home", HF_TOKEN=TOKEN)
    srv = ServerProcess("--model", "acme/tiny", "--revision", "v2", "--download-dir", str(download_dir), env=env)
    try:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert client.models.list().data[0].id == "acme/tiny"
        reply = client.chat.completions.create(
            model="acme/tiny", messages=[{"role": "user", "content": "Reverse the word: planet"}], max_tokens=8
        )
        assert reply.choices[0].message.content == "tenalp"
        logs = srv.logs()
    finally:
        srv.stop()
    fetched = sorted({s.path.rsplit("/", 1)[-1] for s in hub.file_gets()})
    assert fetched == ["config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert all(f"/resolve/{V2}/" in s.path for s in hub.file_gets())  # --revision v2
    assert len([s for s in hub.file_gets() if s.path.endswith("model.safetensors")]) == 2  # dropped, then retried
    assert all(s.authorization == f"Bearer {TOKEN}" for s in hub.seen if "/api/models/" in s.path)  # HF_TOKEN
    assert (download_dir / "models--acme--tiny" / "snapshots" / V2 / "model.safetensors").is_file()  # --download-dir
    # progress as log lines (not a terminal): the download, then the weight shards
    assert "Downloading bytes" in logs and "percent=100" in logs
    assert "Loading weight shards" in logs

    # offline: the same download dir serves with no request to the hub
    before = len(hub.seen)
    offline = _env(hub, tmp_path / "home", HF_HUB_OFFLINE="1")
    srv = ServerProcess("--model", "acme/tiny", "--revision", "v2", "--download-dir", str(download_dir), env=offline)
    try:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert client.models.list().data[0].id == "acme/tiny"
    finally:
        srv.stop()
    assert len(hub.seen) == before


def _download(hub: StandInHub, home, repo: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    code = f"from dserve.hub import download; print(download({repo!r}, {', '.join(args)}))"
    return subprocess.run([sys.executable, "-c", code], env=_env(hub, home, **env), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "repo, args, env, message",
    [
        ("acme/missing", (), {}, "acme/missing was not found on"),
        ("acme/private", (), {}, "for a private repo, set HF_TOKEN"),
        ("acme/private", (), {"HF_TOKEN": "hf_wrong"}, "HF_TOKEN is set but does not give access"),
        ("acme/gated", (), {}, "is gated: accept its terms"),
        ("acme/tiny", ("revision='nope'",), {}, "has no revision 'nope'"),
        ("acme/tiny", (), {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE=1 forbids downloading it"),
    ],
    ids=["missing", "private-no-token", "private-wrong-token", "gated", "revision", "offline-empty-cache"],
)
def test_clear_errors(hub, tmp_path, repo, args, env, message):
    run = _download(hub, tmp_path, repo, *args, **env)
    assert run.returncode != 0 and "HubError" in run.stderr and message in run.stderr, run.stderr


def test_private_repo_with_its_token_downloads(hub, tmp_path):
    run = _download(hub, tmp_path, "acme/private", HF_TOKEN=TOKEN)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(f"snapshots/{MAIN}")


def test_a_run_that_fails_mid_file_is_resumed_by_the_next(hub, tmp_path):
    # the connection drops after ~12.9 of 13.9 MB, and the hub then stays broken for the run
    hub.drop_once.add("model.safetensors")
    hub.drop_at = 0.93
    hub.refuse_gets.add("model.safetensors")
    failed = _download(hub, tmp_path, "acme/tiny")
    assert failed.returncode != 0 and "run again to resume" in failed.stderr, failed.stderr
    hub.refuse_gets.clear()
    resumed = _download(hub, tmp_path, "acme/tiny")
    assert resumed.returncode == 0, resumed.stderr
    last = [s for s in hub.file_gets() if s.path.endswith("model.safetensors")][-1]
    assert last.range is not None and int(last.range.removeprefix("bytes=").split("-")[0]) > 0  # resumed, not restarted
    weights = EMBEDDED_MODEL_DIR / "model.safetensors"
    got = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / MAIN / "model.safetensors"
    assert got.read_bytes() == weights.read_bytes()


def test_startup_names_the_hub_failure(hub, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "dserve", "serve", "--model", "acme/gated", "--port", "0", "--host", "127.0.0.1"],
        env=_env(hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    line = [x for x in run.stderr.splitlines() if x.startswith("dserve: cannot serve:")]
    assert line and "model acme/gated failed to load" in line[0] and "is gated" in line[0], run.stderr
