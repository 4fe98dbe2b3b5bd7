"""`dserve bench` against a small real OpenAI-shaped server running in a thread."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from dserve_ops import bench

TOKEN_DELAY_S = 0.002
FIRST_TOKEN_DELAY_S = 0.02
TOKENS_PER_CHUNK = 2  # diffusion servers stream whole blocks, so chunks != tokens


class FakeOpenAIServer:
    """Answers like an OpenAI server; every `fail_every`-th request gets a 429."""

    def __init__(self) -> None:
        self.fail_every = 0
        self.send_usage = True
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.complete, methods=["POST"]),
                Route("/v1/completions", self.complete, methods=["POST"]),
            ]
        )

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "fake-diffusion", "object": "model"}]})

    async def complete(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if self.fail_every and len(self.bodies) % self.fail_every == 0:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429)
        chat = request.url.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": body["max_tokens"]}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        text = ["tok "] * body["max_tokens"]

        def choice(content: str) -> dict:
            if not chat:
                return {"index": 0, "text": content}
            return {"index": 0, ("delta" if body.get("stream") else "message"): {"content": content}}

        if not body.get("stream"):
            await asyncio.sleep(FIRST_TOKEN_DELAY_S + TOKEN_DELAY_S * len(text))
            return JSONResponse({"choices": [choice("".join(text))], "usage": usage})

        async def events():
            await asyncio.sleep(FIRST_TOKEN_DELAY_S)
            yield f"data: {json.dumps({'choices': [choice('')]})}\n\n"  # role-only chunk, no content
            for start in range(0, len(text), TOKENS_PER_CHUNK):
                await asyncio.sleep(TOKEN_DELAY_S * TOKENS_PER_CHUNK)
                content = "".join(text[start : start + TOKENS_PER_CHUNK])
                yield f"data: {json.dumps({'choices': [choice(content)]})}\n\n"
            if self.send_usage and body.get("stream_options", {}).get("include_usage"):
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def fake_server():
    server_state = FakeOpenAIServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(server_state.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.01)
    server_state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield server_state
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture
def server(fake_server):
    fake_server.fail_every = 0
    fake_server.send_usage = True
    fake_server.bodies.clear()
    fake_server.headers.clear()
    return fake_server


def parse_cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def assert_consistent(summary: dict, ok: int, failed: int, tokens_per_request: int) -> None:
    assert summary["requests_ok"] == ok
    assert summary["requests_failed"] == failed
    assert summary["requests_total"] == ok + failed
    assert summary["output_tokens"] == ok * tokens_per_request
    duration = summary["duration_s"]
    assert duration > 0
    assert summary["requests_per_s"] == pytest.approx(ok / duration)
    assert summary["output_tokens_per_s"] == pytest.approx(summary["output_tokens"] / duration)
    total = summary["input_tokens"] + summary["output_tokens"]
    assert summary["total_tokens_per_s"] == pytest.approx(total / duration)
    latency = summary["latency_s"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]


def test_streaming_chat_reports_counts_rates_and_percentiles(server, tmp_path, capsys):
    server.fail_every = 5
    output = tmp_path / "results.json"
    args = parse_cli(
        "--url",
        server.url,
        "--requests",
        "20",
        "--concurrency",
        "4",
        "--max-tokens",
        "8",
        "--prompt-len",
        "12",
        "--output",
        str(output),
        "--no-progress",
    )

    assert bench.main(args) == 0

    report = json.loads(output.read_text())
    summary = report["summary"]
    assert_consistent(summary, ok=16, failed=4, tokens_per_request=8)
    assert summary["errors"] == {"HTTP 429": 4}
    assert summary["error_messages"] == {"HTTP 429": "slow down"}  # the server's own words
    assert {r["error_message"] for r in report["requests"] if not r["ok"]} == {"slow down"}
    assert summary["model"] == "fake-diffusion"
    assert summary["input_tokens"] == 16 * (12 + 3)  # "Continue this text:" + 12 words
    ttft, latency = summary["ttft_s"], summary["latency_s"]
    assert 0 < ttft["p50"] <= ttft["p95"] <= ttft["p99"]
    assert ttft["mean"] < latency["mean"]
    assert all(r["ttft_s"] < r["latency_s"] for r in report["requests"] if r["ok"])
    assert 0 < summary["inter_token_latency_mean_s"] < latency["mean"]
    assert report["config"]["concurrency"] == 4 and report["config"]["max_tokens"] == 8
    assert len(report["requests"]) == 20

    printed = capsys.readouterr().out
    for label in ("Requests/sec", "Output tokens/sec", "Total tokens/sec", "Latency", "TTFT", "HTTP 429"):
        assert label in printed
    assert any("HTTP 429" in line and "4  slow down" in line for line in printed.splitlines())


def test_json_flag_prints_json_instead_of_the_table(server, capsys):
    args = parse_cli("--url", server.url, "--requests", "3", "--concurrency", "3", "--max-tokens", "2", "--json")

    assert bench.main(args) == 0

    captured = capsys.readouterr()
    report = json.loads(captured.out)  # all of stdout is the JSON document
    assert report["summary"]["requests_ok"] == 3 and len(report["requests"]) == 3
    assert "Requests/sec" not in captured.out
    assert "bench: 3/3 requests (100%)" in captured.err  # progress: a plain line, stderr is no terminal


def test_every_request_failing_exits_1_naming_the_reason(server, capsys):
    server.fail_every = 1
    args = parse_cli("--url", server.url, "--requests", "4", "--concurrency", "2", "--no-progress")

    assert bench.main(args) == 1

    captured = capsys.readouterr()
    assert "0 / 4" in captured.out
    assert captured.err.strip() == "error: all 4 requests failed (HTTP 429: slow down)"


def test_request_rate_mode_sends_every_request(server):
    config = bench.BenchConfig(
        url=server.url + "/v1/",
        endpoint="completions",
        num_requests=15,
        concurrency=None,
        request_rate=100.0,
        max_tokens=4,
        seed=3,
    )

    result = asyncio.run(bench.run_benchmark(config))

    assert len(server.bodies) == 15
    assert result.requests_ok == 15 and result.requests_failed == 0
    assert all("prompt" in body and "messages" not in body for body in server.bodies)
    starts = [r.start_s for r in result.records]
    assert starts == sorted(starts) and starts[-1] > 0  # spread out, not sent all at once
    assert_consistent(result.to_json()["summary"], ok=15, failed=0, tokens_per_request=4)


def test_non_streaming_has_no_ttft(server):
    config = bench.BenchConfig(url=server.url, num_requests=6, concurrency=3, max_tokens=5, stream=False)

    result = asyncio.run(bench.run_benchmark(config))

    assert result.requests_ok == 6
    assert result.output_tokens == 30
    assert result.ttft_s is None and result.inter_token_latency_mean_s is None
    assert all(body["stream"] is False and "stream_options" not in body for body in server.bodies)


def test_counts_chunks_when_server_sends_no_usage(server):
    server.send_usage = False
    config = bench.BenchConfig(url=server.url, num_requests=3, concurrency=3, max_tokens=6)

    result = asyncio.run(bench.run_benchmark(config))

    assert result.output_tokens == 3 * (6 // TOKENS_PER_CHUNK)
    assert result.input_tokens == 0


def test_request_body_carries_diffusion_parameters_and_api_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DSERVE_API_KEY", "secret-key")
    output = tmp_path / "results.json"
    args = parse_cli(
        "--url",
        server.url,
        "--model",
        "my-model",
        "--requests",
        "2",
        "--concurrency",
        "1",
        "--max-tokens",
        "4",
        "--temperature",
        "0",
        "--steps",
        "16",
        "--block-length",
        "8",
        "--threshold",
        "0.9",
        "--engine",
        "fast",
        "--algorithm",
        "low_confidence",
        "--param",
        "top_k=5",
        "--param",
        "remasking=random",
        "--param",
        'stop=["\\n"]',
        "--output",
        str(output),
        "--no-progress",
    )

    assert bench.main(args) == 0

    body = server.bodies[0]
    assert body["model"] == "my-model"
    assert body["stream_options"] == {"include_usage": True}
    assert {k: body[k] for k in ("temperature", "steps", "block_length", "threshold", "engine")} == {
        "temperature": 0.0,
        "steps": 16,
        "block_length": 8,
        "threshold": 0.9,
        "engine": "fast",
    }
    assert body["generation_algorithm"] == "low_confidence"
    assert body["top_k"] == 5 and body["remasking"] == "random" and body["stop"] == ["\n"]
    assert server.headers[0]["authorization"] == "Bearer secret-key"
    assert "secret-key" not in output.read_text()


def test_prompts_file_is_cycled(server, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    lines = [json.dumps({"prompt": "hello there"}), "", json.dumps({"messages": conversation})]
    prompts.write_text("\n".join(lines) + "\n")
    config = bench.BenchConfig(url=server.url, num_requests=3, concurrency=1, max_tokens=2, prompts_file=str(prompts))

    asyncio.run(bench.run_benchmark(config))

    messages = [body["messages"] for body in server.bodies]
    assert messages[0] == messages[2] == [{"role": "user", "content": "hello there"}]
    assert messages[1][0] == {"role": "system", "content": "be brief"}


def test_synthetic_prompts_are_deterministic():
    assert bench.synthetic_prompt(7, 3, 20) == bench.synthetic_prompt(7, 3, 20)
    assert bench.synthetic_prompt(7, 3, 20) != bench.synthetic_prompt(7, 4, 20)
    assert len(bench.synthetic_prompt(7, 3, 20).split()) == 20 + 3


def test_unreachable_server_fails_requests_not_the_run(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    config = bench.BenchConfig(url=f"http://127.0.0.1:{closed_port}", model="m", num_requests=3, concurrency=2)

    result = asyncio.run(bench.run_benchmark(config))

    assert result.requests_failed == 3 and result.errors == {"ConnectError": 3}
    assert result.error_messages["ConnectError"]  # httpx's text, e.g. "All connection attempts failed"
    assert result.latency_s is None


def test_plot_without_matplotlib_names_the_package(server, tmp_path, capsys):
    plot = tmp_path / "latency.png"
    args = parse_cli("--url", server.url, "--requests", "4", "--plot", str(plot), "--no-progress")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert bench.main(args) == 2
        assert "matplotlib" in capsys.readouterr().err
        assert server.bodies == []  # refused before sending any load
    else:
        assert bench.main(args) == 0
        assert plot.stat().st_size > 0


def test_bench_sends_the_first_key_of_a_dserve_api_key_list(monkeypatch):
    """DSERVE_API_KEY may list several keys (k1,k2 or JSON); the server accepts each, so bench
    sends one of them, not the whole text."""
    import argparse

    from dserve_ops.bench import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for value in ("k1,k2", '["k1", "k2"]', "k1"):
        monkeypatch.setenv("DSERVE_API_KEY", value)
        assert config_from_args(parser.parse_args(["--url", "http://127.0.0.1:1"])).api_key == "k1"
