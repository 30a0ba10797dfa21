"""The project's exception hierarchy, in one place.

It lives in the lowest package so that `feedback_store`, `adapters` and `assistant` can all
raise these. Each class is named by what went wrong and carries no HTTP status: the server
maps classes to status codes in one table (assistant/app.py, STATUS). An error about one
input carries its name in `field` ("n", "messages[2].content"); the message then starts
with it ("n: must be ..."), and the OpenAI-compatible API reports it as the error's param.
"""

from __future__ import annotations

import re

# An absolute POSIX path of two or more parts ("/srv/data/adapters/alice/3"), where a path
# can start: never shown to API clients (it tells an attacker the server's layout).
_PATH = re.compile(r"(?:(?<=^)|(?<=[\s('\"=]))/(?:[^\s/'\"()<>]+/)+[^\s'\"()<>,;]*")


class AssistantError(Exception):
    """Base of every error this project raises on purpose."""

    def __init__(self, message: str = "", field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def public_message(exc: BaseException) -> str:
    """The error's message as an API client may see it: filesystem paths redacted."""
    return _PATH.sub("<path>", str(exc))


class ConfigError(AssistantError):
    """A configuration value is missing or invalid (names the field and value)."""


class BadRequest(AssistantError):
    """An input value is invalid: a request field, a name, a CLI option."""


class Unauthorized(AssistantError):
    """No API key, or one that is unknown or revoked."""


class Forbidden(AssistantError):
    """The caller is known but their role may not do this."""


class NotFound(AssistantError):
    """Unknown id, or one that belongs to another user (never say which)."""


class Conflict(AssistantError):
    """The request clashes with what exists (a taken name, the last admin)."""


class Gone(AssistantError):
    """What the request was about was deleted while it ran (an erase mid-answer)."""


class TooLarge(AssistantError):
    """An input is over a configured size limit."""


class TooManyRequests(AssistantError):
    """A key went over its rate limit; Retry-After says when to come back."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelError(AssistantError):
    """The base model or an adapter could not be loaded or used."""


class ServingUnavailable(AssistantError):
    """The generation service could not answer (a serving replica was lost mid-answer):
    nothing is wrong with the request or the user's adapter; asking again works."""


class TrainingError(AssistantError):
    """A training run failed; the previous adapter keeps serving."""


class InvalidData(AssistantError):
    """Data handed to the learning code is unusable: arrays of the wrong shape, an item that
    is not (messages, answer), a conversation the chat template refuses. Training reports it
    on the run; it is not about an HTTP request's fields."""
