"""Errors -> HTTP: the one table from the project's errors (feedback_store/errors.py, named by
what went wrong) to status codes and headers, as httpx maps transport errors in one place.

The app's exception handlers (assistant/app.py), the OpenAI-compatible handler and both
streaming endpoints (whose status goes into an error event once headers are sent) all ask
here; nothing below the server knows about HTTP.
"""

from __future__ import annotations

from feedback_store.errors import (
    AssistantError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    InvalidData,
    NotFound,
    ServingUnavailable,
    TooLarge,
    TooManyRequests,
    Unauthorized,
)

STATUS: dict[type[AssistantError], int] = {
    BadRequest: 400,
    InvalidData: 400,     # data the learning code cannot use, reached from a request
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    TooLarge: 413,
    TooManyRequests: 429,
    ServingUnavailable: 503,    # a replica was lost: retry
}


def status_of(exc: BaseException) -> int:
    """The status for an error: its class's (or nearest base's) entry, else 500."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def headers_of(exc: BaseException) -> dict[str, str] | None:
    """Extra headers an error's answer carries (Retry-After for a rate limit)."""
    if isinstance(exc, TooManyRequests):
        return {"Retry-After": str(exc.retry_after)}
    return None
