"""The quality gate CI runs: a small held-out sample of the embedded model's task through the
real server, scored by the `dserve eval` harness. The full recorded run is in docs/quality.md."""

import asyncio
import json
import subprocess
import sys
import time

import httpx

from dserve_ops.evaluation import generate_examples
from dserve_ops.evaluation.harness import evaluate

SAMPLE = 60


def test_reference_loop_keeps_quality(server, model_id):
    examples = generate_examples(SAMPLE, seed=2026, split="heldout")
    result = asyncio.run(evaluate(server.url, "llada/reference", {}, examples, concurrency=8, repeat_check=8, model=model_id))
    assert result["errors"] == 0
    assert result["accuracy"] >= 0.90, result["failures"]
    assert result["trailing_garbage"] == 0.0
    assert result["repeat_check"]["identical"] == result["repeat_check"]["n"]  # deterministic at T=0
    # one token per step over a 64-slot canvas: at most 64 forward passes a request (fewer when
    # the answer's end-of-turn becomes final early)
    assert 0 < result["nfe"] <= 64 * SAMPLE


def test_dserve_eval_command_reports_table_and_json(server, tmp_path):
    out = tmp_path / "eval.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dserve",
            "eval",
            "--url",
            server.url,
            "--num-samples",
            "12",
            "--algorithm",
            "llada/reference",
            "--algorithm",
            "fastdllm/dual_cache",
            "--param",
            "threshold=0.9",
            "--output",
            str(out),
            "--min-accuracy",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())
    rows = results["results"]
    assert {r["algorithm"] for r in rows} == {"llada/reference", "fastdllm/dual_cache"}
    assert all(r["params"] == {"threshold": 0.9} for r in rows)  # --param wins over --threshold
    assert all("failures" in r for r in rows)  # the file keeps the failed examples
    assert run.stdout.splitlines()[0].split()[:2] == ["algorithm", "acc"]
    assert "{" not in run.stdout  # stdout is the table; JSON only with --json


def test_dserve_eval_stops_at_once_when_the_model_failed_to_load(tmp_path):
    """A server whose model cannot load and that stays up for its probes (an app a host such as
    Ray Serve runs; `dserve serve` itself exits) says why on /health; `dserve eval` reports
    that error and exits instead of waiting out --ready-timeout."""
    from e2e.server import free_port

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["NoSuchModel"]}))
    server = _AppOnlyServer(broken, free_port())
    try:
        deadline = time.monotonic() + 60
        while (health := httpx.get(server.url + "/health").json())["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert health["status"] == "error" and "NoSuchModel" in health["error"], health
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "dserve", "eval", "--url", server.url, "--num-samples", "2", "--ready-timeout", "120"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2, run.stdout + run.stderr
        assert "failed to load its model" in run.stderr and "NoSuchModel" in run.stderr, run.stderr
        assert time.monotonic() - started < 60  # not the 120 s --ready-timeout
    finally:
        server.stop()


class _AppOnlyServer:
    """uvicorn around `dserve.server.create_app` (no `serve`: a failed load keeps it up)."""

    def __init__(self, model, port: int):
        code = (
            "import sys, uvicorn; from dserve.server import create_app; from dserve.settings import Settings; "
            "uvicorn.run(create_app(Settings(model=sys.argv[1])), host='127.0.0.1', port=int(sys.argv[2]), log_config=None)"
        )
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(model), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health/live", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the app-only server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
