"""JSON bodies of the API as OpenAPI describes them (/schema/openapi.json).

Handlers take the JSON object and parse it into a typed body themselves, naming the field
in every 400 (assistant/bodies.py; the chat bodies: assistant/chat.py's TurnRequest); these
schemas document the contract, for people and for tools: the property-based fuzz
(tests/test_fuzz.py) generates its requests from them, so a field missing here is a field
the fuzz never tries.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar.params import Body

ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
ID_LIST = {"type": "array", "items": ID}
TEXT = {"type": "string"}
STOP = {"oneOf": [TEXT, {"type": "array", "items": TEXT, "maxItems": 4}]}
REASONS = {"type": "array", "items": TEXT}
SAMPLING = {
    "n": {"type": "integer", "minimum": 1}, "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1}, "stop": STOP,
    "seed": {"type": "integer"}, "stream": {"type": "boolean"},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
}
MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"enum": ["system", "developer", "user", "assistant"]},
    "content": {"oneOf": [TEXT, {"type": "array", "items": {
        "type": "object", "properties": {"type": {"const": "text"}, "text": TEXT}}}]}}}


def body(description: str, properties: dict[str, Any], required: list[str] | None = None,
         closed: bool = False) -> Any:
    """A handler's `data` annotation: a dict documented as this object."""
    schema: dict[str, Any] = {"properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return Annotated[dict, Body(description=description, schema_extra=schema)]


ChatBody = body("One chat turn: a new message (content), or regenerate: the id of an earlier "
                "user turn to answer again.", {
                    "content": TEXT, "conversation_id": ID, "regenerate": ID,
                    "model": {"enum": ["personal", "base"]}, **SAMPLING})
CompletionBody = body("OpenAI's chat.completions request.", {
    "model": {"enum": ["personal", "base"]}, "messages": {"type": "array", "items": MESSAGE},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    **SAMPLING}, ["model", "messages"])
NewUserBody = body("A new user; the answer holds their first API key.",
                   {"name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                    "admin": {"type": "boolean"}}, ["name"])
ThumbsBody = body("A thumbs up or down on an assistant answer.", {
    "value": {"enum": ["up", "down"]}, "reasons": REASONS, "comment": TEXT}, ["value"], True)
ComparisonBody = body("Which of two answers to one turn is better.", {
    "message_ids": {**ID_LIST, "minItems": 2, "maxItems": 2},
    "choice": {"enum": ["a", "b", "tie", "both_bad"]}, "reasons": REASONS, "comment": TEXT},
    ["message_ids", "choice"], True)
RankingBody = body("Three or more answers to one turn, best first.",
                   {"message_ids": {**ID_LIST, "minItems": 3}}, ["message_ids"], True)
TrainBody = body("Queue training for one user (by name) or every user due.",
                 {"user": TEXT, "force": {"type": "boolean"}})
RollbackBody = body("Serve this adapter version of the user's.", {"version": ID}, ["version"])
TitleBody = body("A conversation's new title.", {"title": TEXT}, ["title"])
SettingsBody = body("The caller's settings to change (others stay as they are). answer_length: "
                    "how long answers are when a chat request gives no max_tokens.",
                    {"answer_length": {"enum": ["short", "normal", "long"]}}, closed=True)
