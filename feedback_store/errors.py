"""The project's exception hierarchy, in one place.

It lives in the lowest package so that `feedback_store`, `adapters` and `assistant` can all
raise these; the server translates them to HTTP in one handler (assistant/app.py).
"""

from __future__ import annotations


class AssistantError(Exception):
    """Base of every error this project raises on purpose."""

    status = 500


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


class TooLarge(AssistantError):
    status = 413


class ModelError(AssistantError):
    """The base model or an adapter could not be loaded or used."""


class TrainingError(AssistantError):
    """A training run failed; the previous adapter keeps serving."""
