"""The canvas stream (`stream_canvas: true`, docs/api.md): for every algorithm of every engine, on
a real server, the positions committed step by step assemble into the non-streamed answer."""

from __future__ import annotations

import os

import httpx
import pytest
from openai import BadRequestError, OpenAI
from transformers import AutoTokenizer

from dserve.plugins import get_registry
from dserve_llada import EMBEDDED_MODEL_DIR
from dserve_nemotron import TINY_MODEL_DIR as NEMOTRON_DIR
from e2e.server import ServerProcess

PROMPT = [{"role": "user", "content": "Reverse the word: planet"}]
# every registered algorithm; one the embedded LLaDA model cannot run goes to the tiny Nemotron
ALGORITHMS = [(e.name, a.name, "block_causal" in a.requires) for e in get_registry().engines.values() for a in e.algorithms]


@pytest.fixture(scope="module")
def nemotron_client():
    srv = ServerProcess("--model", str(NEMOTRON_DIR), "--max-batch-size", "8")
    try:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        yield client, client.models.list().data[0].id
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tokenizers():
    served = os.environ.get("DSERVE_TEST_MODEL") or EMBEDDED_MODEL_DIR  # what the session's `server` serves
    return {"llada": AutoTokenizer.from_pretrained(str(served)), "nemotron": AutoTokenizer.from_pretrained(str(NEMOTRON_DIR))}


def canvas_run(client: OpenAI, model: str, **body) -> tuple[list[dict], str, dict]:
    """Stream with stream_canvas: (canvas objects, streamed text, usage)."""
    extra = {"stream_canvas": True, **body.pop("extra_body", {})}
    chunks = client.chat.completions.create(
        model=model, messages=PROMPT, stream=True, stream_options={"include_usage": True}, extra_body=extra, **body
    )
    canvases, text, usage = [], "", {}
    for chunk in chunks:
        canvas = getattr(chunk, "canvas", None)
        if canvas is not None:
            assert chunk.choices[0].delta.content is None  # a canvas chunk carries no text
            canvases.append(canvas)
        elif chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    return canvases, text, usage


def assembled(canvases: list[dict]) -> dict[int, dict]:
    """Position -> committed item; a position is committed once, and steps count up from 1."""
    slots: dict[int, dict] = {}
    for expected_step, canvas in enumerate(canvases, start=1):
        assert canvas["step"] == expected_step
        assert 0 <= canvas["block"] < len(canvas["block_starts"])
        assert canvas["block_starts"][0] == 0 and canvas["block_starts"] == sorted(canvas["block_starts"])
        for item in canvas["committed"]:
            assert 0 <= item["position"] < canvas["length"]
            assert item["position"] not in slots, f"position {item['position']} committed twice"
            slots[item["position"]] = item
    nfes = [c["nfe"] for c in canvases]
    assert nfes == sorted(nfes) and nfes[-1] >= 1  # a schedule step may skip its forward (Dream, greedy, nothing to commit)
    return slots


def check_against_the_answer(client, model_id, tokenizer, **body) -> dict[int, dict]:
    """The non-streamed answer and the canvas stream of the same request: the committed tokens,
    in position order, are the answer's tokens; returns the committed slots."""
    whole = client.chat.completions.create(model=model_id, messages=PROMPT, **{**body, "extra_body": dict(body["extra_body"])})
    answer, tokens = whole.choices[0].message.content, whole.usage.completion_tokens
    canvases, text, usage = canvas_run(client, model_id, **{**body, "extra_body": dict(body["extra_body"])})
    slots = assembled(canvases)
    assert text == answer  # the usual chunks still carry the answer
    assert all(p in slots for p in range(tokens)), "the answer's positions are all committed"
    assert tokenizer.decode([slots[p]["token_id"] for p in range(tokens)], skip_special_tokens=True) == answer
    special = set(tokenizer.all_special_ids)  # the answer's text skips them; a token's own text names them
    assert "".join(slots[p]["text"] for p in range(tokens) if slots[p]["token_id"] not in special) == answer
    if whole.choices[0].finish_reason == "stop":  # ended at EOS / end-of-turn: the next position holds it
        assert slots[tokens]["token_id"] in tokenizer.all_special_ids
    assert canvases[-1]["nfe"] == usage["nfe"] == whole.usage.nfe
    assert all(c["length"] == canvases[0]["length"] for c in canvases)
    return slots


