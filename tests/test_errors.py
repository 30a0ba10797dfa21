"""Errors named by what went wrong, mapped to HTTP in one place (issue 15, item 4).

Domain errors (feedback_store/errors.py) carry a `field` and no status; assistant/http_errors
maps them; training code raises no HTTP error. Over HTTP (the field in 4xx bodies, OpenAI's
param, error events of both streams): tests/test_hardening.py.
"""

from __future__ import annotations

import pytest

from assistant.http_errors import headers_of, status_of
from feedback_store import errors
from feedback_store.errors import (
    AssistantError,
    BadRequest,
    InvalidData,
    ModelError,
    NotFound,
    TooManyRequests,
)

# ---- the domain errors and the one map ---------------------------------------------------------

def test_domain_errors_know_no_http_status():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, AssistantError)]
    assert len(classes) > 10
    assert not [c.__name__ for c in classes if "status" in vars(c) or "headers" in vars(c)]


def test_field_prefixes_the_message_and_is_kept():
    exc = BadRequest("must be an integer from 1 to 8; got 0", field="n")
    assert str(exc) == "n: must be an integer from 1 to 8; got 0" and exc.field == "n"
    assert BadRequest("no field here").field is None


def test_status_map():
    assert status_of(BadRequest("x")) == 400 and status_of(NotFound("x")) == 404
    assert status_of(TooManyRequests("slow down", 7)) == 429
    assert headers_of(TooManyRequests("slow down", 7)) == {"Retry-After": "7"}
    assert status_of(ModelError("x")) == 500 and status_of(RuntimeError("x")) == 500


def test_learning_code_raises_invalid_data_not_an_http_error(tokenizer):
    from adapters import features

    with pytest.raises(InvalidData) as caught:
        features.render(tokenizer, "not a list of messages", "answer")
    assert not isinstance(caught.value, BadRequest)
