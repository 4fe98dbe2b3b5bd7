"""The production middleware through a real server: API keys, rate limit, body limit,
request ids, CORS and JSON access logs, set by CLI flags and by DSERVE_* variables.

Two servers: one configured with flags (`--api-key k1 --api-key k2 ...`), one only through
environment variables (`DSERVE_API_KEY='["k"]'`, `--metrics-require-key`, `--log-prompts`).
"""

from __future__ import annotations

import json
import re
import uuid

import httpx
import openai
import pytest

from reliability.helpers import MODEL_ARGS, ServerProcess, json_log_lines, model_info, wait_for

RATE = 30  # requests per minute per key on the flag-configured server
MAX_BODY = 20_000
ORIGIN = "http://x"
K1 = {"Authorization": "Bearer k1"}


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(
        *MODEL_ARGS,
        "--api-key",
        "k1",
        "--api-key",
        "k2",
        "--rate-limit-requests",
        str(RATE),
        "--max-body-bytes",
        str(MAX_BODY),
        "--cors-origin",
        ORIGIN,
        "--log-json",
        "--max-tokens",
        "8",
        "--block-length",
        "8",  # short canvases: cheap decoding on a busy CPU
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def env_server():
    """Configured only through DSERVE_* variables."""
    env = {
        "DSERVE_API_KEY": '["k"]',
        "DSERVE_METRICS_REQUIRE_KEY": "true",
        "DSERVE_LOG_PROMPTS": "true",
        "DSERVE_LOG_JSON": "true",
        "DSERVE_MAX_TOKENS": "8",
        "DSERVE_BLOCK_LENGTH": "8",
    }
    srv = ServerProcess(*MODEL_ARGS, env=env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def model_id(server) -> str:
    return model_info(server.url, K1)["id"]


def _client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def _assert_openai_error(r: httpx.Response, status: int, type_: str, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == type_ and err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    return err


def _log_line(server, request_id: str) -> dict:
    """The access-log line of one request (it is written once the response is complete)."""

    def find():
        for line in json_log_lines(server):
            if line.get("event") == "http_request" and line.get("request_id") == request_id:
                return line
        return None

    return wait_for(find, 10, what=f"the access-log line of {request_id}")


# ---- API keys ---------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_an_openai_401(server):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic azE6"}, {"Authorization": "Bearer"}):
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "m"}, headers=headers)
        _assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["x-request-id"]
    # a key is a whole bearer token: a prefix or a key with extra characters is not one
    for key in ("k", "k1x", "K1"):
        r = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 401, key


def test_openai_client_sees_authentication_error(server, model_id):
    with pytest.raises(openai.AuthenticationError) as info:
        _client(server, "wrong").chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.type == "authentication_error"


def test_every_configured_key_works(server, model_id):
    out = _client(server, "k1").chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert out.choices[0].finish_reason in ("stop", "length")
    assert [m.id for m in _client(server, "k2").models.list().data] == [model_id]


def test_probes_and_metrics_need_no_key(server):
    for path in ("/health", "/health/live", "/health/ready"):
        assert httpx.get(server.url + path).status_code == 200, path
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200
    assert "dserve_request_success_total" in r.text
    # the other operations routes are behind the key
    assert httpx.get(server.url + "/batch/stats").status_code == 401
    assert httpx.get(server.url + "/batch/stats", headers=K1).status_code == 200


# ---- rate limit -------------------------------------------------------------------------------


def test_rate_limit_429_with_retry_after(server):
    """k2 spends its bucket (RATE requests at once), then gets 429; k1 and probes don't care."""
    headers = {"Authorization": "Bearer k2"}
    statuses = []
    with httpx.Client(base_url=server.url, headers=headers) as c:
        for _ in range(RATE + 5):
            r = c.get("/v1/models")
            statuses.append(r.status_code)
            if r.status_code == 429:
                break
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {200}
    # about RATE: k2 made a request earlier, and the bucket refills 1 token per 60/RATE s meanwhile
    assert RATE - 3 <= len(statuses) - 1 <= RATE + 2
    err = _assert_openai_error(r, 429, "rate_limit_error", "rate_limit_exceeded")
    assert str(RATE) in err["message"]
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= 60 // RATE + 1
    assert r.headers["x-ratelimit-limit-requests"] == str(RATE)
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-request-id"]

    with pytest.raises(openai.RateLimitError) as info:
        _client(server, "k2").models.list()
    assert info.value.response.headers["retry-after"]
    # probes and /metrics are never rate limited; another key has its own bucket
    assert httpx.get(server.url + "/health/ready", headers=headers).status_code == 200
    assert httpx.get(server.url + "/metrics", headers=headers).status_code == 200
    assert httpx.get(server.url + "/v1/models", headers=K1).status_code == 200


# ---- body size ----------------------------------------------------------------------------------


def test_body_over_the_limit_is_413(server, model_id):
    body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "a" * MAX_BODY}]})
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={**K1, "content-type": "application/json"})
    _assert_openai_error(r, 413, "invalid_request_error", "request_too_large")
    assert str(MAX_BODY) in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"model": "' + model_id.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"a" * 1000
        yield b'"}]}'

    r = httpx.post(server.url + "/v1/chat/completions", content=chunks(), headers={**K1, "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    _assert_openai_error(r, 413, "invalid_request_error", "request_too_large")


def test_body_at_the_limit_is_served(server, model_id):
    body = json.dumps({"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    body = body + " " * (MAX_BODY - len(body))  # JSON allows trailing whitespace
    assert len(body.encode()) == MAX_BODY
    r = httpx.post(
        server.url + "/v1/chat/completions", content=body, headers={**K1, "content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 200, r.text


# ---- request ids --------------------------------------------------------------------------------


def test_request_id_echoed_or_generated(server):
    r = httpx.get(server.url + "/v1/models", headers={**K1, "X-Request-Id": "client-id-42"})
    assert r.headers["x-request-id"] == "client-id-42"
    assert _log_line(server, "client-id-42")["route"] == "/v1/models"

    generated = httpx.get(server.url + "/v1/models", headers=K1).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert httpx.get(server.url + "/v1/models", headers=K1).headers["x-request-id"] != generated

    for bad in ("has space", "x" * 129, "ünïcode"):
        r = httpx.get(server.url + "/health", headers={"X-Request-Id": bad.encode("utf-8")})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad

    # rejections carry it too
    r = httpx.get(server.url + "/v1/models", headers={"X-Request-Id": "rejected-1"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "rejected-1"
    assert _log_line(server, "rejected-1")["status"] == 401


# ---- CORS ---------------------------------------------------------------------------------------


def test_cors_preflight_and_headers(server):
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
    }
    r = httpx.options(server.url + "/v1/chat/completions", headers=preflight)  # browsers send no key here
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()

    r = httpx.options(server.url + "/v1/chat/completions", headers={**preflight, "Origin": "http://evil"})
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers

    r = httpx.get(server.url + "/v1/models", headers={**K1, "Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    # a page can read the error of a rejected call
    r = httpx.get(server.url + "/v1/models", headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    # other origins and same-origin calls get no CORS headers
    assert (
        "access-control-allow-origin" not in httpx.get(server.url + "/v1/models", headers={**K1, "Origin": "http://evil"}).headers
    )
    assert "access-control-allow-origin" not in httpx.get(server.url + "/v1/models", headers=K1).headers


# ---- JSON access log ------------------------------------------------------------------------------


def test_json_log_fields_and_no_prompt_text(server, model_id):
    secret = f"SECRET-{uuid.uuid4().hex}"
    rid = f"log-{uuid.uuid4().hex[:8]}"
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={
            "model": model_id,
            "messages": [{"role": "user", "content": secret}],
            "max_tokens": 5,
            "steps": 5,
            "ignore_eos": True,
        },
        headers={**K1, "X-Request-Id": rid},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    line = _log_line(server, rid)
    assert line["route"] == "/v1/chat/completions" and line["method"] == "POST"
    assert line["status"] == 200
    assert isinstance(line["latency_ms"], (int, float)) and line["latency_ms"] > 0
    assert line["prompt_tokens"] == usage["prompt_tokens"]
    assert line["completion_tokens"] == usage["completion_tokens"] == 5
    assert line["nfe"] == usage["nfe"] > 0
    assert line["steps"] == 5
    assert line["engine"] and line["algorithm"]
    assert line["level"] == "info" and line["timestamp"]

    # streamed: logged when the stream is over, with its token counts
    rid2 = f"log-{uuid.uuid4().hex[:8]}"
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        json={"model": model_id, "prompt": secret, "max_tokens": 4, "stream": True, "ignore_eos": True},
        headers={**K1, "X-Request-Id": rid2},
        timeout=60,
    ) as s:
        assert s.status_code == 200
        "".join(s.iter_text())
    line = _log_line(server, rid2)
    assert line["status"] == 200 and line["completion_tokens"] == 4 and line["prompt_tokens"] > 0

    # a rejected prompt is not logged either
    r = httpx.post(server.url + "/v1/completions", json={"model": model_id, "prompt": secret, "n": 0}, headers=K1)
    assert r.status_code == 400
    wait_for(lambda: any(line.get("status") == 400 for line in json_log_lines(server)), 10, what="the 400's log line")
    assert secret not in server.logs()
    assert "prompt_text" not in server.logs()


# ---- configuration through DSERVE_* variables --------------------------------------------------------


def test_env_vars_api_key_metrics_key_and_log_prompts(env_server):
    url = env_server.url
    key = {"Authorization": "Bearer k"}
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/models", headers=K1).status_code == 401
    mid = model_info(url, key)["id"]
    # --metrics-require-key (DSERVE_METRICS_REQUIRE_KEY): /metrics is behind the key, probes are not
    r = httpx.get(url + "/metrics")
    _assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
    assert httpx.get(url + "/metrics", headers=key).status_code == 200
    assert httpx.get(url + "/health/ready").status_code == 200

    # --log-prompts (DSERVE_LOG_PROMPTS): the prompt text is in the request's log line
    secret = f"VISIBLE-{uuid.uuid4().hex}"
    out = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60).chat.completions.create(
        model=mid, messages=[{"role": "user", "content": secret}], max_tokens=2, extra_headers={"X-Request-Id": "env-chat"}
    )
    assert out.usage.completion_tokens <= 2
    line = _log_line(env_server, "env-chat")
    assert line["prompt_text"] == [{"role": "user", "content": secret}]
    r = httpx.post(
        url + "/v1/completions",
        json={"model": mid, "prompt": secret, "max_tokens": 2},
        headers={**key, "X-Request-Id": "env-cmpl"},
        timeout=60,
    )
    assert r.status_code == 200
    assert _log_line(env_server, "env-cmpl")["prompt_text"] == secret
