"""`dserve bench`: an HTTP load generator for any OpenAI-compatible server.

Sends a fixed number of chat or completion requests, either from C closed-loop
workers (`--concurrency`) or as an open-loop Poisson process (`--request-rate`),
and reports throughput, end-to-end latency, time to first token and
inter-token latency. `run_benchmark` is the programmatic entry point.

The defaults (64 requests, 8-word prompts, 32 output tokens) fit the embedded tiny model's
512-token context and finish in about a minute on a laptop CPU; pass a larger
--requests/--prompt-len/--max-tokens for a real model. A failed request's error keeps the
server's own message, and the report shows the first message of each distinct error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from dserve_ops.progress import Progress

ENDPOINT_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
PROMPT_WORDS = (
    "the model reads a long story about rivers mountains cities and old machines "
    "that learn to speak while people travel across quiet valleys under bright "
    "stars writing letters to friends who build bridges gardens and ships"
).split()


@dataclass
class BenchConfig:
    url: str
    model: str | None = None  # None: first id from GET /v1/models
    endpoint: str = "chat"
    api_key: str | None = None
    num_requests: int = 64
    concurrency: int | None = 8  # closed loop; with request_rate it caps in-flight requests
    request_rate: float | None = None  # requests/s, Poisson arrivals; inf = all at once
    max_tokens: int = 32
    prompt_len: int = 8  # words; about 85 prompt tokens with the embedded model's chat template
    prompts_file: str | None = None
    stream: bool = True
    temperature: float | None = None
    steps: int | None = None
    block_length: int | None = None
    threshold: float | None = None
    engine: str | None = None
    algorithm: str | None = None
    extra_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    timeout_s: float = 600.0
    progress: bool = False


@dataclass
class RequestRecord:
    ok: bool
    start_s: float  # relative to the benchmark start
    latency_s: float
    ttft_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None  # "HTTP 429", exception class name, ...: the key of BenchResult.errors
    error_message: str | None = None  # the server's error message (or the exception's text)


@dataclass
class LatencyStats:
    mean: float
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> LatencyStats | None:
        if not values:
            return None
        ordered = sorted(values)
        return cls(sum(ordered) / len(ordered), *(percentile(ordered, q) for q in (50, 95, 99)))


@dataclass
class BenchResult:
    config: BenchConfig
    model: str
    requests_total: int
    requests_ok: int
    requests_failed: int
    errors: dict[str, int]
    error_messages: dict[str, str]  # error -> the first message seen for it
    duration_s: float
    requests_per_s: float
    input_tokens: int
    output_tokens: int
    output_tokens_per_s: float
    total_tokens_per_s: float
    latency_s: LatencyStats | None
    ttft_s: LatencyStats | None
    inter_token_latency_mean_s: float | None
    records: list[RequestRecord]

    def to_json(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.config)
        config["api_key"] = "***" if config["api_key"] else None
        summary = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del summary["config"], summary["records"]
        for key in ("latency_s", "ttft_s"):
            summary[key] = dataclasses.asdict(summary[key]) if summary[key] else None
        return {
            "config": config,
            "summary": summary,
            "requests": [dataclasses.asdict(r) for r in self.records],
        }


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def api_base(url: str) -> str:
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def synthetic_prompt(seed: int, index: int, words: int) -> str:
    # Seeded per request so prompt i is the same whatever num_requests is.
    rng = random.Random(f"dserve-bench:{seed}:{index}")
    body = " ".join(rng.choice(PROMPT_WORDS) for _ in range(max(words, 1)))
    return f"Continue this text: {body}"


def load_prompts(path: str) -> list[dict[str, Any]]:
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if not isinstance(item, dict) or not ("prompt" in item or "messages" in item):
                raise ValueError(f'{path}:{line_number}: expected {{"prompt": ...}} or {{"messages": [...]}}')
            prompts.append(item)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def build_bodies(config: BenchConfig, model: str) -> list[dict[str, Any]]:
    items = load_prompts(config.prompts_file) if config.prompts_file else None
    optional = {
        "temperature": config.temperature,
        "steps": config.steps,
        "block_length": config.block_length,
        "threshold": config.threshold,
        "engine": config.engine,
        "generation_algorithm": config.algorithm,
    }
    bodies = []
    for i in range(config.num_requests):
        if items:
            item = items[i % len(items)]
        else:
            item = {"prompt": synthetic_prompt(config.seed, i, config.prompt_len)}
        body: dict[str, Any] = {"model": model, "max_tokens": config.max_tokens, "stream": config.stream}
        if config.endpoint == "chat":
            body["messages"] = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
        else:
            messages = item.get("messages") or []
            body["prompt"] = item.get("prompt") or "\n".join(str(m.get("content", "")) for m in messages)
        if config.stream:
            body["stream_options"] = {"include_usage": True}
        body.update({k: v for k, v in optional.items() if v is not None})
        body.update(config.extra_params)
        bodies.append(body)
    return bodies


def error_message_of(status: int, body: bytes) -> str:
    """The message of an OpenAI error object, else the start of the body."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return text[:300] or f"HTTP {status} with an empty body"


