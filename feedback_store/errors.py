"""The project's exception hierarchy, in one place.

It lives in the lowest package so that `feedback_store`, `adapters` and `assistant` can all
raise these; the server translates them to HTTP in one handler (assistant/app.py).
"""

from __future__ import annotations

import re

# An absolute POSIX path of two or more parts ("/srv/data/adapters/alice/3"), where a path
# can start: never shown to API clients (it tells an attacker the server's layout).
_PATH = re.compile(r"(?:(?<=^)|(?<=[\s('\"=]))/(?:[^\s/'\"()<>]+/)+[^\s'\"()<>,;]*")


class AssistantError(Exception):
    """Base of every error this project raises on purpose."""

    status = 500
    headers: dict[str, str] | None = None   # extra HTTP headers for the answer


def public_message(exc: BaseException) -> str:
    """The error's message as an API client may see it: filesystem paths redacted."""
    return _PATH.sub("<path>", str(exc))


class ConfigError(AssistantError):
    """A configuration value is missing or invalid (names the field and value)."""


class BadRequest(AssistantError):
    """The request is well-formed JSON but asks for something invalid."""

    status = 400


class Unauthorized(AssistantError):
    status = 401


class Forbidden(AssistantError):
    status = 403


class NotFound(AssistantError):
    """Unknown id, or one that belongs to another user (never say which)."""

    status = 404


class Conflict(AssistantError):
    status = 409


class Gone(AssistantError):
    """What the request was about was deleted while it ran (an erase mid-answer)."""

    status = 410


class TooLarge(AssistantError):
    status = 413


class TooManyRequests(AssistantError):
    """A key went over its rate limit; Retry-After says when to come back."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class ModelError(AssistantError):
    """The base model or an adapter could not be loaded or used."""


class TrainingError(AssistantError):
    """A training run failed; the previous adapter keeps serving."""
