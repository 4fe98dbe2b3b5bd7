"""`dserve eval`: decoding quality through a real server's OpenAI API.

Sends the held-out split of the synthetic task family (:mod:`dserve_ops.evaluation.tasks`) to
``/v1/chat/completions`` at temperature 0, once per engine/algorithm, and reports per algorithm:
exact-match accuracy (overall and per task kind), the share of answers with trailing garbage
(the expected answer followed by more text), forward passes (NFE) per generated token, generated
tokens per second, and optionally a determinism check (the first N requests sent again).

NFE comes from the response's ``usage.nfe`` (forward passes spent on the request, a dserve
extension); NFE per token = sum(nfe) / sum(completion_tokens).

    dserve eval --url http://127.0.0.1:8000 --algorithm llada/reference --param steps=32 --min-accuracy 0.9

Defaults are chosen to finish in about a minute on a laptop CPU against the embedded model: the
first 100 held-out examples (the set docs/quality.md records; ``--samples 700`` for the model
card's full set), 16 requests in flight (the server's default batch), and confidence-threshold
decoding (``threshold`` 0.9, the setting the quality table records) for every algorithm whose
``threshold`` parameter defaults to none (per ``GET /generation/algorithms``: Fast-dLLM's, whose
default is a fixed schedule of one token per step); ``--threshold none`` keeps each algorithm's
own default, and ``--param threshold=X`` wins over both. Progress goes to stderr; stdout gets a table,
or JSON with ``--json``; ``--output FILE`` writes the full JSON (with failed examples).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from dserve_ops.evaluation.tasks import KINDS, Example, generate_examples, has_trailing_garbage, is_correct
from dserve_ops.progress import Progress

DEFAULT_SEED = 1234  # the held-out set the embedded model's card reports
DEFAULT_SAMPLES = 100  # the set docs/quality.md records; about a minute on a laptop CPU
DEFAULT_THRESHOLD = 0.9


def parse_threshold(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", "default"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="base URL of a running dserve server (default: %(default)s)"
    )
    parser.add_argument("--model", default=None, help="model id to request (default: the server's first model)")
    parser.add_argument("--api-key", default=None, help="sent as a bearer token")
    parser.add_argument(
        "--samples",
        "--num-samples",
        "--limit",
        dest="num_samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help="held-out examples per algorithm, the first N of the seeded set (default: %(default)s; "
        "700 for the model card's full set)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the held-out set (default: %(default)s)")
    parser.add_argument("--kinds", default=None, help=f"comma-separated task kinds (default: all of {','.join(KINDS)})")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument(
        "--threshold",
        type=parse_threshold,
        default=DEFAULT_THRESHOLD,
        metavar="P|none",
        help="confidence threshold sent to algorithms whose own threshold defaults to none (Fast-dLLM's "
        "one token per step), per GET /generation/algorithms, unless --param sets it; "
        "'none': each algorithm's own default (default: %(default)s)",
    )
    parser.add_argument(
        "--algorithm",
        action="append",
        default=[],
        metavar="ENGINE/ALGORITHM",
        help="evaluate this engine/algorithm (or just ALGORITHM); repeat for several; default: the server's default",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra request field (VALUE is JSON-decoded, else a string), e.g. steps=32; repeatable",
    )
    parser.add_argument("--repeat-check", type=int, default=0, metavar="N", help="resend the first N requests and compare")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: %(default)s)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the server to list a model (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout instead of the table")
    parser.add_argument("--output", type=Path, default=None, help="also write the results (with failed examples) as JSON here")
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress on stderr (default: a bar on a terminal, a line per tenth otherwise)",
    )
    parser.add_argument("--min-accuracy", type=float, default=None, help="exit 1 if any algorithm scores below this")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="also plot accuracy against forward passes per token, one point per algorithm (needs dserve[plot])",
    )


def parse_algorithm(spec: str | None) -> dict[str, str]:
    """ "engine/algorithm" -> both request fields; "algorithm" -> generation_algorithm only."""
    if not spec or spec == "default":
        return {}
    engine, sep, algorithm = spec.partition("/")
    if not sep:
        return {"generation_algorithm": spec}
    if not engine or not algorithm:
        raise ValueError(f"expected ENGINE/ALGORITHM or ALGORITHM, got {spec!r}")
    return {"engine": engine, "generation_algorithm": algorithm}


def parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def _one(
    client: httpx.AsyncClient, body: dict[str, Any], sem: asyncio.Semaphore, progress: Progress | None
) -> tuple[str | None, dict[str, Any], str | None, float]:
    result = await _request(client, body, sem)
    if progress is not None:
        progress.update(result[2] is None)
    return result


async def _request(
    client: httpx.AsyncClient, body: dict[str, Any], sem: asyncio.Semaphore
) -> tuple[str | None, dict[str, Any], str | None, float]:
    """(content, usage, error, seconds) of one chat completion."""
    async with sem:
        t0 = time.perf_counter()
        try:
            r = await client.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - t0
            if r.status_code != 200:
                return None, {}, f"HTTP {r.status_code}: {r.text[:300]}", elapsed
            data = r.json()
            return data["choices"][0]["message"].get("content") or "", data.get("usage") or {}, None, elapsed
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            return None, {}, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0


async def _run(
    client: httpx.AsyncClient,
    base: dict[str, Any],
    examples: list[Example],
    concurrency: int,
    progress: Progress | None = None,
) -> tuple[list[tuple[str | None, dict[str, Any], str | None, float]], float]:
    sem = asyncio.Semaphore(max(1, concurrency))
    t0 = time.perf_counter()
    bodies = [{**base, "messages": [{"role": "user", "content": e.prompt}]} for e in examples]
    results = await asyncio.gather(*(_one(client, b, sem, progress) for b in bodies))
    return list(results), time.perf_counter() - t0


def request_base(algorithm: str | None, params: dict[str, Any] | None, model: str | None, max_tokens: int) -> dict[str, Any]:
    """The request fields every example of one algorithm shares (all but the messages)."""
    base: dict[str, Any] = {"temperature": 0, "max_tokens": max_tokens}
    if model:
        base["model"] = model
    base.update(parse_algorithm(algorithm))
    base.update(params or {})
    return base


async def evaluate(
    url: str,
    algorithm: str | None,
    params: dict[str, Any] | None,
    examples: list[Example],
    concurrency: int = 8,
    *,
    model: str | None = None,
    max_tokens: int = 64,
    repeat_check: int = 0,
    api_key: str | None = None,
    timeout: float = 600.0,
    client: httpx.AsyncClient | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Send `examples` through one engine/algorithm of the server at `url`; return the metrics.

    `algorithm` is "engine/algorithm", "algorithm" or None (the server's default); `params` are
    extra top-level request fields. Requests use temperature 0 unless `params` says otherwise.
    `progress` (total: the examples plus the repeated ones) is updated as each request ends.
    """
    base = request_base(algorithm, params, model, max_tokens)
    own = client is None
    if client is None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        client = httpx.AsyncClient(base_url=_base_url(url), timeout=timeout, headers=headers)
    http: httpx.AsyncClient = client
    try:
        results, wall = await _run(http, base, examples, concurrency, progress)
        repeat = None
        if repeat_check > 0:
            again, _ = await _run(http, base, examples[:repeat_check], concurrency, progress)
            pairs = [(a[0], b[0]) for a, b in zip(results, again) if a[2] is None and b[2] is None]
            repeat = {"n": len(pairs), "identical": sum(a == b for a, b in pairs)}
    finally:
        if own:
            await http.aclose()

    n = len(examples)
    correct = garbage = errors = 0
    completion_tokens = 0
    nfe_total = 0
    nfe_seen = True
    per_kind: dict[str, list[int]] = {}
    failures: list[dict[str, Any]] = []
    latencies: list[float] = []
    for ex, (text, usage, err, secs) in zip(examples, results):
        counts = per_kind.setdefault(ex.kind, [0, 0])
        counts[1] += 1
        if err is not None:
            errors += 1
            if len(failures) < 10:
                failures.append({"kind": ex.kind, "prompt": ex.prompt, "expected": ex.answer, "error": err})
            continue
        latencies.append(secs)
        ok = is_correct(ex, text or "")
        correct += ok
        counts[0] += ok
        garbage += has_trailing_garbage(ex, text or "")
        completion_tokens += int(usage.get("completion_tokens") or 0)
        if isinstance(usage.get("nfe"), int):
            nfe_total += usage["nfe"]
        else:
            nfe_seen = False
        if not ok and len(failures) < 10:
            failures.append({"kind": ex.kind, "prompt": ex.prompt, "expected": ex.answer, "output": text})
    answered = n - errors
    return {
        "algorithm": algorithm or "default",
        "params": params or {},
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "per_kind": {
            k: v[0] / v[1] for k, v in sorted(per_kind.items(), key=lambda kv: KINDS.index(kv[0]) if kv[0] in KINDS else 99)
        },
        "trailing_garbage": garbage / answered if answered else 0.0,
        "errors": errors,
        "completion_tokens": completion_tokens,
        "nfe": nfe_total if nfe_seen and answered else None,
        "nfe_per_token": nfe_total / completion_tokens if nfe_seen and completion_tokens else None,
        "tokens_per_s": completion_tokens / wall if wall > 0 else None,
        "mean_latency_s": sum(latencies) / len(latencies) if latencies else None,
        "wall_s": wall,
        "repeat_check": repeat,
        "failures": failures,
    }


