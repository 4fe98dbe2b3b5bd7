"""Malformed and hostile request bodies through a real server: each gets a clear 4xx OpenAI
error (never a 5xx, a hang or a dropped connection), and the server keeps serving.

Raw bytes go out with httpx so that the body is exactly what a hostile client would send
(invalid UTF-8, NaN, numbers with thousands of digits, nesting 100 000 levels deep, ...).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from reliability.helpers import MODEL_ARGS, ServerProcess, model_info, wait_idle

MB = 1024 * 1024


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(*MODEL_ARGS, "--max-batch-size", "8", "--block-length", "4")  # cheap valid requests
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def info(server) -> dict:
    return model_info(server.url)


def _chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}


def _raw(obj) -> bytes:
    return json.dumps(obj).encode()


def _cases(model: str, context: int) -> list[tuple[str, str, bytes, str | None, str | None]]:
    """(name, path, raw body, expected param, expected code) of requests that must be 400."""
    chat = "/v1/chat/completions"
    cmpl = "/v1/completions"
    head = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], ' % model.encode()
    return [
        # huge numbers
        ("max_tokens 1e30", chat, head + b'"max_tokens": 1e30}', "max_tokens", None),
        ("max_tokens 10**30", chat, head + b'"max_tokens": ' + b"1" + b"0" * 30 + b"}", "max_tokens", None),
        ("max_tokens with 5000 digits", chat, head + b'"max_tokens": ' + b"9" * 5000 + b"}", None, "invalid_json"),
        ("n 10**9", chat, _raw(_chat(model, n=10**9)), "n", None),
        ("n 0", chat, _raw(_chat(model, n=0)), "n", None),
        ("steps 10**6", chat, _raw(_chat(model, steps=10**6)), "steps", None),
        ("block_length 10**9", chat, _raw(_chat(model, block_length=10**9)), "block_length", None),
        ("threshold 1e308", chat, _raw(_chat(model, threshold=1e308)), "threshold", None),
        ("temperature -1", chat, _raw(_chat(model, temperature=-1)), "temperature", None),
        ("seed 2**64", chat, _raw(_chat(model, seed=2**64)), "seed", None),
        ("negative seed", chat, _raw(_chat(model, seed=-1)), "seed", None),
        ("gen_length 1e30", "/v1/generate", b'{"prompt": "hi", "gen_length": 1e30}', "gen_length", None),
        # NaN / Infinity: Python's json reads them, RFC 8259 JSON has no such numbers
        ("temperature NaN", chat, head + b'"temperature": NaN}', None, "invalid_json"),
        ("top_p Infinity", chat, head + b'"top_p": Infinity}', None, "invalid_json"),
        ("cfg_scale -Infinity", chat, head + b'"cfg_scale": -Infinity}', None, "invalid_json"),
        ("NaN in an algorithm parameter", chat, head + b'"my_param": NaN}', None, "invalid_json"),
        # structure
        (
            "arrays nested 100000 deep",
            chat,
            b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            None,
            "invalid_json",
        ),
        ("objects nested 200 deep", chat, head + b'"x": ' + b'{"a": ' * 200 + b"1" + b"}" * 200 + b"}", None, "invalid_json"),
        (
            "invalid UTF-8",
            chat,
            b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}',
            None,
            "invalid_json",
        ),
        (
            "lone surrogate escape",
            chat,
            b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800x"}]}' % model.encode(),
            None,
            "invalid_json",
        ),
        ("truncated JSON", chat, b'{"model": "m", "messages": [', None, "invalid_json"),
        ("empty body", chat, b"", None, "invalid_json"),
        ("JSON array body", chat, b"[1, 2]", None, "invalid_json"),
        ("JSON null body", chat, b"null", None, "invalid_json"),
        ("messages not a list", chat, _raw({"model": model, "messages": "hi"}), "messages", None),
        ("no messages", chat, _raw({"model": model, "messages": []}), "messages", None),
        ("unknown role", chat, _raw({"model": model, "messages": [{"role": "root", "content": "hi"}]}), None, None),
        ("stop list of 10000", chat, _raw(_chat(model, stop=["x"] * 10_000)), "stop", None),
        ("empty stop string", chat, _raw(_chat(model, stop=[""])), "stop", None),
        ("top_logprobs over 20", chat, _raw(_chat(model, logprobs=True, top_logprobs=21)), "top_logprobs", None),
        ("unknown engine", chat, _raw(_chat(model, engine="nope")), "engine", "unknown_engine"),
        ("unknown algorithm", chat, _raw(_chat(model, generation_algorithm="nope")), "generation_algorithm", "unknown_algorithm"),
        # an unknown field is ignored (docs/api.md, "Fields"); another algorithm's parameter is not
        ("another algorithm's parameter", chat, _raw(_chat(model, apd_threshold=0.5)), "apd_threshold", "unsupported_field"),
        (
            "tools",
            chat,
            _raw(_chat(model, tools=[{"type": "function", "function": {"name": "f"}}])),
            "tools",
            "unsupported_field",
        ),
        # 1 MB strings: refused from their length in characters, before tokenizing (the prompt
        # alone cannot fit, so the prompt is the param, as OpenAI names it)
        (
            "1 MB chat prompt",
            chat,
            _raw({"model": model, "messages": [{"role": "user", "content": "a" * MB}], "max_tokens": 2}),
            "messages",
            "context_length_exceeded",
        ),
        (
            "1 MB completion prompt",
            cmpl,
            _raw({"model": model, "prompt": "a" * MB, "max_tokens": 2}),
            "prompt",
            "context_length_exceeded",
        ),
        ("1 MB model name", chat, _raw({"model": "m" * MB, "messages": [{"role": "user", "content": "hi"}]}), "model", None),
        ("1 MB engine name", chat, _raw(_chat(model, engine="e" * MB)), "engine", None),
        # prompts longer than the context
        (
            "chat prompt longer than the context",
            chat,
            _raw({"model": model, "messages": [{"role": "user", "content": "ab " * context}], "max_tokens": 2}),
            "max_tokens",
            "context_length_exceeded",
        ),
        (
            "token prompt as long as the context",
            cmpl,
            _raw({"model": model, "prompt": [1] * context, "max_tokens": 1}),
            "max_tokens",
            "context_length_exceeded",
        ),
        ("max_tokens past the context", chat, _raw(_chat(model, max_tokens=context)), "max_tokens", "context_length_exceeded"),
        ("token ids out of the vocabulary", cmpl, _raw({"model": model, "prompt": [-1, 10**12]}), "prompt", None),
        (
            "more generations than the queue holds",
            cmpl,
            _raw({"model": model, "prompt": ["a"] * 200, "n": 2, "max_tokens": 1}),
            "n",
            "too_many_generations",
        ),
        ("300 async prompts", "/v1/generate_batch", _raw({"prompts": ["a"] * 300}), "prompts", None),
    ]


def test_hostile_bodies_get_clear_400s(server, info):
    cases = _cases(info["id"], info["max_model_len"])
    failures = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name, path, body, param, code in cases:
            start = time.monotonic()
            try:
                r = client.post(path, content=body, headers={"content-type": "application/json"})
            except httpx.TransportError as exc:
                failures.append(f"{name}: {exc!r}")
                continue
            elapsed = time.monotonic() - start
            try:
                assert r.status_code == 400, r.status_code
                err = r.json()["error"]
                assert set(err) == {"message", "type", "param", "code"}
                assert err["type"] == "invalid_request_error" and err["message"]
                if param is not None:
                    assert err["param"] == param, err
                if code is not None:
                    assert err["code"] == code, err
                assert elapsed < 10, f"took {elapsed:.1f}s"
            except (AssertionError, ValueError, KeyError) as exc:
                failures.append(f"{name}: {exc} -> {r.status_code} {r.text[:300]}")
    assert not failures, "\n".join(failures)
    _still_serving(server, info)


def test_huge_harmless_strings_are_served(server, info):
    """1 MB strings where the API has no reason to refuse them (a stop string, the `user`
    field) cost no more than short ones."""
    body = _chat(info["id"], user="u" * MB, stop=["s" * MB], max_tokens=8)
    start = time.monotonic()
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert time.monotonic() - start < 30
    _still_serving(server, info)


def test_oversized_body_is_413(server, info):
    body = _raw({"model": info["id"], "messages": [{"role": "user", "content": "a" * (5 * MB)}]})
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    _still_serving(server, info)


def test_hostile_path_parameters(server):
    for rid in ("²", "-1", "1" * 5000, "%00", "..%2F..%2Fetc"):
        r = httpx.get(server.url + "/v1/result/" + rid)
        assert r.status_code == 404, (rid, r.status_code, r.text)
        assert r.json()["error"]["code"] in ("request_not_found", "not_found")  # "../" leaves the route


def test_rejected_batch_leaves_nothing_running(server, info):
    """A request refused part-way (its second prompt does not fit) must not leave its first
    prompt decoding: all or nothing, for completions and for async job batches."""
    short, long = "hi", "ab " * info["max_model_len"]
    r = httpx.post(
        server.url + "/v1/completions", json={"model": info["id"], "prompt": [short, long], "max_tokens": 400}, timeout=60
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(server.url + "/v1/generate_batch", json={"prompts": [short, long], "gen_length": 400}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    # 400 tokens would keep a sequence decoding for many seconds; nothing may be left
    wait_idle(server.url, timeout=3)


def _still_serving(server, info) -> None:
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    r = httpx.post(server.url + "/v1/chat/completions", json=_chat(info["id"]), timeout=60)
    assert r.status_code == 200, r.text
    wait_idle(server.url)
