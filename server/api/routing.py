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

Why duplicate keys are refused: both parsers keep the last of two equal keys in one object,
so a signed body `{"amount": "10.00", ..., "amount": "900.00"}` was paid as 900.00 while a
reader (a log, a bank's review, another parser) may take the first. Ruling them out costs a
count of the body's colons and braces against the keys and objects validation found (every
key is followed by a colon, every object opens with a brace, and the counts only exceed the
true ones through colons and braces inside strings); only a body where those differ is
parsed once more, by `json.loads`, to look for a duplicate: ~9 us per authorize body
(7 windows, 20 KB) against ~500 us for that parse, and ~100 us for its validation.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import numpy as np
import pydantic_core
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from server.schemas import REQUEST_JSON

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])
LeanHandler = Callable[[Request], Awaitable[Response]]
Loc = tuple[str | int, ...]
_COLON = ord(":")


class DuplicateKeyError(ValueError):
    """A JSON object of the body names one key twice; `loc` is that key's path in the body."""

    def __init__(self, loc: Loc) -> None:
        super().__init__(f"duplicate key at {loc}")
        self.loc = loc


def _count(raw: bytes, byte: bytes) -> int:
    """How often `byte` occurs in `raw`, for a byte that is rare there (a memchr per hit)."""
    n, i = 0, raw.find(byte)
    while i >= 0:
        n += 1
        i = raw.find(byte, i + 1)
    return n


def _unique_by_count(raw: bytes, keys: int, objects: int) -> bool:
    """Whether `raw`'s objects, `keys` distinct keys in `objects` objects once parsed, repeat no key.

    Each key in the text is followed by a colon and each object opens with a brace; strings
    can only add to either count. So when the text has no more colons than there are distinct
    keys and no more braces than objects, no key occurred twice. (numpy counts the colons:
    bytes.count loops byte by byte, 3x slower on an authorize body; the braces are few.)
    """
    return _count(raw, b"{") == objects and int(np.count_nonzero(np.frombuffer(raw, np.uint8) == _COLON)) == keys


#: values that hold no JSON object (checked by exact type first: `isinstance` against
#: pydantic's BaseModel goes through its metaclass's ABC check, ~1 us per value)
_ATOMS = frozenset({str, int, float, bool, Decimal, type(None)})


def _may_hold_objects(annotation: Any) -> bool:
    """Whether a field of this type can hold a JSON object (a model, a dict); unknown types can."""
    if isinstance(annotation, type) and not get_args(annotation):
        return issubclass(annotation, BaseModel | Mapping) or annotation is object
    origin = get_origin(annotation)
    if origin is Literal:
        return False
    if origin is Annotated:
        return _may_hold_objects(get_args(annotation)[0])
    args = get_args(annotation)
    if not args or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return True
    return any(_may_hold_objects(a) for a in args)


#: per request model, the fields whose values can hold JSON objects (FeatureWindowIn: none)
_NESTED: dict[type[BaseModel], tuple[str, ...]] = {}


def _nested_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    nested = _NESTED[cls] = tuple(name for name, f in cls.model_fields.items() if _may_hold_objects(f.annotation))
    return nested


def _model_keys(model: BaseModel) -> tuple[int, int]:
    """(distinct keys, objects) of the JSON that validated as `model`.

    Each key given is one of `model_fields_set` (the request models forbid extra fields and
    no validator adds one) and JSON objects appear only as nested models and dicts, which are
    entered only through the fields whose type allows them: not the feature values. A key or
    object missed here only makes the counts differ, which sends the body to the slow path.
    """
    fields = model.__pydantic_fields_set__
    keys, objects = len(fields), 1
    nested = _NESTED.get(model.__class__)
    if nested is None:
        nested = _nested_fields(model.__class__)
    for name in nested:
        if name in fields:
            value = model.__dict__[name]
            if value.__class__ not in _ATOMS:
                k, o = _value_keys(value)
                keys, objects = keys + k, objects + o
    return keys, objects


