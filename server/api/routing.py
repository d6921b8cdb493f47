"""The route class every router uses: request bodies parsed by pydantic-core's JSON parser.

Why: authorize bodies carry three modalities of float feature windows; the standard
library's `json.loads` was the largest single cost of an authorize call in a profile (about a
seventh of the server's CPU). `pydantic_core.from_json` (already a dependency through
pydantic) parses the same documents several times faster and gives the same Python values
(NaN and infinities included, so they still reach validation and get a field-named 422).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import Request, Response
from fastapi.routing import APIRoute


class FastJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError as exc:  # FastAPI turns this into its json_invalid 422
                raise json.JSONDecodeError(str(exc), body.decode("utf-8", "replace"), 0) from None
        return self._json


class CadenceRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(FastJSONRequest(request.scope, request.receive))

        return route_handler
