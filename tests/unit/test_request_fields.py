"""The request field policy (dserve.request_fields, docs/api.md "Fields the server does not know")."""

from __future__ import annotations

import pytest
import structlog

from dserve import request_fields
from dserve.errors import BadRequest
from dserve.request_fields import sort_fields

KNOWN = {"top_k": ["dream/entropy"], "apd_threshold": ["fastdllm/apd"], "steps": []}


def _sort(extras, own=("steps", "temperature"), strict=False):
    return sort_fields(extras, algorithm_params=own, algorithm="llada/reference", known_params=KNOWN, strict=strict)


def test_unknown_fields_are_ignored_and_named_sorted():
    out = _sort({"store": False, "zeta": 1, "metadata": {}, "steps": 4})
    assert out.params == {"steps": 4} and out.ignored == ("metadata", "store", "zeta")
    assert request_fields.ignored_header(out) == {"X-Ignored-Fields": "metadata, store, zeta"}
    assert request_fields.ignored_header(_sort({})) == {}


def test_strict_refuses_the_first_unknown_field():
    with pytest.raises(BadRequest) as err:
        _sort({"store": False}, strict=True)
    assert err.value.param == "store" and err.value.code == "unknown_field"


@pytest.mark.parametrize(
    "extras",
    [{"tools": []}, {"tool_choice": "auto"}, {"tool_choice": "none"}, {"response_format": {"type": "text"}}, {"logit_bias": {}},
     {"best_of": 1}, {"min_tokens": 0}, {"top_k": -1}, {"top_k": 0}, {"min_p": 0}, {"repetition_penalty": 1.0}],
)  # fmt: skip
def test_values_that_ask_for_nothing_pass_unreported(extras):
    out = _sort(extras, strict=True)
    assert out.params == {} and out.ignored == ()


@pytest.mark.parametrize(
    "extras, param",
    [({"tools": [{"type": "function"}]}, "tools"), ({"tool_choice": {"type": "function"}}, "tool_choice"),
     ({"response_format": {"type": "json_schema"}}, "response_format"), ({"logit_bias": {"1": 5}}, "logit_bias"),
     ({"best_of": 2}, "best_of"), ({"top_k": 4}, "top_k"), ({"min_p": 0.2}, "min_p"),
     ({"repetition_penalty": 1.1}, "repetition_penalty"), ({"apd_threshold": 0.4}, "apd_threshold")],
)  # fmt: skip
def test_unhonourable_values_are_refused_by_name_even_when_tolerant(extras, param):
    with pytest.raises(BadRequest) as err:
        _sort(extras)
    assert err.value.param == param and err.value.code == "unsupported_field"


def test_an_algorithm_with_the_filter_gets_it():
    assert _sort({"top_k": 4}, own=("top_k",)).params == {"top_k": 4}
    with pytest.raises(BadRequest, match="dream/entropy"):
        _sort({"top_k": 4})


def test_each_ignored_name_is_logged_once(monkeypatch):
    monkeypatch.setattr(request_fields, "_reported", set())
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            _sort({"a_field": 1, "b_field": 2})
    assert sorted(e["field"] for e in logs if e["event"] == "request field ignored") == ["a_field", "b_field"]


def test_the_ignored_fields_header_carries_any_name_a_client_sends():
    """Field names are the client's choice (schemathesis sent surrogates and control characters,
    which no header can carry: a 500): escaped as in JSON, cut, at most MAX_HEADER_NAMES."""
    from dserve.request_fields import MAX_HEADER_NAMES, SortedFields, header_safe, ignored_header

    assert header_safe("store") == "store"
    assert header_safe("\udbca\u00be\r\n") == "\\udbca\\u00be\\r\\n"
    assert len(header_safe("x" * 500)) == 64
    value = ignored_header(SortedFields({}, ("\ud83e\udd8c", *(f"f{i:02}" for i in range(40)))))["X-Ignored-Fields"]
    value.encode("ascii")  # a header value: printable ASCII only
    assert value.isprintable() and value.count(",") == MAX_HEADER_NAMES
    assert value.endswith("(9 more)")