def format_table(results: list[dict[str, Any]]) -> str:
    head = ["algorithm", "acc", "garbage", "NFE/tok", "tok/s", "errors", "repeat", "params"]
    rows = []
    for r in results:
        rep = r.get("repeat_check")
        rows.append(
            [
                r["algorithm"],
                f"{r['accuracy']:.3f}",
                f"{r['trailing_garbage']:.3f}",
                "-" if r["nfe_per_token"] is None else f"{r['nfe_per_token']:.2f}",
                "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}",
                str(r["errors"]),
                "-" if not rep else f"{rep['identical']}/{rep['n']}",
                " ".join(f"{k}={json.dumps(v)}" for k, v in (r.get("params") or {}).items()) or "-",
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    kinds = sorted({k for r in results for k in r["per_kind"]}, key=lambda k: KINDS.index(k) if k in KINDS else 99)
    if kinds:
        out.append("")
        out.append(line(["per kind"] + [""] * (len(head) - 1)).rstrip())
        for r in results:
            out.append(f"  {r['algorithm']}: " + " ".join(f"{k}={r['per_kind'].get(k, 0):.3f}" for k in kinds))
    return "\n".join(out)


async def fetch_algorithms(url: str, api_key: str | None = None) -> list[dict[str, Any]] | None:
    """The entries of dserve's GET /generation/algorithms; None from a server without it."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(base_url=_base_url(url), timeout=30.0, headers=headers) as c:
            r = await c.get("/generation/algorithms")
            entries = r.json().get("algorithms") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return entries if isinstance(entries, list) else None


def threshold_off_by_default(spec: str | None, algorithms: list[dict[str, Any]] | None) -> bool:
    """Whether the algorithm `spec` names (None: the server's default) takes a `threshold` whose
    default is none, i.e. a fixed schedule (Fast-dLLM's one token per step). Algorithms with a
    threshold of their own (dInfer's 0.9, Nemotron's linear_spec 0) keep it."""
    if not algorithms:
        return False
    wanted = parse_algorithm(spec)
    for entry in algorithms:
        if not isinstance(entry, dict):
            continue
        if wanted:
            engines = [entry.get("engine"), *(entry.get("engine_aliases") or [])]
            if entry.get("algorithm") != wanted["generation_algorithm"]:
                continue
            if "engine" in wanted and wanted["engine"] not in engines:
                continue
        elif not entry.get("default"):
            continue
        threshold = (entry.get("parameters") or {}).get("threshold")
        return isinstance(threshold, dict) and threshold.get("default") is None
    return False


def params_for(
    spec: str | None, params: dict[str, Any], threshold: float | None, algorithms: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """The request fields for one algorithm: `params`, plus `threshold` where the algorithm's own
    default is none and `params` sets neither it nor `factor` (which wins over a threshold)."""
    if threshold is None or "threshold" in params or "factor" in params:
        return params
    if not threshold_off_by_default(spec, algorithms):
        return params
    return {**params, "threshold": threshold}


async def rejection_of(url: str, body: dict[str, Any], api_key: str | None, timeout: float) -> str | None:
    """The error a 400 answer to one request gives (its message), else None."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=_base_url(url), timeout=timeout, headers=headers) as client:
        _, _, error, _ = await _request(client, body, asyncio.Semaphore(1))
    return error if error and error.startswith("HTTP 400") else None


class ModelLoadFailed(RuntimeError):
    """The server is up but says (on /health) that its model failed to load."""


async def wait_for_model(url: str, api_key: str | None = None, timeout: float = 300.0) -> str | None:
    """Poll /v1/models until the server lists a model (it may still be loading); its id, or None.
    Raises ModelLoadFailed at once when a dserve server's /health reports a failed load."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=_base_url(url), timeout=30.0, headers=headers) as c:
        while True:
            try:
                r = await c.get("/v1/models")
                data = r.json().get("data") or []
                if data:
                    return data[0]["id"]
                health = (await c.get("/health")).json()
                if isinstance(health, dict) and health.get("status") == "error":
                    raise ModelLoadFailed(str(health.get("error")))
            except (httpx.HTTPError, ValueError, KeyError, IndexError, AttributeError):
                pass
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(1.0)


async def _main(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    examples = generate_examples(args.num_samples, seed=args.seed, split="heldout", kinds=kinds)
    params = parse_params(args.param)
    algorithms = args.algorithm or [None]
    for a in algorithms:
        parse_algorithm(a)  # fail early on a malformed spec
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (checked before the run, not after it)
        except ImportError:
            print("dserve eval --plot needs matplotlib: pip install 'dserve[plot]'", file=sys.stderr)
            return 2
    try:
        model = await wait_for_model(args.url, args.api_key, args.ready_timeout)
    except ModelLoadFailed as exc:
        print(f"dserve eval: the server at {args.url} failed to load its model: {exc}", file=sys.stderr)
        return 2
    if model is None:
        print(f"dserve eval: no model listed at {args.url}/v1/models after {args.ready_timeout:.0f}s", file=sys.stderr)
        return 2
    model = args.model or model
    schemas = await fetch_algorithms(args.url, args.api_key) if args.threshold is not None else None
    results = []
    for alg in algorithms:
        alg_params = params_for(alg, params, args.threshold, schemas)
        if alg_params is not params and examples:
            # The listing can advertise a threshold an algorithm refuses (fastdllm/apd has its own
            # rule): one request first, and the algorithm's own default if it says no.
            probe = {
                **request_base(alg, alg_params, model, args.max_tokens),
                "messages": [{"role": "user", "content": examples[0].prompt}],
            }
            rejected = await rejection_of(args.url, probe, args.api_key, args.timeout)
            if rejected and "threshold" in rejected:
                print(
                    f"dserve eval: {alg or 'default'} refuses threshold {args.threshold} ({rejected}); "
                    "evaluating it with its own default",
                    file=sys.stderr,
                )
                alg_params = params
        shown = " ".join(f"{k}={json.dumps(v)}" for k, v in alg_params.items())
        print(
            f"evaluating {alg or 'default'} on {len(examples)} held-out examples" + (f" ({shown})" if shown else "") + " ...",
            file=sys.stderr,
            flush=True,
        )
        progress = Progress(
            len(examples) + min(max(args.repeat_check, 0), len(examples)),
            alg or "default",
            enabled=args.progress,
        )
        results.append(
            await evaluate(
                args.url,
                alg,
                alg_params,
                examples,
                args.concurrency,
                model=model,
                max_tokens=args.max_tokens,
                repeat_check=args.repeat_check,
                api_key=args.api_key,
                timeout=args.timeout,
                progress=progress,
            )
        )
    report = {
        "url": args.url,
        "model": model,
        "num_samples": len(examples),
        "seed": args.seed,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "results": results,
    }
    if args.json:
        summary = [{k: v for k, v in r.items() if k != "failures"} for r in results]
        print(json.dumps({**report, "results": summary}, indent=2))
    else:
        print(format_table(results))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        from dserve_ops.evaluation.plot import plot_accuracy_vs_nfe

        plotted = plot_accuracy_vs_nfe(results, args.plot, title=f"{model}: {len(examples)} held-out examples")
        print(f"wrote {args.plot} ({plotted} algorithms)", file=sys.stderr)
    status = 0
    if args.min_accuracy is not None:
        low = [r["algorithm"] for r in results if r["accuracy"] < args.min_accuracy]
        if low:
            print(f"below --min-accuracy {args.min_accuracy}: {', '.join(low)}", file=sys.stderr)
            status = 1
    for r in results:
        if r["errors"] == r["n"] and r["n"]:
            first = r["failures"][0]["error"] if r["failures"] else ""
            print(f"{r['algorithm']}: all {r['n']} requests failed: {first}", file=sys.stderr)
            status = 1
    return status


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except ValueError as exc:
        print(f"dserve eval: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m dserve_ops.evaluation.harness
    _parser = argparse.ArgumentParser(
        prog="dserve eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
