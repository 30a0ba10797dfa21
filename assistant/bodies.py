"""Typed request bodies (msgspec Structs) and the thin layer that parses JSON into them.

Handlers take the JSON object (documented for OpenAPI by assistant/api_docs.py) and call
`parse(Body, data)` first, so everything after works on typed fields. Litestar could decode
into the Struct itself, but its 400 says only "Validation failed for POST /api/..." and keys
a missing or unknown field as `data`, and it accepts 1.0 for an int; this layer is strict
and names the field in every 400 ("value: required"), as the rest of the API does.

What a type cannot say (a reason outside the vocabulary, ids of one turn, ties in a ranking,
the user-name rule) stays with the domain checks in feedback_store, which name the field too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec

from assistant.ids import MAX_ID
from feedback_store.errors import BadRequest

S = TypeVar("S", bound=msgspec.Struct)
Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]   # a row id SQLite can hold
REPR_CHARS = 60         # a bad value is echoed in the message, cut to this many characters


class ThumbsIn(msgspec.Struct, forbid_unknown_fields=True):
    value: str                       # "up" | "down": feedback.check_thumb_value names it
    reasons: list[str] | None = None
    comment: str | None = None


class ComparisonIn(msgspec.Struct, forbid_unknown_fields=True):
    # Any: feedback.check_id_list says what is wrong (count, ties, duplicates, range).
    message_ids: list[Any]
    choice: str                      # feedback.check_choice names the choices
    reasons: list[str] | None = None
    comment: str | None = None


class RankingIn(msgspec.Struct, forbid_unknown_fields=True):
    message_ids: list[Any]


class TrainIn(msgspec.Struct):
    user: str | None = None          # None: every user who is due
    force: bool = False


class RollbackIn(msgspec.Struct):
    version: Id


class NewUserIn(msgspec.Struct):
    name: Any                        # users.check_name gives the naming rule
    admin: bool = False


class TitleIn(msgspec.Struct):
    title: Any                       # conversations.rename_conversation: after the 404 check


class SettingsIn(msgspec.Struct, forbid_unknown_fields=True):
    answer_length: Literal["short", "normal", "long"] | msgspec.UnsetType = msgspec.UNSET

    def given(self) -> dict[str, Any]:
        """The settings the body sets (an absent one keeps its stored value)."""
        return {f: getattr(self, f) for f in self.__struct_fields__
                if getattr(self, f) is not msgspec.UNSET}


def parse(cls: type[S], raw: object) -> S:
    """The body as `cls`, each field converted strictly; a 400 names the first bad field."""
    if not isinstance(raw, dict):
        raise BadRequest(f"must be a JSON object; got {_shown(raw)}", field="body")
    fields = msgspec.structs.fields(cls)
    known = {f.encode_name for f in fields}
    unknown = sorted(set(raw) - known)
    if unknown and cls.__struct_config__.forbid_unknown_fields:
        raise BadRequest(f"unknown field; expected {', '.join(sorted(known))}",
                         field=str(unknown[0]))
    values = {}
    for f in fields:
        if f.encode_name in raw:
            values[f.name] = _convert(f, raw[f.encode_name])
        elif f.required:
            raise BadRequest("required", field=f.encode_name)
    return cls(**values)


def _convert(f: msgspec.structs.FieldInfo, value: object) -> Any:
    try:
        return msgspec.convert(value, f.type, strict=True)
    except msgspec.ValidationError as exc:
        raise BadRequest(_wrong(f.type, value, exc), field=f.encode_name) from exc


def _wrong(annotation: object, value: object, exc: msgspec.ValidationError) -> str:
    literals = [a for arg in (annotation, *get_args(annotation)) if get_origin(arg) is Literal
                for a in get_args(arg)]
    if literals:
        return f"must be one of {', '.join(map(str, literals))}; got {_shown(value)}"
    reason = str(exc)
    reason = reason[:1].lower() + reason[1:]      # "expected `str | null`, got `int`"
    return reason if ", got " in reason else f"{reason}; got {_shown(value)}"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= REPR_CHARS else text[:REPR_CHARS - 1] + "…"
