"""A real CUDA out-of-memory in a real server (device machine: `pytest -m gpu tests/gpu`).

The server may allocate 1 GiB (`--gpu-memory-utilization`): a LLaDA-shaped model with the real
126k vocabulary fits with a few requests, 32 concurrent ones do not (their block logits and
float64 confidences alone need more). Every request ends 200 or 503 `out_of_memory`, some of
each, and the server keeps serving afterwards.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from e2e.server import ServerProcess

from dserve_llada import EMBEDDED_MODEL_DIR

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SHAPE = Path(__file__).resolve().parents[2] / "benchmarks" / "shapes" / "llada-8b" / "config.json"


def test_out_of_memory_sheds_requests_and_the_server_keeps_serving(tmp_path):
    config = json.loads(SHAPE.read_text())
    config.update(d_model=512, n_layers=2, n_heads=8, n_kv_heads=8, mlp_hidden_size=1024)
    (tmp_path / "config.json").write_text(json.dumps(config))
    fraction = 2**30 / torch.cuda.get_device_properties(0).total_memory
    server = ServerProcess(
        "--model",
        str(tmp_path),
        "--load-format",
        "dummy",
        "--tokenizer",
        str(EMBEDDED_MODEL_DIR),
        "--device",
        "cuda",
        "--gpu-memory-utilization",
        f"{fraction:.5f}",
        "--enforce-eager",
        "--max-batch-size",
        "32",
        "--engine",
        "fastdllm",
        "--algorithm",
        "dual_cache",
    )
    body = {
        "model": "x",
        "messages": [{"role": "user", "content": "word " * 40}],
        "max_tokens": 64,
        "steps": 16,
        "block_length": 32,
        "ignore_eos": True,
    }
    try:
        model_id = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
        body["model"] = model_id

        def ask(_):
            r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300)
            return r.status_code, r.json()

        assert ask(0)[0] == 200
        with ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(ask, range(32)))
        statuses = [s for s, _ in outcomes]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
        for status, payload in outcomes:
            if status == 503:
                assert payload["error"]["code"] == "out_of_memory"
            else:
                assert payload["usage"]["completion_tokens"] == 64
        assert ask(0)[0] == 200
        assert httpx.get(server.url + "/health/ready").status_code == 200
        stats = httpx.get(server.url + "/batch/stats").json()
        assert stats["requests_shed_out_of_memory"] == statuses.count(503)
    except Exception:
        print(server.logs()[-4000:])
        raise
    finally:
        server.stop()
