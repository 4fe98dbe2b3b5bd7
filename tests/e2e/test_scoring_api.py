"""Scoring through a real server: POST /v1/loglikelihood, /v1/completions with echo and
logprobs (lm-eval's local-completions shape), and logprobs of generated tokens."""

import concurrent.futures

import httpx
import pytest
from transformers import AutoTokenizer

from dserve_ops.evaluation.choices import END_OF_TURN, multiple_choice_items


def _post(server, path, body, timeout=300):
    return httpx.post(server.url + path, json=body, timeout=timeout)


@pytest.fixture(scope="module")
def tokenizer():
    from dserve_llada import EMBEDDED_MODEL_DIR

    return AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)


@pytest.fixture(scope="module")
def items():
    return multiple_choice_items(8)


def test_loglikelihood_ranks_the_answer_first(server, model_id, items):
    """The embedded model (about 95% exact match) puts its answer above three near misses."""

    def score(item):
        body = {
            "model": model_id,
            "context": item.context,
            "continuations": [c + END_OF_TURN for c in item.choices],
            "mc_num": 8,
            "check_greedy": False,
        }
        r = _post(server, "/v1/loglikelihood", body)
        assert r.status_code == 200, r.text
        return r.json()

    with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:  # batched by the scheduler
        outs = list(pool.map(score, items))
    right = 0
    for item, out in zip(items, outs):
        assert out["object"] == "loglikelihood" and out["estimator"] == "monte_carlo"
        assert out["mc_num"] == 8 and out["seed"] == 1234
        results = out["results"]
        assert [x["index"] for x in results] == list(range(len(item.choices)))
        for x in results:
            assert x["loglikelihood"] < 0 and x["stderr"] > 0 and x["is_greedy"] is None and x["nfe"] == 8
        scores = [x["loglikelihood"] for x in results]
        right += scores.index(max(scores)) == item.gold
    assert right >= 6, f"{right}/{len(items)}"


def test_greedy_flag(server, model_id, tokenizer):
    """The model's own answer passes the greedy check (one forward per token); a near miss fails
    it. Token ids: as text, the context's trailing newlines would move into the continuation
    (eval_llada.py's rule) and the check would have to predict them too."""
    item = multiple_choice_items(1)[0]
    wrong = next(c for c in item.choices if c != item.example.answer)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    body = {
        "model": model_id,
        "context": ids(item.context),
        "continuations": [ids(item.example.answer + END_OF_TURN), ids(wrong + END_OF_TURN)],
        "mc_num": 2,
    }
    results = _post(server, "/v1/loglikelihood", body).json()["results"]
    assert [x["is_greedy"] for x in results] == [True, False]
    assert results[0]["nfe"] == 2 + results[0]["continuation_tokens"]


