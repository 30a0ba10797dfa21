"""Typed request bodies: parse() is strict and every 400 names the field (assistant/bodies.py)."""

from __future__ import annotations

import pytest

from assistant.bodies import (
    ComparisonIn,
    NewUserIn,
    RollbackIn,
    SettingsIn,
    ThumbsIn,
    TrainIn,
    parse,
)
from feedback_store.errors import BadRequest


def bad(cls, raw) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse(cls, raw)
    return caught.value


def test_typed_fields_and_defaults():
    body = parse(ThumbsIn, {"value": "up", "reasons": ["clear"]})
    assert (body.value, body.reasons, body.comment) == ("up", ["clear"], None)
    assert parse(TrainIn, {}) == TrainIn(user=None, force=False)
    assert parse(TrainIn, {"user": "ann", "force": True, "extra": 1}).user == "ann"  # open body
    assert parse(SettingsIn, {"answer_length": "long"}).given() == {"answer_length": "long"}
    assert parse(SettingsIn, {}).given() == {}


@pytest.mark.parametrize("cls, raw, field, words", [
    (ThumbsIn, {}, "value", "required"),
    (ThumbsIn, {"value": "up", "reason": ["clear"]}, "reason", "unknown field"),
    (ThumbsIn, {"value": "up", "reasons": "clear"}, "reasons", "array"),
    (ThumbsIn, {"value": "up", "comment": 5}, "comment", "str"),
    (ComparisonIn, {"message_ids": "1,2", "choice": "a"}, "message_ids", "array"),
    (RollbackIn, {}, "version", "required"),
    (RollbackIn, {"version": 2**63}, "version", "<="),
    (RollbackIn, {"version": 0}, "version", ">="),
    (RollbackIn, {"version": 3.0}, "version", "float"),        # strict: no float for an id
    (RollbackIn, {"version": True}, "version", "bool"),
    (TrainIn, {"force": "yes"}, "force", "bool"),
    (NewUserIn, {"name": "ann", "admin": 1}, "admin", "bool"),
    (SettingsIn, {"answer_length": "huge"}, "answer_length", "short, normal, long"),
    (SettingsIn, {"answer_length": None}, "answer_length", "got None"),
    (SettingsIn, {"colour": "blue"}, "colour", "unknown field"),
    (ThumbsIn, ["up"], "body", "JSON object"),
])
def test_a_bad_body_is_a_400_naming_the_field(cls, raw, field, words):
    error = bad(cls, raw)
    assert error.field == field and str(error).startswith(f"{field}: ") and words in str(error)


def test_a_long_bad_value_is_cut_in_the_message():
    error = bad(RollbackIn, {"version": "x" * 10_000})
    assert len(str(error)) < 200
