"""One entry of the route table: an HTTP route and what `/openapi.json` says about it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.routing import Route


@dataclass(frozen=True)
class ApiRoute:
    """One HTTP route and what `/openapi.json` says about it.

    ``response`` is the 200 body: a pydantic model, a JSON schema, or None when nothing is
    known about it (a plugin's route); ``errors`` the other statuses the route answers with
    (their descriptions are in routes/docs.py); ``stream``: it can answer with server-sent
    events instead (``"stream": true``).
    """

    path: str
    endpoint: Callable[..., Any]
    methods: tuple[str, ...] = ("GET",)
    summary: str = ""
    request: type[BaseModel] | None = None
    response: type[BaseModel] | dict[str, Any] | None = None
    media_type: str = "application/json"
    errors: tuple[str, ...] = ()
    stream: bool = False

    def starlette_route(self) -> Route:
        return Route(self.path, self.endpoint, methods=list(self.methods))
