"""How well the per-token values of /v1/completions (echo + logprobs) rank multiple-choice
answers compared with the published Monte Carlo estimator (/v1/loglikelihood), on the embedded
task family's multiple-choice items (dserve_ops.evaluation.choices). Talks to a running server.

    python benchmarks/scoring_agreement.py --url http://127.0.0.1:8000 --items 100 --mc-num 128 --output out.json

Per item and choice: the exact estimator's log-likelihood of the choice (+ end of turn) given
the chat-formatted prompt, and the sum of the echo values over the same continuation tokens
(the text sent as token ids, so both see the same split). Reports each method's accuracy (the
answer ranked first), how often the two pick the same choice, and the mean Kendall tau between
their rankings of the four choices.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from itertools import combinations
from pathlib import Path

import httpx
from transformers import AutoTokenizer

from dserve_ops.evaluation.choices import END_OF_TURN, multiple_choice_items


def kendall_tau(a: list[float], b: list[float]) -> float:
    pairs = list(combinations(range(len(a)), 2))
    s = sum((1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0) for i, j in pairs)
    return s / len(pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the embedded model's)")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--mc-num", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.tokenizer is None:
        from dserve_llada import EMBEDDED_MODEL_DIR

        args.tokenizer = str(EMBEDDED_MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    client = httpx.Client(base_url=args.url, timeout=3600)
    model = client.get("/v1/models").json()["data"][0]["id"]
    items = multiple_choice_items(args.items)

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    def measure(item):
        context = ids(item.context)
        conts = [ids(c + END_OF_TURN) for c in item.choices]
        exact = client.post(
            "/v1/loglikelihood",
            json={"model": model, "context": context, "continuations": conts, "mc_num": args.mc_num, "check_greedy": False},
        ).json()["results"]
        echo = client.post(
            "/v1/completions",
            json={"model": model, "prompt": [context + c for c in conts], "echo": True, "logprobs": 0, "max_tokens": 0},
        ).json()["choices"]
        per_token = [sum(ch["logprobs"]["token_logprobs"][len(context) :]) for ch in sorted(echo, key=lambda c: c["index"])]
        return {
            "kind": item.example.kind,
            "gold": item.gold,
            "exact": [r["loglikelihood"] for r in exact],
            "stderr": [r["stderr"] for r in exact],
            "per_token": per_token,
        }

    started = time.monotonic()
    rows = []
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for row in pool.map(measure, items):
            rows.append(row)
            if len(rows) % 10 == 0:
                print(f"{len(rows)}/{len(items)} items, {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    seconds = time.monotonic() - started

    def argmax(values: list[float]) -> int:
        return values.index(max(values))

    summary = {
        "items": len(rows),
        "mc_num": args.mc_num,
        "accuracy_exact": sum(argmax(r["exact"]) == r["gold"] for r in rows) / len(rows),
        "accuracy_per_token": sum(argmax(r["per_token"]) == r["gold"] for r in rows) / len(rows),
        "same_choice": sum(argmax(r["exact"]) == argmax(r["per_token"]) for r in rows) / len(rows),
        "mean_kendall_tau": sum(kendall_tau(r["exact"], r["per_token"]) for r in rows) / len(rows),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(summary, indent=1))
    if args.output:
        args.output.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
