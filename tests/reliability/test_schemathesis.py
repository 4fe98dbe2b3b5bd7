"""Property-based API testing with schemathesis against the running server's /openapi.json.

For every documented operation schemathesis generates requests from the schema (bounded and
derandomized, so a run is repeatable) and checks each response: no 5xx, the status code is
one the document lists for the operation, the content type is a documented one, and the body
conforms to the documented schema.

The default run uses schemathesis's examples and fuzzing phases (25 derandomized cases per
operation); `-m slow` adds its deterministic coverage phase (boundary values, wrong types,
missing fields, unexpected methods: about 1000 requests) and up to 250 fuzzed cases per
operation on one server and through a two-worker front (whose document adds /stats and
/worker-status); operations without parameters have only a case or two, so the count comes
from the ones with bodies (the run prints it; docs/reliability.md has a run's figure).

Generated bodies name the served model (a random name only ever reaches the 404), and
lengths and step counts that the server would accept are cut to a few tokens, so decoding on
the CPU stays cheap; out-of-range values go through unchanged and must get a 4xx.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reliability.helpers import MODEL_ARGS, ServerProcess  # noqa: E402

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


COST_FIELDS = ("max_tokens", "max_completion_tokens", "gen_length", "block_length", "steps", "n")
SMALL = 2


@pytest.fixture(scope="module")
def server():
    # --request-timeout only turns a hang into a (failing) 504 instead of a stuck test
    srv = ServerProcess(
        *MODEL_ARGS,
        "--max-tokens",
        "2",
        "--block-length",
        "2",
        "--steps",
        "1",  # defaults for what a generated body leaves out: one forward pass
        "--request-timeout",
        "50",
        "--shutdown-grace",
        "5",
        "--max-batch-size",
        "16",
    )
    yield srv
    srv.stop()


def _load_schema(server, phases: list[str]):
    api = schemathesis.openapi.from_url(server.url + "/openapi.json")
    api.config.phases.update(phases=phases)
    return api


@pytest.fixture(scope="module")
def api_schema(server):
    """Examples and property-based fuzzing: max_examples per operation, derandomized."""
    return _load_schema(server, ["examples", "fuzzing"])


@pytest.fixture(scope="module")
def api_schema_coverage(server):
    """Schemathesis's deterministic coverage phase: boundary values and wrong types for every
    field, missing required fields, unexpected HTTP methods (about 1200 requests)."""
    return _load_schema(server, ["coverage"])


@pytest.fixture(scope="module")
def front():
    """A two-worker front on the CPU, with the same cheap defaults as `server`."""
    srv = ServerProcess(
        *MODEL_ARGS,
        "--gpus",
        "2",
        "--device",
        "cpu",
        "--worker-start-interval",
        "0",
        "--max-tokens",
        "2",
        "--block-length",
        "2",
        "--steps",
        "1",
        "--request-timeout",
        "50",
        "--shutdown-grace",
        "5",
        "--max-batch-size",
        "16",
        ready_timeout=240,
    )
    import httpx

    from reliability.helpers import wait_for

    wait_for(lambda: httpx.get(srv.url + "/stats", timeout=10).json()["healthy_workers"] == 2, 240, 0.2, "both workers healthy")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_schema_front(front):
    return _load_schema(front, ["examples", "fuzzing"])


@pytest.fixture(scope="module")
def api_schema_many(server):
    return _load_schema(server, ["examples", "fuzzing"])


@pytest.fixture(scope="module")
def model_id(server):
    import httpx

    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]


def _check(case, server, model_id) -> None:
    if isinstance(case.body, dict):
        if "model" in case.body:
            # a random model name is always a 404; the served one reaches validation and decoding
            case.body["model"] = model_id
        for key in COST_FIELDS:
            # keep decoding cheap on CPU: a length or step count that would be accepted is cut
            # to SMALL; out-of-range values are left alone to exercise validation
            value = case.body.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and SMALL < value <= 4096:
                case.body[key] = SMALL
        prompts = case.body.get("prompts")
        if isinstance(prompts, list) and 2 < len(prompts) <= 256:  # async batches run on after the answer
            case.body["prompts"] = prompts[:2]
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)


SETTINGS = settings(
    max_examples=25,
    derandomize=True,  # the same examples every run
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(HealthCheck),
)

schema = schemathesis.pytest.from_fixture("api_schema")
coverage_schema = schemathesis.pytest.from_fixture("api_schema_coverage")
many_schema = schemathesis.pytest.from_fixture("api_schema_many")
front_schema = schemathesis.pytest.from_fixture("api_schema_front")
MANY = settings(SETTINGS, max_examples=250)
CASES = {"server": 0, "front": 0}  # generated cases run by the slow tests, reported at the end


@pytest.fixture(scope="module", autouse=True)
def _report_cases():
    yield
    if any(CASES.values()):
        print(f"\nschemathesis generated cases: {CASES}")


@schema.parametrize()
@SETTINGS
def test_api_conforms_to_its_openapi_document(case, server, model_id):
    _check(case, server, model_id)


@pytest.mark.slow
@coverage_schema.parametrize()
@SETTINGS
def test_api_conforms_on_coverage_cases(case, server, model_id):
    _check(case, server, model_id)


@pytest.mark.slow
@many_schema.parametrize()
@MANY
def test_api_conforms_on_many_generated_cases(case, server, model_id):
    CASES["server"] += 1
    _check(case, server, model_id)


@pytest.mark.slow
@front_schema.parametrize()
@MANY
def test_front_conforms_to_its_openapi_document(case, front, model_id):
    CASES["front"] += 1
    _check(case, front, model_id)


def test_every_route_is_documented(server):
    """Each HTTP route the server serves (but the doc pages themselves) is in /openapi.json."""
    import httpx

    paths = set(httpx.get(server.url + "/openapi.json").json()["paths"])
    expected = {
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/generate",
        "/v1/generate_batch",
        "/v1/result/{request_id}",
        "/health",
        "/health/live",
        "/health/ready",
        "/generation/algorithms",
        "/v1/engine/stats",
        "/batch/stats",
        "/metrics",
    }
    assert expected <= paths, expected - paths
