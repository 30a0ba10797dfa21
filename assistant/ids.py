"""Row ids in requests: range-checked in one place before they reach SQLite.

SQLite's integers are signed 64-bit; Python's are not. An id of 2**63 or more in a path, a
query or a body would otherwise reach sqlite3 and raise OverflowError (a 500). Every id of
this API is a positive row id, so anything outside 1..MAX_ID names no row.

Path and query parameters typed `int` are checked for every route by `check_request_ids`
(a `before_request` hook on the app), so a new route is covered without doing anything;
ids inside JSON bodies go through `body_id` (the chat bodies) or `bodies.Id` (typed bodies).
"""

from __future__ import annotations

import types
import typing
from functools import cache

from litestar import Request

from feedback_store.errors import BadRequest, NotFound

MAX_ID = 2**63 - 1  # the largest SQLite INTEGER
RANGE = f"ids are integers from 1 to {MAX_ID}"


def in_range(value: int) -> bool:
    return 1 <= value <= MAX_ID


def body_id(body: dict, name: str) -> int | None:
    """An optional id field of a JSON body: None, or an integer in range (else 400)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"must be an integer; got {value!r}", field=name)
    if not in_range(value):
        raise BadRequest(f"{value} is not an id ({RANGE})", field=name)
    return value


def _is_int(annotation: object) -> bool:
    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and int in typing.get_args(annotation)


@cache
def _query_ints(handler: object) -> tuple[str, ...]:
    """The query-string names of a handler's int parameters (its path ints come typed)."""
    names = []
    for name, field in handler.parsed_fn_signature.parameters.items():  # type: ignore[attr-defined]
        kwarg = field.kwarg_definition
        if not _is_int(field.annotation) or getattr(kwarg, "header", None) \
                or getattr(kwarg, "cookie", None):
            continue
        names.append(getattr(kwarg, "query", None) or name)
    return tuple(names)


def check_request_ids(request: Request) -> None:
    """404 for a path id no row can have, 400 for such a query id, naming the parameter."""
    for name, value in request.path_params.items():
        if isinstance(value, int) and not in_range(value):
            raise NotFound(f"{value} not found ({RANGE})", field=name)
    for name in _query_ints(request.route_handler):
        raw = request.query_params.get(name)
        try:
            value = int(raw) if raw is not None else None
        except ValueError:
            continue            # not an integer: Litestar's own validation answers 400
        if value is not None and not in_range(value):
            raise BadRequest(f"{value} is not an id ({RANGE})", field=name)


def document_id_ranges(openapi: object) -> None:
    """Give every integer path and query parameter of the OpenAPI document the id range the
    hook enforces, so the contract says it (and the fuzz tries just past both ends)."""
    from litestar.openapi.spec import OpenAPIType

    for item in (openapi.paths or {}).values():                 # type: ignore[attr-defined]
        for op in (getattr(item, m, None) for m in ("get", "put", "post", "delete", "patch")):
            for param in (op.parameters or []) if op else []:
                schema = getattr(param, "schema", None)
                for s in [schema, *(getattr(schema, "one_of", None) or [])]:
                    if getattr(s, "type", None) == OpenAPIType.INTEGER:
                        s.minimum, s.maximum = 1, MAX_ID
