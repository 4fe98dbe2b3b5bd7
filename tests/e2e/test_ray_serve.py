"""`dserve ray-serve`: the same app under Ray Serve, two CPU replicas behind Ray's HTTP proxy.

Ray is an optional extra. The slow test uses `ray[serve]` when this interpreter has it, else a
throwaway virtual environment (`--system-site-packages`, so it sees this dserve) in
$DSERVE_RAY_VENV (default ~/.cache/dserve-tests/ray-venv) where it pip-installs
`ray[serve]>=2.10` once (~80 MB wheel + Serve's dependencies); it skips, saying why, only when
that install is impossible. It starts 2 replicas with the embedded model (DSERVE_TEST_MODEL
overrides), sends chat requests through Ray Serve's proxy with the openai client, and checks
from the `x-dserve-replica` / `x-dserve-pid` response headers that both replicas served.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from e2e.server import free_port

MODEL_ARGS = ["--model", os.environ["DSERVE_TEST_MODEL"]] if os.environ.get("DSERVE_TEST_MODEL") else []
VENV = Path(os.environ.get("DSERVE_RAY_VENV", Path.home() / ".cache" / "dserve-tests" / "ray-venv"))


# --------------------------------------------------------------------------- fast: no Ray needed


def test_missing_ray_gives_a_clear_error(monkeypatch, capsys):
    import builtins

    from dserve.cli import main
    from dserve_ops import ray_serve

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["ray-serve", "--", "--max-batch-size", "4"]) == 1
    assert 'pip install "dserve[ray]"' in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="dserve\\[ray\\]"):
        ray_serve._import_ray()


def test_lazy_app_pickles_settings_only():
    import pickle

    from dserve_ops.ray_serve import LazyApp

    lazy = LazyApp({"max_batch_size": 4})
    clone = pickle.loads(pickle.dumps(lazy))
    assert clone.settings == {"max_batch_size": 4} and clone._app is None


# --------------------------------------------------------------------------- slow: a real Ray Serve


def ray_python() -> str:
    probe = subprocess.run([sys.executable, "-c", "import ray.serve"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    py = VENV / "bin" / "python"
    if not py.exists():
        made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot create a venv for Ray: {made.stderr.strip()[-500:]}")
    if subprocess.run([str(py), "-c", "import ray.serve, dserve"], capture_output=True).returncode != 0:
        inst = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "ray[serve]>=2.10"], capture_output=True, text=True, timeout=1500
        )
        if inst.returncode != 0:
            pytest.skip(f"cannot install ray[serve] here: {inst.stderr.strip()[-800:]}")
    check = subprocess.run([str(py), "-c", "import ray.serve, dserve"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.fail(f"ray[serve] installed but not importable with dserve: {check.stderr[-800:]}")
    return str(py)


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    py = ray_python()
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "ray-serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    cmd = [
        py,
        "-m",
        "dserve",
        "ray-serve",
        "--min-replicas",
        "2",
        "--max-replicas",
        "2",
        "--num-cpus-per-replica",
        "0.5",
        "--no-dashboard",
        "--",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *MODEL_ARGS,
        "--max-batch-size",
        "4",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dserve ray-serve exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
            # serve.run returned: every replica of the application is up (each loaded its model)
            if "dserve ray-serve: ready on" in log.read_text():
                break
            if time.monotonic() > deadline:
                pytest.fail(f"Ray Serve not ready after 300s:\n{log.read_text()[-5000:]}")
            time.sleep(1)
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the command shuts Serve and its local Ray down
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything left of the Ray this test started (its own process group)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_two_replicas_serve_chat_through_the_ray_proxy(ray_server):
    from openai import OpenAI

    url, proc, log = ray_server
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id

    def ask(i: int):
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": f"What is {i} plus 1?"}],
            max_tokens=8,
        )
        reply = raw.parse()
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.prompt_tokens > 0
        return raw.headers["x-dserve-replica"], raw.headers["x-dserve-pid"]

    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 60
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:  # Ray's router spreads concurrent requests over replicas
            seen.update(pool.map(ask, range(8)))
            if len({r for r, _ in seen}) >= 2:
                break
    replicas = {r for r, _ in seen}
    pids = {p for _, p in seen}
    assert len(replicas) == 2 and len(pids) == 2, seen

    # streaming passes through the proxy too
    chunks = list(
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True)
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")

    # the probes and metrics of `dserve serve` are there, answered by a replica
    assert httpx.get(url + "/health/live").status_code == 200
    health = httpx.get(url + "/health").json()
    assert health["ready"] is True and health["device"] == "cpu"
    assert "dserve" in httpx.get(url + "/metrics").text

    # SIGTERM: Serve and the local Ray it started shut down, the command exits
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, log.read_text()[-3000:]
    assert "dserve ray-serve: shutting down" in log.read_text()
