"""What a client written for vLLM meets (docs/api.md): unknown fields ignored and reported,
unhonourable ones refused by name, the routes clients probe, the request id in the response
id, explicit null as a value, and `return_token_ids`. Real server, official `openai` client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from e2e.conftest import MODEL_ARGS
from e2e.server import ServerProcess

CHAT = [{"role": "user", "content": "Reverse the word: planet"}]
FAST = {"generation_algorithm": "dual_cache", "threshold": 0.9}  # a few forwards a request, not 32: a quick suite


def _post(server, path: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=headers, timeout=120)


# ---- tolerant fields -----------------------------------------------------------------------


def test_unknown_fields_are_ignored_reported_in_a_header_and_logged_once(server, client, model_id):
    defaults_clients_send = {
        "store": False,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "response_format": {"type": "text"},
        "tools": [],
        "logit_bias": {},
        "chat_template_kwargs": {"enable_thinking": False},
        "metadata": {"k": "v"},
        "my_unknown_field_x": 1,
    }
    raw = client.chat.completions.with_raw_response.create(
        model=model_id, messages=CHAT, max_tokens=8, extra_body={**defaults_clients_send, **FAST}
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "tenalp"
    ignored = [f.strip() for f in raw.headers["x-ignored-fields"].split(",")]
    # honoured as sent (empty tools, text format, no bias, no forced tool): not reported
    assert ignored == ["chat_template_kwargs", "metadata", "my_unknown_field_x", "parallel_tool_calls", "store"]
    again = _post(server, "/v1/completions", {"model": model_id, "prompt": "x", "max_tokens": 2, "my_unknown_field_x": 2, **FAST})
    assert again.status_code == 200 and again.headers["x-ignored-fields"] == "my_unknown_field_x"
    logged = [line for line in server.logs().splitlines() if "request field ignored" in line and "my_unknown_field_x" in line]
    assert len(logged) == 1
    plain = _post(server, "/v1/completions", {"model": model_id, "prompt": "x", "max_tokens": 2, **FAST})
    assert "x-ignored-fields" not in plain.headers


@pytest.mark.parametrize(
    "field, value",
    [
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("logit_bias", {"5": 100}),
        ("top_k", 5),
        ("min_p", 0.1),
        ("repetition_penalty", 1.2),
        ("best_of", 3),
        ("min_tokens", 4),
        ("apd_threshold", 0.5),  # another algorithm's parameter
    ],
)
def test_fields_the_server_cannot_honour_are_refused_by_name(client, model_id, field, value):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=4, extra_body={field: value})
    body = err.value.body
    assert body["param"] == field and body["code"] == "unsupported_field" and field in body["message"]


def test_neutral_token_filters_pass_and_dream_gets_top_k(server, client, model_id):
    reply = client.chat.completions.create(
        model=model_id, messages=CHAT, max_tokens=8, extra_body={"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, **FAST}
    )
    assert reply.choices[0].message.content == "tenalp"
    # the message names the algorithms that have top_k
    r = _post(server, "/v1/completions", {"model": model_id, "prompt": "x", "max_tokens": 2, "top_k": 3})
    assert r.status_code == 400 and "dream/entropy" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def strict_server():
    srv = ServerProcess(*MODEL_ARGS, "--strict-fields", "--threshold", "0.9")
    yield srv
    srv.stop()


def test_strict_fields_restores_the_400(strict_server):
    model_id = httpx.get(strict_server.url + "/v1/models").json()["data"][0]["id"]
    r = _post(strict_server, "/v1/chat/completions", {"model": model_id, "messages": CHAT, "max_tokens": 4, "store": False})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "store" and r.json()["error"]["code"] == "unknown_field"
    ok = _post(strict_server, "/v1/chat/completions", {"model": model_id, "messages": CHAT, "max_tokens": 4, "tools": [], **FAST})
    assert ok.status_code == 200


def test_explicit_null_is_the_parameters_null_not_the_server_default(strict_server):
    """--threshold 0.9 is the server default; `threshold: null` asks fastdllm for its fixed
    schedule (one token per step here), which spends one forward per token of the canvas."""
    model_id = httpx.get(strict_server.url + "/v1/models").json()["data"][0]["id"]
    base = {"model": model_id, "messages": CHAT, "max_tokens": 32, "generation_algorithm": "basic", "ignore_eos": True}
    default = _post(strict_server, "/v1/chat/completions", base).json()
    null = _post(strict_server, "/v1/chat/completions", {**base, "threshold": None}).json()
    assert null["usage"]["nfe"] == 32  # one token per step: the fixed split
    assert default["usage"]["nfe"] < 32  # the server's threshold commits several per step


# ---- routes clients probe ------------------------------------------------------------------


def test_models_retrieve(client, model_id):
    model = client.models.retrieve(model_id)
    assert model.id == model_id and model.object == "model"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such/model")
    assert err.value.body["code"] == "model_not_found"


def test_tokenize_counts_what_usage_counts_and_detokenize_inverts_it(server, client, model_id):
    tok = _post(server, "/tokenize", {"model": model_id, "messages": CHAT}).json()
    reply = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=8, extra_body=FAST)
    assert tok["count"] == len(tok["tokens"]) == reply.usage.prompt_tokens
    assert tok["max_model_len"] > 0 and tok["token_strs"] is None
    prompt = _post(server, "/tokenize", {"prompt": "Reverse the word: planet", "return_token_strs": True}).json()
    assert len(prompt["token_strs"]) == prompt["count"]
    cmpl = client.completions.create(model=model_id, prompt="Reverse the word: planet", max_tokens=2, extra_body=FAST)
    assert prompt["count"] == cmpl.usage.prompt_tokens
    back = _post(server, "/detokenize", {"model": model_id, "tokens": prompt["tokens"]}).json()
    assert back == {"prompt": "Reverse the word: planet"}
    assert _post(server, "/tokenize", {"prompt": "a", "messages": CHAT}).status_code == 400
    assert _post(server, "/detokenize", {"tokens": [-1]}).json()["error"]["param"] == "tokens"
    assert _post(server, "/tokenize", {"model": "other", "prompt": "a"}).status_code == 404


def test_version(server):
    from dserve import __version__

    assert httpx.get(server.url + "/version").json() == {"version": __version__}


def test_response_id_carries_the_request_id(server, client, model_id):
    raw = client.chat.completions.with_raw_response.create(
        model=model_id, messages=CHAT, max_tokens=4, extra_headers={"X-Request-Id": "my-trace-42"}, extra_body=FAST
    )
    assert raw.headers["x-request-id"] == "my-trace-42" and raw.parse().id == "chatcmpl-my-trace-42"
    minted = client.completions.with_raw_response.create(model=model_id, prompt="x", max_tokens=2, extra_body=FAST)
    assert minted.parse().id == "cmpl-" + minted.headers["x-request-id"]
    stream = client.chat.completions.create(
        model=model_id, messages=CHAT, max_tokens=4, stream=True, extra_headers={"X-Request-Id": "streamed-1"}, extra_body=FAST
    )
    assert {chunk.id for chunk in stream} == {"chatcmpl-streamed-1"}


def test_unknown_route_and_wrong_method_errors_are_as_documented(server):
    r = httpx.get(server.url + "/v1/no-such-route")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error" and r.json()["error"]["code"] == "not_found"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# ---- return_token_ids ----------------------------------------------------------------------


def test_return_token_ids_chat_and_completions(server, client, model_id):
    tok = _post(server, "/tokenize", {"messages": CHAT}).json()["tokens"]
    chat = client.chat.completions.create(
        model=model_id, messages=CHAT, max_tokens=8, extra_body={"return_token_ids": True, **FAST}
    )
    data = chat.model_dump()
    assert data["prompt_token_ids"] == tok
    out_ids = data["choices"][0]["token_ids"]
    assert len(out_ids) == chat.usage.completion_tokens
    assert _post(server, "/detokenize", {"tokens": out_ids}).json()["prompt"] == chat.choices[0].message.content

    cmpl = client.completions.create(
        model=model_id,
        prompt=["Reverse the word: planet", "Sort these numbers: 3 1 2"],
        max_tokens=8,
        n=2,
        extra_body={"return_token_ids": True, **FAST},
    ).model_dump()
    assert len(cmpl["choices"]) == 4
    first_prompt = _post(server, "/tokenize", {"prompt": "Reverse the word: planet"}).json()["tokens"]
    assert cmpl["choices"][0]["prompt_token_ids"] == cmpl["choices"][1]["prompt_token_ids"] == first_prompt
    assert cmpl["choices"][2]["prompt_token_ids"] != first_prompt
    for choice in cmpl["choices"]:
        assert _post(server, "/detokenize", {"tokens": choice["token_ids"]}).json()["prompt"] == choice["text"]
    plain = client.completions.create(model=model_id, prompt="x", max_tokens=2, extra_body=FAST).model_dump()
    assert "token_ids" not in plain["choices"][0] or plain["choices"][0]["token_ids"] is None


def test_return_token_ids_streamed(server, model_id):
    body = {"model": model_id, "messages": CHAT, "max_tokens": 8, "stream": True, "return_token_ids": True, **FAST}
    chunks = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    prompt_ids = [c["prompt_token_ids"] for c in chunks if "prompt_token_ids" in c]
    out_ids = [i for c in chunks for ch in c["choices"] for i in ch.get("token_ids") or []]
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert prompt_ids == [_post(server, "/tokenize", {"messages": CHAT}).json()["tokens"]]
    assert _post(server, "/detokenize", {"tokens": out_ids}).json()["prompt"] == text == "tenalp"


def test_docs_work_offline(server):
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: everything from this server
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")):
        assert f'"docs/{asset}"' in page.text
        r = httpx.get(f"{server.url}/docs/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 10_000
    assert httpx.get(server.url + "/docs/../../etc/passwd").status_code == 404
    assert httpx.get(server.url + "/docs/index.html").status_code == 404


def test_null_for_fields_without_a_null_meaning_is_their_default(server, model_id):
    nulls = {
        "n": None,
        "stream": None,
        "ignore_eos": None,
        "return_token_ids": None,
        "stop": None,
        "seed": None,
        "temperature": None,
    }
    r = _post(server, "/v1/chat/completions", {"model": model_id, "messages": CHAT, "max_tokens": 8, **nulls, **FAST})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["choices"]) == 1 and body["choices"][0]["message"]["content"] == "tenalp"
    assert "token_ids" not in body["choices"][0]
