"""The synthetic task family (pure, no torch) and the eval harness against a mocked server."""

from __future__ import annotations

import argparse
import asyncio
import json

import httpx
import pytest

from dserve_ops.evaluation import tasks
from dserve_ops.evaluation.tasks import (
    KINDS,
    MAX_ANSWER_CHARS,
    Example,
    generate_examples,
    has_trailing_garbage,
    is_correct,
    split_of,
)


def test_generation_is_deterministic():
    assert generate_examples(300, seed=7) == generate_examples(300, seed=7)
    assert generate_examples(300, seed=7, split="heldout") == generate_examples(300, seed=7, split="heldout")
    assert generate_examples(300, seed=7) != generate_examples(300, seed=8)
    # a prefix of a longer draw is the shorter draw
    assert generate_examples(50, seed=3) == generate_examples(120, seed=3)[:50]


def test_pinned_heldout_set():
    """The embedded model's card reports accuracy on exactly this set; changing the generator
    invalidates it (retrain and update the card, then this hash)."""
    import hashlib

    ex = generate_examples(700, seed=1234, split="heldout")
    assert ex[0] == Example("sort", "Sort these numbers: 0 9 6 3", "0 3 6 9")
    digest = hashlib.sha256(json.dumps([[e.kind, e.prompt, e.answer] for e in ex]).encode()).hexdigest()
    assert digest == "46acaa0e07576846d441ebff5c63be610981faef07c289cdc81b2ca4d5f0f228"


def test_splits_are_disjoint():
    train = generate_examples(6000, seed=0, split="train")
    held = generate_examples(1500, seed=0, split="heldout")
    train_prompts = {(e.kind, e.prompt) for e in train}
    assert not any((e.kind, e.prompt) in train_prompts for e in held)
    # the split is a function of the instance alone
    for e in held[:200]:
        key = _instance_key(e)
        assert split_of(e.kind, key) == "heldout"
    for e in train[:200]:
        assert split_of(e.kind, _instance_key(e)) == "train"


def _instance_key(e: Example) -> str:
    """Rebuild the instance key from a prompt (mirrors the makers in tasks.py)."""
    p = e.prompt
    if e.kind == "reverse":
        return p.split(": ", 1)[1]
    if e.kind == "sort":
        return p.split(": ", 1)[1]
    if e.kind == "add":
        a, b = p.removeprefix("What is ").removesuffix("?").split(" plus ")
        return f"{a}+{b}"
    if e.kind == "swap":
        return p.split(": ", 1)[1]
    if e.kind == "upper":
        return p.split(": ", 1)[1]
    if e.kind == "repeat":
        rest = p.removeprefix("Repeat the word ").removesuffix(" times.")
        w, n = rest.rsplit(" ", 1)
        return f"{w}*{n}"
    if e.kind == "replace":
        head, w = p.split(": ", 1)
        parts = head.split()
        return f"{parts[2]}>{parts[4]}:{w}"
    raise AssertionError(e.kind)


def test_all_kinds_and_answer_lengths():
    exs = generate_examples(3000, seed=1)
    assert {e.kind for e in exs} == set(KINDS)
    assert all(1 <= len(e.answer) <= MAX_ANSWER_CHARS for e in exs)
    assert all(e.answer == e.answer.strip() and e.answer.isascii() for e in exs)
    lengths = {len(e.answer) for e in exs}
    assert min(lengths) == 1 and max(lengths) >= 25  # answers vary in length
    held = generate_examples(1000, seed=1, split="heldout")
    assert {e.kind for e in held} == set(KINDS)


def test_answers_are_right():
    for e in generate_examples(2000, seed=5):
        p, a = e.prompt, e.answer
        if e.kind == "reverse":
            assert a == p.split(": ", 1)[1][::-1]
        elif e.kind == "sort":
            nums = [int(x) for x in p.split(": ", 1)[1].split()]
            assert a == " ".join(map(str, sorted(nums)))
        elif e.kind == "add":
            x, y = p.removeprefix("What is ").removesuffix("?").split(" plus ")
            assert a == str(int(x) + int(y))
        elif e.kind == "swap":
            x, y = p.split(": ", 1)[1].split(" ")
            assert a == f"{y} {x}"
        elif e.kind == "upper":
            assert a == p.split(": ", 1)[1].upper()
        elif e.kind == "repeat":
            w, n = p.removeprefix("Repeat the word ").removesuffix(" times.").rsplit(" ", 1)
            assert a == " ".join([w] * int(n))
        elif e.kind == "replace":
            head, w = p.split(": ", 1)
            parts = head.split()
            assert a == w.replace(parts[2], parts[4])


def test_kinds_filter_and_errors():
    exs = generate_examples(100, seed=2, kinds=["add", "sort"])
    assert {e.kind for e in exs} == {"add", "sort"}
    with pytest.raises(ValueError):
        generate_examples(1, split="test")
    with pytest.raises(ValueError):
        generate_examples(1, kinds=["nope"])


def test_checker():
    e = Example("reverse", "Reverse the word: abc", "cba")
    assert is_correct(e, "cba")
    assert is_correct(e, "  cba\n")
    assert not is_correct(e, "cb")
    assert not is_correct(e, "cba cba")
    assert not is_correct(e, "CBA")
    assert has_trailing_garbage(e, "cba<|eot_id|>xyz")
    assert has_trailing_garbage(e, "cba xyz")
    assert not has_trailing_garbage(e, "cba ")
    assert not has_trailing_garbage(e, "xyz")


