"""At temperature 0 every algorithm is deterministic, including those that draw positions at
random (dream/origin, remasking=random): an unseeded request uses a fixed default seed, so
the same request gives the same text every time (issue #21, finding 10; docs/api.md)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from reliability.helpers import MODEL_ARGS, ServerProcess, model_info

DREAM = str(Path(__file__).parent.parent / "fixtures" / "dream")
PROMPT = "Sort the numbers: 5 3 9 1 and then count them"


def _texts(url: str, extra: dict, times: int = 4) -> list[str]:
    model = model_info(url)["id"]
    body = {"model": model, "prompt": PROMPT, "max_tokens": 32, "temperature": 0, "ignore_eos": True, **extra}
    out = []
    for _ in range(times):
        r = httpx.post(url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        out.append(r.json()["choices"][0]["text"])
    return out


@pytest.fixture(scope="module")
def llada():
    srv = ServerProcess(*MODEL_ARGS)
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    "extra",
    [
        {"engine": "llada", "generation_algorithm": "reference", "remasking": "random", "steps": 16, "block_length": 32},
        {"engine": "fastdllm", "generation_algorithm": "basic", "remasking": "random", "steps": 16, "block_length": 32},
    ],
)
def test_random_remasking_at_temperature_0_is_deterministic(llada, extra):
    texts = _texts(llada.url, extra)
    assert len(set(texts)) == 1, texts


def test_dream_origin_at_temperature_0_is_deterministic():
    srv = ServerProcess("--model", DREAM)
    try:
        texts = _texts(srv.url, {"engine": "dream", "generation_algorithm": "origin", "steps": 16})
        assert len(set(texts)) == 1, texts
        # an explicit seed still picks its own draw
        seeded = _texts(srv.url, {"engine": "dream", "generation_algorithm": "origin", "steps": 16, "seed": 1234}, times=2)
        assert len(set(seeded)) == 1
    finally:
        srv.stop()
