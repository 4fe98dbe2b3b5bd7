"""/metrics through a real server: every documented metric is exposed, and after a known set
of requests the values agree with what the clients were told (usage) and with /batch/stats."""

from __future__ import annotations

import concurrent.futures as cf
import math
import re
import time
from pathlib import Path

import httpx
import openai
import pytest

from reliability.helpers import MODEL_ARGS, ServerProcess, sample, scrape, wait_idle

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


@pytest.fixture(scope="module")
def server():
    # a short fill wait so that concurrent requests share denoising steps
    # (--block-length 8: short canvases, cheap decoding on a busy CPU)
    srv = ServerProcess(*MODEL_ARGS, "--max-batch-size", "8", "--max-wait-time", "0.3", "--block-length", "8")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def traffic(server):
    """Send a known mix of requests; return what the clients saw."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id  # 1 x /v1/models
    usages, texts = [], []  # texts: the answer of each generated sequence
    chat = dict(model=model, max_tokens=6, extra_body={"ignore_eos": True})

    def one_chat(i):
        return client.chat.completions.create(messages=[{"role": "user", "content": f"question {i}"}], **chat)

    with cf.ThreadPoolExecutor(3) as pool:  # 3 chat requests at once: they batch
        for r in pool.map(one_chat, range(3)):
            usages.append(r.usage)
            texts.append(r.choices[0].message.content)
    # one chat request decoding several tokens per step (16 tokens in 4 steps)
    r = client.chat.completions.create(
        messages=[{"role": "user", "content": "fast"}], model=model, max_tokens=16, extra_body={"ignore_eos": True, "steps": 4}
    )
    usages.append(r.usage)
    texts.append(r.choices[0].message.content)
    # 2 streamed completions with usage
    for prompt in ("abc", "a longer prompt"):
        chunks = list(
            client.completions.create(
                model=model,
                prompt=prompt,
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )
        usages.append(chunks[-1].usage)
        texts.append("".join(c.choices[0].text for c in chunks if c.choices))
    # one completion with n=2
    r = client.completions.create(model=model, prompt="xyz", max_tokens=4, n=2, extra_body={"ignore_eos": True})
    usages.append(r.usage)
    texts += [c.text for c in r.choices]
    # failures: unknown model (404), invalid n (400)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="hi", n=0)
    wait_idle(server.url)
    assert len(texts) == 3 + 1 + 2 + 2
    return {"usages": usages, "texts": texts}


def test_every_documented_metric_is_exposed_and_maps_to_vdiff(server, traffic):
    text = DOCS.read_text()
    rows = re.findall(r"^\|\s*(`vdiff_\w+`|—)\s*\|\s*`(dserve_\w+)`\s*\|", text, re.M)
    assert len(rows) >= 13, rows
    names = {name for name, _ in scrape(server.url)}
    for vdiff, dserve in rows:
        if vdiff != "—":  # one-to-one: same name with the prefix swapped
            assert vdiff.strip("`").removeprefix("vdiff_") == dserve.removeprefix("dserve_")
        assert any(n == dserve or n.startswith(dserve + "_") for n in names), f"{dserve} is documented but not exposed"


def test_request_counters_and_latency(server, traffic):
    m = scrape(server.url)
    success = {"/v1/models": 1, "/v1/chat/completions": 4, "/v1/completions": 3}
    failure = {("/v1/chat/completions", "404"): 1, ("/v1/completions", "400"): 1}
    for endpoint, n in success.items():
        assert sample(m, "dserve_request_success_total", endpoint=endpoint) == n, endpoint
    for (endpoint, status), n in failure.items():
        assert sample(m, "dserve_request_failure_total", endpoint=endpoint, status=status) == n
    assert sum(v for (name, _), v in m.items() if name == "dserve_request_failure_total") == 2
    for endpoint in success:
        expected = success[endpoint] + sum(n for (e, _), n in failure.items() if e == endpoint)
        assert sample(m, "dserve_request_latency_seconds_count", endpoint=endpoint) == expected
        assert sample(m, "dserve_request_latency_seconds_bucket", endpoint=endpoint, le="+Inf") == expected
        assert sample(m, "dserve_request_latency_seconds_sum", endpoint=endpoint) > 0
    assert sample(m, "dserve_requests_in_flight") == 0


def test_token_counters_match_usage(server, traffic):
    m = scrape(server.url)
    usages = traffic["usages"]
    assert sample(m, "dserve_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert sample(m, "dserve_generation_tokens_total") == sum(u.completion_tokens for u in usages) == 3 * 6 + 16 + 2 * 5 + 2 * 4
    # one time-to-first-token per generated sequence with any text (the first committed
    # content token; an answer of only end-of-text tokens has none)
    with_text = sum(1 for t in traffic["texts"] if t)
    assert sample(m, "dserve_time_to_first_token_seconds_count") == with_text
    # (n=2 gives one request two observations: hence the factor 2)
    assert (
        0
        <= sample(m, "dserve_time_to_first_token_seconds_sum")
        <= 2 * sum(v for (name, _), v in m.items() if name == "dserve_request_latency_seconds_sum")
    )
    assert sample(m, "dserve_time_to_first_token_seconds_bucket", le="+Inf") == with_text


def test_step_metrics_match_batch_stats(server, traffic):
    m = scrape(server.url)
    stats = httpx.get(server.url + "/batch/stats").json()
    hist = {int(k): v for k, v in stats["batch_size_histogram"].items()}
    # batch size: one observation per denoising step, the same histogram /batch/stats keeps
    assert sample(m, "dserve_batch_size_count") == stats["total_steps"] == sum(hist.values())
    assert sample(m, "dserve_batch_size_sum") == sum(k * v for k, v in hist.items())
    for le in ("1.0", "2.0", "4.0", "8.0", "16.0"):
        assert sample(m, "dserve_batch_size_bucket", le=le) == sum(v for k, v in hist.items() if k <= float(le)), le
    assert max(hist) > 1, hist  # the concurrent requests shared steps
    # tokens per step: one observation per sequence per step
    assert sample(m, "dserve_tokens_per_step_count") == sample(m, "dserve_batch_size_sum")
    assert sample(m, "dserve_tokens_per_step_sum") == stats["total_tokens_committed"]
    # the canvas is whole blocks, so steps commit at least the returned tokens
    assert stats["total_tokens_committed"] >= sample(m, "dserve_generation_tokens_total")
    # the 4-step request committed several tokens per step
    assert sample(m, "dserve_parallel_tokens_decoded_total") >= 16
    assert sample(m, "dserve_tokens_per_step_bucket", le="1.0") < sample(m, "dserve_tokens_per_step_count")


def test_gauges_after_the_traffic(server, traffic):
    m = scrape(server.url)
    assert sample(m, "dserve_queue_size") == 0
    assert sample(m, "dserve_active_requests") == 0
    gpu = sample(m, "dserve_gpu_memory_used_bytes")
    assert ("dserve_gpu_memory_used_bytes", ()) in m and not math.isnan(gpu) and gpu >= 0


def test_gauges_follow_a_running_request(server, traffic):
    """While a long request decodes, active_requests is 1; once it is cancelled, 0 again
    (read at scrape time, not left at the last step's value)."""
    model = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    # 400 denoising steps: far longer than the scrape below takes, even on a fast machine
    body = {"model": model, "prompt": "long", "max_tokens": 400, "steps": 400, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()  # (kept: a collected line iterator closes the connection)
        next(lines)
        start = time.monotonic()
        m = scrape(server.url)
        assert sample(m, "dserve_active_requests") + sample(m, "dserve_queue_size") == 1, time.monotonic() - start
    wait_idle(server.url)
    m = scrape(server.url)
    assert sample(m, "dserve_active_requests") == 0 and sample(m, "dserve_queue_size") == 0
    assert sample(m, "dserve_request_failure_total", endpoint="/v1/completions", status="499") == 1
