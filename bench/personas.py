"""Simulated users for the personalization benchmark (format: ../shared/personas/README.md).

A persona scores an answer with a hidden utility, a weighted sum of text features, and turns
it into feedback: Bradley-Terry pairwise picks, utility rankings, thresholded thumbs. The
benchmark treats persona files purely as data, so any file in this format works.
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

TOP_KEYS = {"name", "description", "temperature", "thumbs_up_at", "thumbs_down_at", "utility"}
REQUIRED_KEYS = {"name", "temperature", "thumbs_up_at", "thumbs_down_at"}
WEIGHT_KEYS = ("words", "bullets", "has_bullets", "questions", "exclamations")
CAP_KEYS = ("words_cap", "exclamations_cap")
UTILITY_KEYS = {*WEIGHT_KEYS, *CAP_KEYS, "phrases"}

# A list line: "-", "*", "•" or "N." / "N)" followed by whitespace (or the line's end), after
# optional indentation. Requiring the space is Markdown's own list rule; without it every
# "**Bold heading**" line and every "---" rule would count as a bullet.
BULLET_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])(?:\s|$)")


class PersonaError(ValueError):
    """A persona file that does not follow the format (names the file and the key)."""


@dataclass(frozen=True)
class Persona:
    name: str
    temperature: float
    thumbs_up_at: float
    thumbs_down_at: float
    weights: dict[str, float] = field(default_factory=dict)   # feature -> weight
    caps: dict[str, int] = field(default_factory=dict)        # "words"/"exclamations" -> cap
    phrases: dict[str, float] = field(default_factory=dict)   # lower-cased phrase -> weight
    description: str = ""

    def features(self, text: str) -> dict[str, float]:
        """Feature values of one answer, caps applied."""
        return text_features(text, self.caps)

    def utility(self, text: str) -> float:
        feats = self.features(text)
        u = sum(w * feats[k] for k, w in self.weights.items())
        lower = text.lower()
        # Each phrase counts once, however often it occurs.
        return u + sum(w for phrase, w in self.phrases.items() if phrase in lower)

    def prefers_first(self, u_a: float, u_b: float, rng: random.Random) -> bool:
        """Bradley-Terry choice: A with probability sigmoid((u_a - u_b) / temperature)."""
        if self.temperature <= 0:
            return u_a > u_b if u_a != u_b else rng.random() < 0.5
        return rng.random() < sigmoid((u_a - u_b) / self.temperature)

    def compare(self, a: str, b: str, rng: random.Random) -> str:
        """'a' or 'b' for two answer texts (a deterministic persona splits exact ties at
        random: the README only defines temperature 0 as "prefers the higher utility")."""
        return "a" if self.prefers_first(self.utility(a), self.utility(b), rng) else "b"

    def rank(self, texts: list[str], rng: random.Random) -> list[int]:
        """Indices of `texts` best first, by utility, ties broken at random."""
        keyed = [(-self.utility(t), rng.random(), i) for i, t in enumerate(texts)]
        return [i for _, _, i in sorted(keyed)]

    def thumb(self, text: str) -> str | None:
        """'up', 'down', or None (no vote) between the two thresholds."""
        u = self.utility(text)
        if u >= self.thumbs_up_at:
            return "up"
        if u <= self.thumbs_down_at:
            return "down"
        return None


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def text_features(text: str, caps: dict[str, int] | None = None) -> dict[str, float]:
    caps = caps or {}
    lines = text.splitlines()
    bullets = sum(1 for line in lines if BULLET_LINE.match(line))
    words = len(text.split())
    exclamations = text.count("!")
    if "words" in caps:
        words = min(words, caps["words"])
    if "exclamations" in caps:
        exclamations = min(exclamations, caps["exclamations"])
    return {"words": float(words), "bullets": float(bullets),
            "has_bullets": 1.0 if bullets else 0.0, "questions": float(text.count("?")),
            "exclamations": float(exclamations)}


# ---- loading ------------------------------------------------------------------------------

def _number(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PersonaError(f"{where}: must be a number; got {value!r}")
    return float(value)


def _cap(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PersonaError(f"{where}: must be a non-negative integer; got {value!r}")
    return value


def _unknown(where: str, keys: set[str], allowed: set[str]) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise PersonaError(f"{where}: unknown key {extra[0]!r}; expected one of "
                           f"{', '.join(sorted(allowed))}")


def parse_persona(data: dict, where: str = "persona") -> Persona:
    """Validate a parsed TOML table; unknown keys are an error, as the format says."""
    _unknown(where, set(data), TOP_KEYS)
    missing = sorted(REQUIRED_KEYS - set(data))
    if missing:
        raise PersonaError(f"{where}: missing key {missing[0]!r}")
    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise PersonaError(f"{where}: name must be a non-empty string")
    temperature = _number(f"{where}: temperature", data["temperature"])
    if temperature < 0:
        raise PersonaError(f"{where}: temperature must be >= 0; got {temperature}")
    up = _number(f"{where}: thumbs_up_at", data["thumbs_up_at"])
    down = _number(f"{where}: thumbs_down_at", data["thumbs_down_at"])
    if down > up:
        raise PersonaError(f"{where}: thumbs_down_at ({down}) is above thumbs_up_at ({up})")
    utility = data.get("utility", {})
    if not isinstance(utility, dict):
        raise PersonaError(f"{where}: [utility] must be a table")
    _unknown(f"{where}: [utility]", set(utility), UTILITY_KEYS)
    weights = {k: _number(f"{where}: utility.{k}", utility[k])
               for k in WEIGHT_KEYS if k in utility}
    caps = {k.removesuffix("_cap"): _cap(f"{where}: utility.{k}", utility[k])
            for k in CAP_KEYS if k in utility}
    phrases = utility.get("phrases", {})
    if not isinstance(phrases, dict):
        raise PersonaError(f"{where}: [utility.phrases] must be a table")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise PersonaError(f"{where}: description must be a string")
    return Persona(name=name, temperature=temperature, thumbs_up_at=up, thumbs_down_at=down,
                   weights=weights, caps=caps, description=description,
                   phrases={p.lower(): _number(f"{where}: utility.phrases.{p!r}", w)
                            for p, w in phrases.items()})


def load_persona(path: Path) -> Persona:
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PersonaError(f"{path}: not valid TOML: {exc}") from exc
    return parse_persona(data, str(path))


def load_personas(folder: Path) -> list[Persona]:
    """Every *.toml in `folder`, sorted by file name; names must be unique."""
    files = sorted(Path(folder).glob("*.toml"))
    if not files:
        raise PersonaError(f"{folder}: no persona files (*.toml)")
    personas = [load_persona(f) for f in files]
    names = [p.name for p in personas]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PersonaError(f"{folder}: persona name {dupes[0]!r} is used twice")
    return personas
