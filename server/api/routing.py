"""The route class every router uses: fast JSON bodies, and lean handlers for the hot path.

Why the fast parser: authorize bodies carry three modalities of float feature windows; the
standard library's `json.loads` was the largest single cost of an authorize call in a
profile (about a seventh of the server's CPU). `pydantic_core.from_json` (already a
dependency through pydantic) parses the same documents several times faster and gives the
same Python values (NaN and infinities included, so they still reach validation and get a
field-named 422).

Why lean handlers: FastAPI solves a route's dependencies (headers, state, body) through
generic machinery that re-inspects every parameter's annotation on every request; for
`authorize` that was about a sixth of its CPU time. A route marked with `lean(handler)`
keeps its declared signature for the OpenAPI contract, while requests run `handler(request)`,
which reads the same headers and validates the same pydantic body directly.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pydantic_core
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])
LeanHandler = Callable[[Request], Awaitable[Response]]


class FastJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError as exc:  # FastAPI turns this into its json_invalid 422
                raise json.JSONDecodeError(str(exc), body.decode("utf-8", "replace"), 0) from None
        return self._json


def lean(handler: LeanHandler) -> Callable[[F], F]:
    """Serve the decorated endpoint with `handler(request)`; the endpoint's signature documents it."""

    def mark(endpoint: F) -> F:
        endpoint.__cadence_lean__ = handler  # type: ignore[attr-defined]
        return endpoint

    return mark


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


async def json_body(request: Request, model: type[M]) -> tuple[M, bytes]:
    """The request body validated as `model` (and its bytes); a 422 naming the field otherwise.

    Same answers as FastAPI's body handling: a missing or non-JSON body, invalid JSON and
    invalid fields all become `RequestValidationError`s located under "body".
    """
    raw = await request.body()
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if not _is_json(request.headers.get("content-type")):
        raise RequestValidationError([{"type": "content_type", "loc": ("body",),
                                       "msg": "content-type must be application/json", "input": None}])
    try:
        return model.model_validate_json(raw), raw
    except ValidationError as exc:
        errors = []
        for e in exc.errors(include_url=False):
            if e["type"] == "json_invalid":  # worded by the app's handler; the input is not echoed
                e = {**e, "input": {}}
            errors.append({**e, "loc": ("body", *e["loc"])})
        raise RequestValidationError(errors) from None


class CadenceRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        lean_handler: LeanHandler | None = getattr(self.endpoint, "__cadence_lean__", None)
        if lean_handler is not None:

            async def lean_route(request: Request) -> Response:
                return await lean_handler(request)

            return lean_route
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(FastJSONRequest(request.scope, request.receive))

        return route_handler
