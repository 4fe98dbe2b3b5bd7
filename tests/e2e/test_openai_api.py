"""The OpenAI surface through the official client against a real server."""

import json

import httpx
import openai
import pytest

CHAT = [{"role": "user", "content": "Reverse the word: planet"}]


def test_models_lists_the_served_model(client, model_id):
    models = client.models.list().data
    assert [m.id for m in models] == [model_id]
    assert model_id == "dserve/llada-tiny-instruct" or model_id


def test_chat_completion_shape_and_usage(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=24)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == model_id
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.model_extra["nfe"] >= 1


def test_stream_concatenates_to_the_non_streamed_text(client, model_id):
    body = dict(model=model_id, messages=CHAT, max_tokens=32, temperature=0)
    whole = client.chat.completions.create(**body)
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stream_sends_done_marker(server, model_id):
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"model": model_id, "messages": CHAT, "stream": True, "max_tokens": 8},
        timeout=60,
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_completions_string_list_and_token_ids(client, model_id):
    one = client.completions.create(model=model_id, prompt="Reverse the word: planet", max_tokens=8)
    assert one.object == "text_completion" and len(one.choices) == 1
    many = client.completions.create(model=model_id, prompt=["abc", "def"], max_tokens=8)
    assert [c.index for c in many.choices] == [0, 1]
    ids = client.completions.create(model=model_id, prompt=[1, 2, 3], max_tokens=4)
    assert ids.usage.prompt_tokens == 3


def test_max_tokens_is_a_real_limit(client, model_id):
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Repeat the letter x 30 times"}], max_tokens=3
    )
    assert r.usage.completion_tokens <= 3
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 3


def test_stop_string_cuts_the_text(client, model_id):
    full = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=32).choices[0].message.content
    assert len(full) >= 2
    stop = full[1]
    cut = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=32, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats(client, model_id):
    body = dict(model=model_id, messages=CHAT, max_tokens=16, temperature=1.0, seed=1234)
    a = client.chat.completions.create(**body).choices[0].message.content
    b = client.chat.completions.create(**body).choices[0].message.content
    assert a == b


def test_n_choices(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=8, n=3, temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]


def test_diffusion_parameters_through_extra_body(client, model_id):
    r = client.chat.completions.create(
        model=model_id,
        messages=CHAT,
        max_tokens=16,
        extra_body={"steps": 4, "block_length": 8, "engine": "llada", "generation_algorithm": "reference"},
    )
    # 16 tokens in 2 blocks of 8, 2 steps per block: 4 forward passes, unless it stopped early
    assert r.usage.model_extra["nfe"] <= 4


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 513}, "steps"),
        ({"block_length": "eight"}, "block_length"),
        ({"remasking": "sideways"}, "remasking"),
        ({"threshold": 1.5}, "threshold"),
        ({"cfg_scale": -1}, "cfg_scale"),
        ({"temperature": 3}, "temperature"),
        ({"apd_max_parallel": 4}, "apd_max_parallel"),  # another algorithm's (unknown fields: test_vllm_compat.py)
        ({"engine": "warp-drive"}, "engine"),
    ],
)
def test_invalid_parameters_are_400_with_param(client, model_id, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=4, extra_body=extra)
    body = err.value.body
    assert err.value.status_code == 400
    assert set(body) >= {"message", "type", "param", "code"} and body["param"] == param


def test_unknown_algorithm_lists_the_valid_ones(client, model_id):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=CHAT, extra_body={"generation_algorithm": "teleport"})
    assert "reference" in err.value.body["message"]
    assert err.value.body["param"] == "generation_algorithm"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert err.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2, 3]",
        b'{"model": "m"}',
        b'{"model": "m", "messages": "hello"}',
        b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}',
        b"\xff\xfe not utf-8",
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_malformed_bodies_are_400_openai_errors(server, raw):
    r = httpx.post(server.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in err["message"]


def test_prompt_longer_than_the_context_is_400(client, model_id):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "x" * 5000}], max_tokens=8)
    assert err.value.body["code"] == "context_length_exceeded"


def test_server_keeps_serving_after_bad_requests(client, model_id):
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=model_id, messages=CHAT, extra_body={"steps": -1})
    assert client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=4).choices


def test_unknown_route_and_method(server):
    r = httpx.get(server.url + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_health_probes(server):
    assert httpx.get(server.url + "/health/live").json() == {"status": "alive"}
    assert httpx.get(server.url + "/health/ready").status_code == 200
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["ready"] is True


def test_generation_algorithms_lists_parameters(server):
    body = httpx.get(server.url + "/generation/algorithms").json()
    ref = next(a for a in body["algorithms"] if a["algorithm"] == "reference")
    assert ref["engine"] == "llada" and ref["available"] and ref["default"]
    assert ref["parameters"]["remasking"]["default"] == "low_confidence"
    assert ref["parameters"]["steps"]["maximum"] == 512
    fields = {f["name"]: f for f in body["fields"]}  # the declared fields, with flag, variable, default
    assert fields["steps"]["maximum"] == 512 and fields["steps"]["flags"] == ["--steps", "--diffusion-steps"]
    assert fields["max_tokens"]["server_default"] == 128 and fields["apd_threshold"]["env"] == "DSERVE_APD_THRESHOLD"


def test_openapi_documents_the_routes_and_docs_page(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health/ready"):
        assert path in spec["paths"]
    schemas = spec["components"]["schemas"]
    assert "steps" in schemas["ChatCompletionRequest"]["properties"]
    json.dumps(spec)
    assert "openapi.json" in httpx.get(server.url + "/docs").text
