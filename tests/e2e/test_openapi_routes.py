"""Routes and /openapi.json come from one table (core/dserve/routes/table.py): every route the
server serves is documented, and every documented operation is served."""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from dserve.hookspecs import hookimpl
from dserve.plugins import get_plugin_manager
from dserve.server import create_app
from dserve.settings import Settings

ROUTING_MISSES = {"not_found", "method_not_allowed"}  # the codes of Starlette's own 404 / 405


def _documented(spec: dict) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}


def _served(app) -> set[tuple[str, str]]:
    pairs = set()
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r} is not a plain route: the OpenAPI table cannot describe it"
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
        pairs |= {(path, method) for method in route.methods if method != "HEAD"}  # Starlette adds HEAD to GET
    return pairs


class _RoutePlugin:
    """A plugin adding one route, registered in-process for the duration of a test."""

    @staticmethod
    async def hello(request):
        """Say hello (a plugin route)."""
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("hello")

    @hookimpl
    def register_routes(self, add_route):
        add_route("/plugin/hello", self.hello, methods=["GET", "POST"])


@pytest.fixture
def route_plugin():
    pm = get_plugin_manager()
    plugin = _RoutePlugin()
    pm.register(plugin, name="route-table-test")
    yield
    pm.unregister(plugin)


@pytest.mark.parametrize("metrics", [True, False])
def test_served_routes_and_the_document_are_the_same_set(route_plugin, metrics):
    app = create_app(Settings(metrics=metrics), load_model=False)
    client = TestClient(app)  # no lifespan: nothing loads
    spec = client.get("/openapi.json").json()
    assert _served(app) == _documented(spec)
    assert (("/metrics", "GET") in _documented(spec)) is metrics
    hello = spec["paths"]["/plugin/hello"]
    assert set(hello) == {"get", "post"} and hello["get"]["summary"] == "Say hello (a plugin route)."
    assert client.post("/plugin/hello").text == "hello"
    result = spec["paths"]["/v1/result/{request_id}"]["get"]
    assert result["parameters"][0]["name"] == "request_id"


def test_every_documented_operation_is_served(server):
    """Through the real server: each documented path and method reaches an endpoint (whatever it
    answers to an empty body), never Starlette's routing 404 / 405."""
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/docs", "/openapi.json", "/metrics"} <= set(spec["paths"])
    for path, method in sorted(_documented(spec)):
        url = server.url + re.sub(r"{\w+}", "123", path)
        r = httpx.request(method, url, json={} if method == "POST" else None, timeout=60)
        code = (
            r.json()["error"]["code"]
            if r.headers.get("content-type", "").startswith("application/json") and r.status_code >= 400
            else None
        )
        assert code not in ROUTING_MISSES, f"{method} {path} is documented but not served: {r.status_code} {r.text[:200]}"
    # and the check notices a path that is not served
    miss = httpx.get(server.url + "/v1/not-a-route").json()["error"]["code"]
    assert miss in ROUTING_MISSES
