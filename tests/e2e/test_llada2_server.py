"""A real server on the LLaDA2 checkpoint dserve-llada2 ships: the family is picked by
`architectures`, its engine by default, the engines it cannot run say why, and it serves like the
other families (continuous batching of mixed requests, streaming, batch invariance at T=0).

The shipped checkpoint may be the provisional one (see its model card), so these requests use
`ignore_eos` to decode every slot: the text is then long and non-trivial whatever its quality,
and what is compared is behaviour, not answers (quality: tests/e2e/test_family_quality.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from dserve_llada2 import TINY_MODEL_DIR
from e2e.server import ServerProcess


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--model", str(TINY_MODEL_DIR), "--device", "cpu", "--max-batch-size", "8")
    yield srv
    srv.stop()


def _client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_family_default_engine_and_the_algorithms_it_cannot_run(server):
    stats = httpx.get(server.url + "/v1/engine/stats").json()
    assert (stats["family"], stats["default_engine"], stats["default_algorithm"]) == ("llada2", "llada2", "llada2")
    rows = httpx.get(server.url + "/generation/algorithms").json()
    rows = rows["algorithms"] if isinstance(rows, dict) else rows
    by_name = {(r["engine"], r["algorithm"]): r for r in rows}
    ours = by_name[("llada2", "llada2")]
    assert ours["available"] and ours["default"]
    assert ours["parameters"]["steps"]["default"] == 32 and ours["parameters"]["threshold"]["default"] == 0.95
    # Fast-dLLM and dInfer denoise over bidirectionally computed context: refused, with the reason
    for key in [k for k in by_name if k[0] in ("fastdllm", "dinfer")]:
        assert not by_name[key]["available"] and "bidirectional" in by_name[key]["missing_capabilities"], key
    model_id = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    bad = httpx.post(
        server.url + "/v1/completions",
        json={"model": model_id, "prompt": "hi", "max_tokens": 8, "engine": "dinfer", "generation_algorithm": "dinfer_blockwise"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unsupported_algorithm"
    bad = httpx.post(server.url + "/v1/completions", json={"model": model_id, "prompt": "hi", "max_tokens": 8, "threshold": 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "threshold"


def test_mixed_concurrent_requests_equal_their_solo_runs_and_streams(server):
    """Different prompts, max_tokens, block lengths, thresholds and steps, and one LLaDA2.1
    editing request, sent at once (they share the running batches, joining at different steps):
    each answer equals the same request sent alone, and its stream concatenates to it."""
    client = _client(server)
    model_id = client.models.list().data[0].id
    requests = [
        ("Reverse the word: planet", 40, {}),
        ("Sort these numbers: 5 2 9 1", 24, {"block_length": 8, "steps": 4, "threshold": 0.5}),
        ("What is 37 plus 5?", 33, {"block_length": 16, "threshold": 1.0, "steps": 4}),
        ("Swap the two words: red car", 48, {"steps": 8, "eos_early_stop": True}),
        (
            "Convert to uppercase: sun",
            30,
            {"generation_algorithm": "llada2_editing", "editing_threshold": 0.5, "max_post_steps": 2},
        ),
    ]

    def whole(req):
        prompt, max_tokens, extra = req
        r = client.completions.create(
            model=model_id, prompt=prompt, max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True, **extra}
        )
        return r.choices[0].text, r.usage.completion_tokens

    def streamed(req):
        prompt, max_tokens, extra = req
        chunks = client.completions.create(
            model=model_id,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True, **extra},
        )
        return "".join(c.choices[0].text for c in chunks if c.choices)

    alone = [whole(r) for r in requests]
    assert [n for _, n in alone] == [r[1] for r in requests]  # max_tokens is the published gen_length
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(whole, requests + requests))
        streams = list(pool.map(streamed, requests))
    assert together == alone + alone
    assert streams == [t for t, _ in alone]