@pytest.mark.parametrize(("engine", "algorithm", "nemotron"), ALGORITHMS, ids=[f"{e}/{a}" for e, a, _ in ALGORITHMS])
def test_every_algorithm_commits_each_position_once_into_the_answer(
    request, client, model_id, tokenizers, engine, algorithm, nemotron
):
    """The whole canvas decoded (ignore_eos, max_tokens a whole number of blocks): every position
    is committed exactly once, and in position order they are the non-streamed answer."""
    if nemotron:
        client, model_id = request.getfixturevalue("nemotron_client")
    tokenizer = tokenizers["nemotron" if nemotron else "llada"]
    fields = {"engine": engine, "generation_algorithm": algorithm, "block_length": 2, "ignore_eos": True}
    slots = check_against_the_answer(client, model_id, tokenizer, max_tokens=6, temperature=0, extra_body=fields)
    assert sorted(slots) == list(range(6))


def test_an_answer_ending_at_eos_assembles_too(client, model_id, tokenizers):
    """Without ignore_eos the request ends at end-of-turn: the canvas before it is the answer."""
    slots = check_against_the_answer(
        client, model_id, tokenizers["llada"], max_tokens=16, temperature=0, extra_body={"block_length": 8}
    )
    assert any(item["token_id"] in tokenizers["llada"].all_special_ids for item in slots.values())


def test_choices_keep_their_own_canvas_in_one_batch(server, client, model_id):
    """n=3 is admitted as one batch: each choice's canvas chunks carry its index, and every
    choice assembles into the same greedy answer."""
    before = httpx.get(server.url + "/batch/stats").json()["batch_size_histogram"]
    chunks = client.chat.completions.create(
        model=model_id,
        messages=PROMPT,
        max_tokens=8,
        n=3,
        temperature=0,
        stream=True,
        extra_body={"stream_canvas": True, "engine": "fastdllm", "generation_algorithm": "dual_cache", "block_length": 8},
    )
    per_choice: dict[int, list[dict]] = {0: [], 1: [], 2: []}
    for chunk in chunks:
        if getattr(chunk, "canvas", None) is not None:
            per_choice[chunk.choices[0].index].append(chunk.canvas)
    slots = [assembled(canvases) for canvases in per_choice.values()]
    assert slots[0] and all(
        {p: s["token_id"] for p, s in one.items()} == {p: s["token_id"] for p, s in slots[0].items()} for one in slots
    )
    after = httpx.get(server.url + "/batch/stats").json()["batch_size_histogram"]
    assert int(after.get("3", 0)) > int(before.get("3", 0)), "the three choices stepped together"


def test_plain_streams_carry_no_canvas(client, model_id):
    chunks = list(client.chat.completions.create(model=model_id, messages=PROMPT, max_tokens=8, stream=True))
    assert chunks and all(getattr(c, "canvas", None) is None for c in chunks)


def test_completions_stream_the_canvas_too(client, model_id):
    chunks = client.completions.create(
        model=model_id,
        prompt="abc",
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_body={"stream_canvas": True, "ignore_eos": True, "block_length": 8},
    )
    canvases = [c.canvas for c in chunks if getattr(c, "canvas", None) is not None]
    assert sorted(assembled(canvases)) == list(range(canvases[0]["length"]))


def test_stream_canvas_needs_stream(client, model_id):
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=PROMPT, max_tokens=8, extra_body={"stream_canvas": True})
    assert err.value.body["param"] == "stream_canvas"
