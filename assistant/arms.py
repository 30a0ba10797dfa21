"""Style arms: the one place config.toml's `[explore] arms` entries are parsed and checked.

An entry is fields separated by "|":

    name | instruction [| demonstration] [| opening: TEXT] [| closing: TEXT]

- name: a generic style (letters, digits, "-", "_"); provenance records it as "arm:<name>";
- instruction: added to the system message;
- demonstration: an answer shown as an earlier exchange (to explore.demo_question);
- opening: the answer starts with this text and the model continues it (an answer prefix).
  The shown and stored answer is the opening plus the continuation, so training, which sees
  the visible prompt and the shown answer only, distills the style into the adapter;
- closing: when the answer would end (its end of sequence, or its token budget minus
  CLOSING_RESERVE), a new paragraph starting with this text is appended and the model
  finishes it (a closing question, a summary line).

Why openings and closings: on SmolLM2-135M an instruction, even with a demonstration,
rarely shows its feature in the answer (last measured: "!" in 1 of 13 answers of the
enthusiastic arm, a summary line in 1 of 11); a forced opening shows it by construction,
and the continuation is the model's own. Keyed fields ("opening:", "closing:") may come in
any order after the instruction; entries without them (the old three-field form) keep their
meaning. No field holds a "|".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
KEYS = ("opening", "closing")
FORMAT = "name | instruction [| demonstration] [| opening: TEXT] [| closing: TEXT]"
# Tokens kept for a closing when the answer reaches its token budget without ending: the
# closing's own tokens plus what the model writes after them (a short sentence is ~12-20
# tokens). Answers that end by themselves get their closing with whatever budget is left.
CLOSING_RESERVE = 24


@dataclass(frozen=True)
class Arm:
    """A generic style: an instruction, and optionally a demonstration answer, an opening
    the answer starts with and a closing cue appended where the answer would end."""

    name: str
    instruction: str
    demo: str | None = None
    opening: str = ""
    closing: str = ""

    @property
    def closing_cue(self) -> str:
        """The text appended where the answer would end: the closing as a new paragraph."""
        return f"\n\n{self.closing}" if self.closing else ""


class ArmError(ValueError):
    """An arm entry that does not follow FORMAT; `field` names the offending field."""

    def __init__(self, entry: str, field: str, why: str) -> None:
        super().__init__(f"{field}: {why} (format: {FORMAT})")
        self.entry, self.field, self.why = entry, field, why


def parse_arm(entry: str) -> Arm:
    """One entry -> Arm, or ArmError naming the field that is wrong."""
    if not isinstance(entry, str):
        raise ArmError(repr(entry), "entry", "must be a string")
    parts = [p.strip() for p in entry.split("|")]
    if len(parts) < 2:
        raise ArmError(entry, "instruction", "missing: an arm is at least 'name | instruction'")
    name, instruction, rest = parts[0], parts[1], parts[2:]
    if not NAME.match(name):
        raise ArmError(entry, "name", f"{name!r} must be 1-40 letters, digits, '-' or '_'")
    if not instruction:
        raise ArmError(entry, "instruction", "must not be empty")
    keyed: dict[str, str] = {}
    demos: list[str] = []
    for part in rest:
        key, sep, value = part.partition(":")
        if sep and key.strip() in KEYS:
            field = key.strip()
            if field in keyed:
                raise ArmError(entry, field, "given twice")
            if not value.strip():
                raise ArmError(entry, field, "must not be empty")
            keyed[field] = value.strip()
        elif demos:
            raise ArmError(entry, "demonstration", "given twice (a field that is not "
                           "'opening: ...' or 'closing: ...' is the demonstration)")
        elif not part:
            raise ArmError(entry, "demonstration", "must not be empty")
        else:
            demos.append(part)
    return Arm(name, instruction, demos[0] if demos else None,
               keyed.get("opening", ""), keyed.get("closing", ""))


def parse_arms(entries: tuple[str, ...] | list[str]) -> list[Arm]:
    """Every entry parsed; arm names must be unique (they key the user's record)."""
    arms = [parse_arm(e) for e in entries]
    names = [a.name for a in arms]
    for arm in arms:
        if names.count(arm.name) > 1:
            raise ArmError(arm.name, "name", f"{arm.name!r} is used by two arms")
    return arms