def _value_keys(value: Any) -> tuple[int, int]:
    """(distinct keys, objects) in a field's value: a model, a dict or a list of them."""
    if isinstance(value, list):
        if not value or value[0].__class__ in _ATOMS:  # validated lists are of one type
            return 0, 0
        keys = objects = 0
        items: Any = value
    elif isinstance(value, dict):
        keys, objects, items = len(value), 1, value.values()
    elif isinstance(value, BaseModel):
        return _model_keys(value)
    else:
        return 0, 0
    for item in items:
        if item.__class__ not in _ATOMS:
            k, o = _model_keys(item) if isinstance(item, BaseModel) else _value_keys(item)
            keys, objects = keys + k, objects + o
    return keys, objects


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, duplicates kept."""


def _duplicate_key(raw: bytes) -> Loc | None:
    """The path of the first key that repeats within one object of `raw`, or None.

    The slow path (a full `json.loads`), taken only when the counts cannot rule duplicates out.
    A body pydantic-core accepted and `json.loads` does not is refused as a whole.
    """
    try:
        doc = json.loads(raw, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return ()
    stack: list[tuple[Any, Loc]] = [(doc, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, _Pairs):
            seen: set[str] = set()
            for key, _ in node:
                if key in seen:
                    return (*loc, key)
                seen.add(key)
            stack.extend((value, (*loc, key)) for key, value in reversed(node))
        elif isinstance(node, list):
            stack.extend((item, (*loc, i)) for i, item in reversed(list(enumerate(node))))
    return None


def check_unique_keys(raw: bytes, keys: int, objects: int) -> None:
    """Raise DuplicateKeyError unless every object of `raw` names each of its keys once."""
    if not _unique_by_count(raw, keys, objects):
        loc = _duplicate_key(raw)
        if loc is not None:
            raise DuplicateKeyError(loc)


def duplicate_key_error(exc: DuplicateKeyError) -> RequestValidationError:
    """The 422 for a duplicate key, located at the key ("amount: appears twice ...")."""
    if not exc.loc:
        return RequestValidationError([{"type": "json_invalid", "loc": ("body",), "input": {},
                                        "msg": "the body could not be read as JSON"}])
    return RequestValidationError([{"type": "duplicate_key", "loc": ("body", *exc.loc), "input": None,
                                    "msg": "appears more than once in its JSON object (duplicate keys are refused: "
                                           "which one counts would be up to the parser)"}])


def _json_keys(doc: Any) -> tuple[int, int]:
    """(distinct keys, objects) of a parsed JSON document (lists entered when their first item nests)."""
    keys = objects = 0
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            keys, objects = keys + len(node), objects + 1
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif node and isinstance(node[0], dict | list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return keys, objects


class FastJSONRequest(Request):
    async def json(self) -> Any:
        """The body parsed by pydantic-core; DuplicateKeyError when an object repeats a key.

        Also makes the body's text the one amounts sent as JSON numbers are read from
        (`server.schemas.REQUEST_JSON`), for the validation that follows in this request.
        """
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                doc = pydantic_core.from_json(body)
            except ValueError as exc:  # FastAPI turns this into its json_invalid 422
                raise json.JSONDecodeError(str(exc), body.decode("utf-8", "replace"), 0) from None
            if isinstance(doc, dict | list):
                check_unique_keys(body, *_json_keys(doc))
            REQUEST_JSON.set(body)
            self._json = doc
        return self._json


def content_type_error() -> RequestValidationError:
    """The 422 for a body sent without a JSON content type (every body of this API is JSON)."""
    return RequestValidationError([{"type": "content_type", "loc": ("body",),
                                    "msg": "content-type must be application/json", "input": None}])


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
    invalid fields all become `RequestValidationError`s located under "body"; so does a key
    named twice in one object.
    """
    raw = await request.body()
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if not _is_json(request.headers.get("content-type")):
        raise content_type_error()
    token = REQUEST_JSON.set(raw)
    try:
        body = model.model_validate_json(raw)
    except ValidationError as exc:
        errors = []
        for e in exc.errors(include_url=False):
            if e["type"] == "json_invalid":  # worded by the app's handler; the input is not echoed
                e = {**e, "input": {}}
            errors.append({**e, "loc": ("body", *e["loc"])})
        raise RequestValidationError(errors) from None
    finally:
        REQUEST_JSON.reset(token)
    try:
        check_unique_keys(raw, *_model_keys(body))
    except DuplicateKeyError as exc:
        raise duplicate_key_error(exc) from None
    return body, raw


class CadenceRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        lean_handler: LeanHandler | None = getattr(self.endpoint, "__cadence_lean__", None)
        if lean_handler is not None:

            async def lean_route(request: Request) -> Response:
                return await lean_handler(request)

            return lean_route
        handler = super().get_route_handler()
        has_body = self.body_field is not None
        rate_first = _device_route(self.dependant)

        async def route_handler(request: Request) -> Response:
            if rate_first:  # 429 before the body is read, as on authorize
                _check_rate_early(request)
            fast = FastJSONRequest(request.scope, request.receive)
            if has_body:
                await _parse_ahead(fast)
            return await handler(fast)

        return route_handler


def _device_route(dependant: Any) -> bool:
    """Whether a route authenticates a device (depends on `deps.device_request`, at any depth)."""
    from server.api.deps import device_request

    stack = [dependant]
    while stack:
        d = stack.pop()
        if d.call is device_request:
            return True
        stack.extend(d.dependencies)
    return False


def _check_rate_early(request: Request) -> None:
    """The device's and the address's rate, from the headers alone (`deps.check_rate`).

    FastAPI reads and parses a body before it solves dependencies, so the `Signed` dependency's
    own check came after a flooder's body was parsed. The scope remembers this check, so the
    dependency does not charge a second look to a shared (Redis) budget.
    """
    from server.api.deps import RATE_CHECKED, bank_key_sent, check_rate, client_address
    from server.signing import HEADER_DEVICE

    state = request.app.state.cadence
    if not bank_key_sent(state, request):  # the bank reading a session is no device
        check_rate(state, request.headers.get(HEADER_DEVICE), client_address(request))
    request.scope[RATE_CHECKED] = True


async def _parse_ahead(request: FastJSONRequest) -> None:
    """Parse a JSON body before FastAPI does, so a duplicate key gets its own 422.

    FastAPI turns any other error of `Request.json` into a 400 "There was an error parsing
    the body". The parsed body is kept on the request, where FastAPI then finds it; invalid
    JSON is left for FastAPI to report as before. A body without a JSON content type is the
    422 `authorize` answers (`content_type_error`): FastAPI validated its bytes as the model and
    said "Input should be a valid dictionary", of a body that was one.
    """
    try:
        if not await request.body():
            return
    except HTTPException:  # 413 from the body limit: answered as before
        raise
    except Exception:  # a client gone mid-body: FastAPI reads it again and answers as before
        return
    if not _is_json(request.headers.get("content-type")):
        raise content_type_error()
    try:
        await request.json()
    except DuplicateKeyError as exc:
        raise duplicate_key_error(exc) from None
    except ValueError:
        return