def chunk_text(chunk: dict[str, Any]) -> str:
    parts = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or choice.get("message") or {}
        parts.append(choice.get("text") or delta.get("content") or "")
    return "".join(parts)


async def send_request(client: httpx.AsyncClient, path: str, body: dict[str, Any], bench_start: float) -> RequestRecord:
    start = time.perf_counter()
    ttft = None
    content_chunks = 0
    usage: dict[str, Any] = {}
    error = message = None

    try:
        if body.get("stream"):
            async with client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}"
                    message = error_message_of(response.status_code, await response.aread())
                else:
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        payload = line[len("data:") :].strip()
                        if payload == "[DONE]":
                            break
                        chunk = json.loads(payload)
                        if "error" in chunk:
                            error = "stream error"
                            message = error_message_of(200, payload.encode())
                            break
                        if chunk_text(chunk):
                            content_chunks += 1
                            if ttft is None:
                                ttft = time.perf_counter() - start
                        usage = chunk.get("usage") or usage
        else:
            response = await client.post(path, json=body)
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
                message = error_message_of(response.status_code, response.content)
            else:
                data = response.json()
                usage = data.get("usage") or {}
                content_chunks = len(chunk_text(data).split())  # rough fallback when usage is missing
    except Exception as exc:  # a broken connection or malformed response fails this request, not the run
        error = type(exc).__name__
        message = str(exc) or repr(exc)

    return RequestRecord(
        ok=error is None,
        start_s=start - bench_start,
        latency_s=time.perf_counter() - start,
        ttft_s=ttft,
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or content_chunks,
        error=error,
        error_message=message,
    )


async def fetch_default_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/models")
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise RuntimeError("GET /v1/models returned no models; pass --model")
    return models[0]["id"]


async def run_benchmark(config: BenchConfig) -> BenchResult:
    if config.endpoint not in ENDPOINT_PATHS:
        raise ValueError(f"endpoint must be one of {sorted(ENDPOINT_PATHS)}")
    if config.request_rate is None and not config.concurrency:
        raise ValueError("set concurrency (closed loop) or request_rate (open loop)")
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    # Without a cap in open loop, requests would queue in httpx's pool and the wait would count as latency.
    limits = httpx.Limits(max_connections=config.concurrency if config.request_rate is None else None)
    async with httpx.AsyncClient(
        base_url=api_base(config.url), headers=headers, timeout=config.timeout_s, limits=limits
    ) as client:
        model = config.model or await fetch_default_model(client)
        bodies = build_bodies(config, model)
        path = ENDPOINT_PATHS[config.endpoint]
        progress = Progress(len(bodies), "bench", enabled=config.progress)
        records: list[RequestRecord] = []
        in_flight = asyncio.Semaphore(config.concurrency or len(bodies) or 1)

        async def issue(body: dict[str, Any]) -> None:
            async with in_flight:
                record = await send_request(client, path, body, bench_start)
            records.append(record)
            progress.update(record.ok)

        bench_start = time.perf_counter()
        if config.request_rate is None:
            await asyncio.gather(*(issue(body) for body in bodies))
        else:
            arrivals = random.Random(config.seed)
            tasks, due = [], bench_start
            for body in bodies:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(issue(body)))
                due += arrivals.expovariate(config.request_rate)
            await asyncio.gather(*tasks)
        duration = time.perf_counter() - bench_start

    return summarize(config, model, sorted(records, key=lambda r: r.start_s), duration)