def test_seed_and_mc_num_are_request_parameters(server, model_id):
    base = {"model": model_id, "context": [256, 258, 117, 259, 10, 10], "continuations": [[97, 98, 99], [120]]}
    body = {**base, "mc_num": 8, "mc_batch_size": 4, "check_greedy": False}
    one, again = (_post(server, "/v1/loglikelihood", {**body, "seed": 5}).json() for _ in range(2))
    other = _post(server, "/v1/loglikelihood", {**body, "seed": 6}).json()
    assert one["results"] == again["results"]
    assert one["results"][0]["loglikelihood"] != other["results"][0]["loglikelihood"]
    assert [x["nfe"] for x in one["results"]] == [8, 8] and one["results"][0]["is_greedy"] is None
    single = _post(server, "/v1/loglikelihood", {**base, "mc_num": 1, "check_greedy": False}).json()
    assert single["results"][0]["stderr"] is None and single["results"][0]["nfe"] == 1


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"mc_num": 10, "mc_batch_size": 4}, "mc_batch_size", None),
        ({"continuations": [[97], "b"]}, "continuations", None),
        ({"continuations": [""]}, "continuations", "empty_continuation"),
        ({"context": "a" * 5000}, "continuations", "context_length_exceeded"),
        ({"context": [97], "continuations": [[97, 10**6]]}, "continuations", None),
        ({"context": [-1], "continuations": [[97]]}, "context", None),
        ({"bogus": 1}, "bogus", None),
        ({"mc_num": 0}, "mc_num", None),
    ],
)
def test_bad_scoring_requests_are_400(server, model_id, body, param, code):
    r = _post(server, "/v1/loglikelihood", {"model": model_id, "context": "a", "continuations": ["b"], **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"].startswith(param) and (code is None or err["code"] == code)


def test_unknown_model_is_404(server):
    r = _post(server, "/v1/loglikelihood", {"model": "nope", "context": "a", "continuations": ["b"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_echo_logprobs_in_lm_evals_shape(client, model_id):
    """lm-eval's local-completions: token-id prompts, echo, logprobs 1, max_tokens 1; it reads
    token_logprobs[ctxlen:-1], so the generated token must follow the prompt's (a stop token too)."""
    prompts = [[256, 258, 117, 259, 10, 10, 97], [256, 98, 99]]
    r = client.completions.create(model=model_id, prompt=prompts, echo=True, logprobs=1, max_tokens=1, temperature=0, seed=1234)
    assert len(r.choices) == 2
    for prompt, choice in zip(prompts, sorted(r.choices, key=lambda c: c.index)):
        lp = choice.logprobs
        assert len(lp.token_logprobs) == len(prompt) + 1 == len(lp.tokens) == len(lp.top_logprobs)
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert all(v <= 0 for v in lp.token_logprobs[1:])
        assert all(len(top) == 1 and max(top.values()) >= v - 1e-6 for v, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]))
    # a text prompt scored only: the text comes back as sent, token by token
    r = client.completions.create(model=model_id, prompt="Sort these numbers: 3 1 2", echo=True, logprobs=0, max_tokens=0)
    choice = r.choices[0]
    assert choice.text == "Sort these numbers: 3 1 2" and "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset[:3] == [0, 1, 2] and r.usage.completion_tokens == 0
    assert r.usage.model_extra["nfe"] == len(choice.text) - 1  # one forward per token after the first


def test_max_tokens_zero_needs_echo(server, model_id):
    r = _post(server, "/v1/completions", {"model": model_id, "prompt": "ab", "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_chat_logprobs_are_the_committed_tokens(client, model_id):
    """At temperature 0 the reference loop commits each position's argmax: its log-probability
    is the best of its alternatives; the tokens spell the answer."""
    r = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Reverse the word: planet"}],
        logprobs=True,
        top_logprobs=3,
        max_tokens=16,
        temperature=0,
    )
    choice = r.choices[0]
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content == "tenalp"
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.logprob == pytest.approx(max(a.logprob for a in t.top_logprobs))
        assert t.top_logprobs[0].token == t.token and bytes(t.bytes).decode() == t.token


def test_completion_logprobs_and_their_400s(client, server, model_id):
    r = client.completions.create(model=model_id, prompt="ab", max_tokens=4, logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens
    body = {"model": model_id, "prompt": "Reverse the word: cat", "max_tokens": 8, "logprobs": 1, "engine": "dinfer"}
    r = _post(server, "/v1/completions", body)
    lp = r.json()["choices"][0]["logprobs"]
    assert r.status_code == 200 and len(lp["tokens"]) == len(lp["token_logprobs"]) == r.json()["usage"]["completion_tokens"]
    r = _post(
        server, "/v1/chat/completions", {"model": model_id, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_scoring_and_generation_run_together(client, server, model_id):
    """Scoring sequences wait in the same queue and step in the same scheduler loop as
    generations: both finish, and a scoring call's answer does not depend on the traffic."""
    body = {"model": model_id, "context": "Reverse the word: cat", "continuations": ["tac", "cat"], "mc_num": 8}
    alone = _post(server, "/v1/loglikelihood", body).json()["results"]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        chats = [
            pool.submit(
                client.chat.completions.create,
                model=model_id,
                messages=[{"role": "user", "content": "Swap the two words: red car"}],
                max_tokens=16,
            )
            for _ in range(4)
        ]
        scored = [pool.submit(_post, server, "/v1/loglikelihood", body) for _ in range(2)]
        assert all(c.result().choices[0].message.content for c in chats)
        assert all(s.result().json()["results"] == alone for s in scored)


def test_text_pairs_are_tokenized_as_eval_llada_does(server, model_id, tokenizer):
    """A context's trailing space moves to the continuation (eval_llada.py's _encode_pair)."""
    tok = tokenizer
    texts = _post(
        server, "/v1/loglikelihood", {"model": model_id, "context": "ab ", "continuations": ["cd"], "mc_num": 4, "seed": 3}
    ).json()
    ids = _post(
        server,
        "/v1/loglikelihood",
        {
            "model": model_id,
            "context": tok("ab")["input_ids"],
            "continuations": [tok(" cd")["input_ids"]],
            "mc_num": 4,
            "seed": 3,
        },
    ).json()
    assert texts["results"] == ids["results"] and texts["results"][0]["continuation_tokens"] == 3