def test_tasks_module_is_torch_free():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(tasks))
    imported = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in (n.names if isinstance(n, ast.Import) else [n])
    }
    assert imported <= {"__future__", "collections", "hashlib", "random", "string", "dataclasses", "typing"}


# --- harness against a mocked OpenAI-compatible server ---------------------------------------


def _mock_server(answer_fn, seen: list[dict]):
    by_prompt = {e.prompt: e for e in generate_examples(400, seed=1234, split="heldout")}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        ex = by_prompt[body["messages"][0]["content"]]
        text = answer_fn(ex)
        ntok = len(text) + 1
        usage = {"prompt_tokens": 40, "completion_tokens": ntok, "total_tokens": 40 + ntok, "nfe": 2 * ntok}
        return httpx.Response(
            200, json={"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}], "usage": usage}
        )

    return handler


def test_harness_metrics_with_mock_server():
    from dserve_ops.evaluation.harness import evaluate

    seen: list[dict] = []
    examples = generate_examples(40, seed=1234, split="heldout")
    wrong = {e.prompt for e in examples[:4]}

    def answer(ex):
        if ex.prompt in wrong:
            return ex.answer + " extra"  # trailing garbage
        return ex.answer

    async def go():
        transport = httpx.MockTransport(_mock_server(answer, seen))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await evaluate(
                "http://test", "llada/reference", {"steps": 16}, examples, 4, model="m", repeat_check=5, client=client
            )

    res = asyncio.run(go())
    assert res["accuracy"] == pytest.approx(36 / 40)
    assert res["trailing_garbage"] == pytest.approx(4 / 40)
    assert res["nfe_per_token"] == pytest.approx(2.0)
    assert res["repeat_check"] == {"n": 5, "identical": 5}
    assert res["errors"] == 0
    body = seen[0]
    assert body["engine"] == "llada" and body["generation_algorithm"] == "reference"
    assert body["temperature"] == 0 and body["steps"] == 16 and body["model"] == "m"
    assert body["messages"] == [{"role": "user", "content": examples[0].prompt}]
    assert len(seen) == 45


def test_harness_arguments():
    from dserve_ops.evaluation.harness import add_arguments, parse_algorithm, parse_params

    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["--algorithm", "llada/reference", "--algorithm", "basic", "--param", "steps=32", "--param", "x=abc"])
    assert a.num_samples == 100 and a.concurrency == 16 and a.max_tokens == 64 and a.threshold == 0.9
    assert not a.json and a.progress
    for flag in ("--samples", "--num-samples", "--limit"):
        assert p.parse_args([flag, "700"]).num_samples == 700
    assert p.parse_args(["--threshold", "none"]).threshold is None
    assert p.parse_args(["--threshold", "0.7"]).threshold == 0.7
    assert parse_algorithm(a.algorithm[0]) == {"engine": "llada", "generation_algorithm": "reference"}
    assert parse_algorithm(a.algorithm[1]) == {"generation_algorithm": "basic"}
    assert parse_algorithm(None) == {}
    assert parse_params(a.param) == {"steps": 32, "x": "abc"}
    with pytest.raises(ValueError):
        parse_params(["novalue"])
    with pytest.raises(ValueError):
        parse_algorithm("llada/")


ALGORITHMS = [  # entries of GET /generation/algorithms, cut to what the harness reads
    {
        "engine": "llada",
        "engine_aliases": [],
        "algorithm": "reference",
        "default": True,
        "parameters": {"steps": {"default": None}},
    },
    {
        "engine": "fastdllm",
        "engine_aliases": ["fast-dllm"],
        "algorithm": "dual_cache",
        "default": False,
        "parameters": {"threshold": {"default": None}},
    },
    {
        "engine": "dinfer",
        "engine_aliases": [],
        "algorithm": "dinfer_blockwise",
        "default": False,
        "parameters": {"threshold": {"default": 0.9}},
    },
    {
        "engine": "nemotron",
        "engine_aliases": [],
        "algorithm": "linear_spec",
        "default": False,
        "parameters": {"threshold": {"default": 0.0}},
    },
]


def test_default_threshold_goes_only_to_algorithms_without_one():
    from dserve_ops.evaluation.harness import params_for

    assert params_for("fastdllm/dual_cache", {}, 0.9, ALGORITHMS) == {"threshold": 0.9}
    assert params_for("fast-dllm/dual_cache", {"steps": 8}, 0.9, ALGORITHMS) == {"steps": 8, "threshold": 0.9}
    assert params_for("dual_cache", {}, 0.5, ALGORITHMS) == {"threshold": 0.5}
    assert params_for("fastdllm/dual_cache", {"threshold": 0.7}, 0.9, ALGORITHMS) == {"threshold": 0.7}  # --param wins
    assert params_for("fastdllm/dual_cache", {}, None, ALGORITHMS) == {}  # --threshold none
    assert params_for("fastdllm/dual_cache", {"factor": 1.0}, 0.9, ALGORITHMS) == {"factor": 1.0}  # factor wins anyway
    assert params_for("llada/reference", {}, 0.9, ALGORITHMS) == {}  # takes no threshold
    assert params_for(None, {}, 0.9, ALGORITHMS) == {}  # the server's default is llada/reference
    assert params_for("dinfer/dinfer_blockwise", {}, 0.5, ALGORITHMS) == {}  # has its own threshold
    assert params_for("nemotron/linear_spec", {}, 0.9, ALGORITHMS) == {}  # 0 is its own setting
    assert params_for("llada/dual_cache", {}, 0.9, ALGORITHMS) == {}  # no such engine/algorithm
    assert params_for("fastdllm/dual_cache", {}, 0.9, None) == {}  # a server without the listing
