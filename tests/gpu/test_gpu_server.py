"""The GPU serving path end to end (device machine: `pytest -m gpu tests/gpu`): HTTP -> scheduler
-> runners -> CUDA graphs, under concurrent requests of different lengths, so the KV-cache pool
grows and graphs are captured, dropped and recaptured while serving. Outputs at temperature 0
must equal an eager server's (`--enforce-eager`). The first multi-GPU run failed exactly here
(every step hit PyTorch's graph-pool assertion), which no engine-level test exercised."""

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
ALGORITHMS = ["fastdllm/dual_cache", "fastdllm/prefix_cache", "llada/reference", "dinfer/dinfer_blockwise"]


def _serve_and_ask(model_dir: Path, *flags: str) -> dict:
    server = ServerProcess(
        "--model",
        str(model_dir),
        "--load-format",
        "dummy",
        "--tokenizer",
        str(EMBEDDED_MODEL_DIR),
        "--device",
        "cuda",
        "--max-batch-size",
        "8",
        *flags,
    )
    try:
        model_id = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]

        def ask(job):
            algorithm, words, max_tokens = job
            engine, alg = algorithm.split("/")
            body = {
                "model": model_id,
                "messages": [{"role": "user", "content": "word " * words}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "engine": engine,
                "generation_algorithm": alg,
                "ignore_eos": True,
            }
            if engine == "fastdllm":
                body["steps"] = max_tokens // 4
            r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"], r.json()["usage"]["completion_tokens"]

        # prompt lengths and canvases that grow while the batch runs: new cache capacities
        jobs = [(a, words, tokens) for a in ALGORITHMS for words, tokens in ((3, 32), (20, 64), (7, 96), (40, 32))]
        with ThreadPoolExecutor(16) as pool:
            answers = dict(zip(jobs, pool.map(ask, jobs)))
        assert httpx.get(server.url + "/health/ready").status_code == 200
        assert "CUDA graph capture failed" not in server.logs()
        return answers
    except Exception:
        print(server.logs()[-4000:])
        raise
    finally:
        server.stop()


def test_graphed_server_equals_eager_server(tmp_path):
    config = json.loads(SHAPE.read_text())
    # the embedded tokenizer's vocabulary and special ids, so that every generated id decodes
    config.update(
        d_model=512,
        n_layers=4,
        n_heads=8,
        n_kv_heads=8,
        mlp_hidden_size=1024,
        vocab_size=264,
        embedding_size=264,
        mask_token_id=261,
        eos_token_id=257,
        eot_token_id=260,
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    graphed = _serve_and_ask(tmp_path)
    eager = _serve_and_ask(tmp_path, "--enforce-eager")
    assert graphed == eager
    assert all(tokens == job[2] for job, (_, tokens) in graphed.items())