def summarize(config: BenchConfig, model: str, records: list[RequestRecord], duration: float) -> BenchResult:
    ok = [r for r in records if r.ok]
    input_tokens = sum(r.input_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    # Per request: time between tokens after the first one (vLLM's TPOT); robust to block-wise streaming.
    inter_token = [(r.latency_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.ttft_s is not None and r.output_tokens > 1]
    per_second = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    return BenchResult(
        config=config,
        model=model,
        requests_total=len(records),
        requests_ok=len(ok),
        requests_failed=len(records) - len(ok),
        errors=dict(Counter(r.error or "unknown" for r in records if not r.ok)),
        error_messages=first_error_messages(records),
        duration_s=duration,
        requests_per_s=per_second(len(ok)),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        output_tokens_per_s=per_second(output_tokens),
        total_tokens_per_s=per_second(input_tokens + output_tokens),
        latency_s=LatencyStats.of([r.latency_s for r in ok]),
        ttft_s=LatencyStats.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        inter_token_latency_mean_s=sum(inter_token) / len(inter_token) if inter_token else None,
        records=records,
    )


def first_error_messages(records: list[RequestRecord]) -> dict[str, str]:
    messages: dict[str, str] = {}
    for record in records:
        if record.error and record.error_message and record.error not in messages:
            messages[record.error] = record.error_message
    return messages


def format_report(result: BenchResult) -> str:
    config = result.config
    if config.request_rate is not None:
        load = f"rate {config.request_rate}/s, max concurrency {config.concurrency or 'unbounded'}"
    else:
        load = f"concurrency {config.concurrency}"
    rows = [
        ("Model", result.model),
        ("Endpoint", f"{config.endpoint} ({'stream' if config.stream else 'no stream'}), {load}"),
        ("Requests ok / failed", f"{result.requests_ok} / {result.requests_failed}"),
        *(
            (f"  {error}", f"{count}  {result.error_messages.get(error, '')}".rstrip())
            for error, count in sorted(result.errors.items())
        ),
        ("Duration (s)", f"{result.duration_s:.2f}"),
        ("Requests/sec", f"{result.requests_per_s:.2f}"),
        ("Output tokens/sec", f"{result.output_tokens_per_s:.1f}"),
        ("Total tokens/sec", f"{result.total_tokens_per_s:.1f}"),
        ("Output / input tokens", f"{result.output_tokens} / {result.input_tokens}"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{label:<{width}}{value}" for label, value in rows]
    lines.append(f"\n{'(ms)':<{width}}{'mean':>10}{'P50':>10}{'P95':>10}{'P99':>10}")

    def milliseconds(*seconds: float | None) -> str:
        return "".join(f"{'n/a':>10}" if s is None else f"{s * 1000:>10.2f}" for s in seconds)

    for label, stats in (("Latency", result.latency_s), ("TTFT", result.ttft_s)):
        lines.append(f"{label:<{width}}" + milliseconds(*(dataclasses.astuple(stats) if stats else (None,))))
    lines.append(f"{'Inter-token':<{width}}" + milliseconds(result.inter_token_latency_mean_s))
    return "\n".join(lines)


def write_plot(result: BenchResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.records if r.ok]
    failed = [r for r in result.records if not r.ok]
    fig, (histogram, timeline) = plt.subplots(1, 2, figsize=(12, 4.5))
    histogram.hist([r.latency_s * 1000 for r in ok], bins=30, label="latency")
    if any(r.ttft_s is not None for r in ok):
        ttfts = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None]
        histogram.hist(ttfts, bins=30, alpha=0.6, label="TTFT")
    histogram.set(xlabel="ms", ylabel="requests", title="Latency distribution")
    histogram.legend()
    timeline.scatter([r.start_s for r in ok], [r.latency_s * 1000 for r in ok], s=8, label="ok")
    if failed:
        failed_latencies = [r.latency_s * 1000 for r in failed]
        timeline.scatter([r.start_s for r in failed], failed_latencies, s=8, c="red", label="failed")
    timeline.set(xlabel="request start (s)", ylabel="latency (ms)", title="Latency over time")
    timeline.legend()
    fig.suptitle(f"dserve bench: {result.model}, {result.requests_per_s:.2f} req/s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_param(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url", default="http://127.0.0.1:8000", help="server base URL, with or without /v1 (default: %(default)s)"
    )
    target.add_argument("--model", help="model id (default: first id from GET /v1/models)")
    target.add_argument("--endpoint", choices=sorted(ENDPOINT_PATHS), default="chat", help="(default: %(default)s)")
    target.add_argument("--api-key", help="bearer token (default: $DSERVE_API_KEY or $OPENAI_API_KEY)")
    target.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds (default: %(default)s)")

    load = parser.add_argument_group("load")
    load.add_argument(
        "--requests", "--num-requests", dest="num_requests", type=int, default=64, help="requests to send (default: %(default)s)"
    )
    load.add_argument(
        "--concurrency", type=int, help="closed loop with C workers (default 8); with --request-rate: max in flight"
    )
    load.add_argument("--request-rate", type=float, help="open loop: Poisson arrivals at R requests/s (inf: all at once)")
    load.add_argument(
        "--max-tokens",
        type=int,
        default=32,
        help="output length per request (default: %(default)s, fits the embedded model's 512-token context)",
    )
    load.add_argument(
        "--prompt-len",
        type=int,
        default=8,
        help="synthetic prompt length in words (default: %(default)s, about 85 tokens with the chat template)",
    )
    load.add_argument("--prompts-file", help='JSONL of {"prompt": ...} or {"messages": [...]}, cycled')
    load.add_argument(
        "--stream", action=argparse.BooleanOptionalAction, default=True, help="stream responses (needed for TTFT; default: on)"
    )
    load.add_argument("--seed", type=int, default=0, help="seeds synthetic prompts and arrival times (default: %(default)s)")

    body = parser.add_argument_group("request body", "left out of the request when not given: the server's default applies")
    body.add_argument("--temperature", type=float)
    body.add_argument("--steps", type=int)
    body.add_argument("--block-length", type=int)
    body.add_argument("--threshold", type=float)
    body.add_argument("--engine")
    body.add_argument("--algorithm", help="sent as generation_algorithm")
    body.add_argument(
        "--param",
        action="append",
        type=parse_param,
        default=[],
        metavar="KEY=VALUE",
        help="extra body field, value JSON-decoded when possible (repeatable)",
    )

    report = parser.add_argument_group("report")
    report.add_argument("--json", action="store_true", help="print the results as JSON on stdout instead of the table")
    report.add_argument("--output", help="also write the results as JSON to this file")
    report.add_argument("--plot", help="write a latency plot PNG (needs matplotlib: pip install 'dserve[plot]')")
    report.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress on stderr (default: a bar on a terminal, a line per tenth otherwise)",
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from dserve.settings import api_keys_from_text  # the server's reading of DSERVE_API_KEY

    concurrency = args.concurrency if args.concurrency or args.request_rate is not None else 8
    server_keys = api_keys_from_text(os.environ.get("DSERVE_API_KEY"))
    return BenchConfig(
        url=args.url,
        model=args.model,
        endpoint=args.endpoint,
        api_key=args.api_key or (server_keys[0] if server_keys else None) or os.environ.get("OPENAI_API_KEY"),
        num_requests=args.num_requests,
        concurrency=concurrency,
        request_rate=args.request_rate,
        max_tokens=args.max_tokens,
        prompt_len=args.prompt_len,
        prompts_file=args.prompts_file,
        stream=args.stream,
        temperature=args.temperature,
        steps=args.steps,
        block_length=args.block_length,
        threshold=args.threshold,
        engine=args.engine,
        algorithm=args.algorithm,
        extra_params=dict(args.param),
        seed=args.seed,
        timeout_s=args.timeout,
        progress=args.progress,
    )


def main(args: argparse.Namespace) -> int:
    """Exit status: 0 if any request succeeded, 1 if none did, 2 for a setup error."""
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "error: --plot needs the 'matplotlib' package, which is not installed (pip install 'dserve[plot]')",
                file=sys.stderr,
            )
            return 2
    config = config_from_args(args)
    try:
        result = asyncio.run(run_benchmark(config))
    except (httpx.HTTPError, RuntimeError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_report(result))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result.to_json(), f, indent=2)
    if args.plot:
        write_plot(result, args.plot)
    if not result.requests_ok:
        reasons = "; ".join(f"{error}: {result.error_messages.get(error, '')}".rstrip(": ") for error in sorted(result.errors))
        print(f"error: all {result.requests_total} requests failed ({reasons})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m dserve_ops.bench", description=__doc__.splitlines()[0])
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
