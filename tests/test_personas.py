"""Simulated users of bench/personalize.py: hidden utility, feedback, file validation."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.personas import (
    Persona,
    PersonaError,
    load_persona,
    load_personas,
    parse_persona,
    text_features,
)

ROOT = Path(__file__).resolve().parent.parent


def persona(utility: dict, **top) -> Persona:
    data = {"name": "p", "temperature": 0.0, "thumbs_up_at": 1.0, "thumbs_down_at": -1.0,
            "utility": utility}
    data.update(top)
    return parse_persona(data)


def test_words_and_cap():
    assert text_features("one two  three\nfour")["words"] == 4
    p = persona({"words": -0.5, "words_cap": 3})
    assert p.utility("a b") == -1.0
    assert p.utility("a b c d e f") == -1.5      # capped at 3 words


def test_bullets_and_has_bullets():
    text = "Intro\n- one\n* two\n  • three\n4. four\n5) five\n**Bold** line\n---\n-nospace"
    feats = text_features(text)
    assert feats["bullets"] == 5
    assert feats["has_bullets"] == 1.0
    assert text_features("no list here")["has_bullets"] == 0.0
    p = persona({"bullets": 0.25, "has_bullets": 2.0})
    assert p.utility(text) == pytest.approx(2.0 + 5 * 0.25)
    assert p.utility("plain") == 0.0


def test_questions_exclamations_and_cap():
    assert text_features("Why? How?")["questions"] == 2
    p = persona({"exclamations": 1.0, "exclamations_cap": 2, "questions": -1.0})
    assert p.utility("Wow!!! Really?") == pytest.approx(2.0 - 1.0)
    assert persona({"exclamations": 1.0}).utility("!!!!") == 4.0


def test_phrases_case_insensitive_counted_once():
    p = persona({"phrases": {"For example": 1.5, "sorry": -2.0}})
    assert p.utility("for example, x. FOR EXAMPLE, y.") == 1.5
    assert p.utility("Sorry, for example") == pytest.approx(-0.5)
    assert p.utility("nothing") == 0.0


def test_thumbs_thresholds_with_no_vote_between():
    p = persona({"words": 1.0}, thumbs_up_at=3.0, thumbs_down_at=1.0)
    assert p.thumb("a b c") == "up"          # == up threshold counts as up
    assert p.thumb("a b c d") == "up"
    assert p.thumb("a b") is None            # strictly between: no vote
    assert p.thumb("a") == "down"            # == down threshold counts as down
    assert p.thumb("") == "down"


def test_bradley_terry_temperature_zero_is_deterministic():
    p = persona({"words": -1.0})
    rng = random.Random(0)
    assert all(p.compare("short", "a much longer answer", rng) == "a" for _ in range(50))
    assert all(p.compare("a much longer answer", "short", rng) == "b" for _ in range(50))


def test_bradley_terry_with_temperature_follows_sigmoid():
    p = persona({"words": -1.0}, temperature=1.0)
    rng = random.Random(1)
    picks = [p.compare("a", "a b", rng) for _ in range(4000)]
    share = picks.count("a") / len(picks)
    assert share == pytest.approx(1 / (1 + 2.718281828 ** -1), abs=0.03)   # sigmoid(1)


def test_ranking_by_utility():
    p = persona({"words": -1.0})
    assert p.rank(["a b c", "a", "a b"], random.Random(0)) == [1, 2, 0]
    orders = {tuple(p.rank(["x", "y"], random.Random(s))) for s in range(20)}
    assert orders == {(0, 1), (1, 0)}        # equal utility: ties broken at random


def test_unknown_keys_are_errors():
    with pytest.raises(PersonaError, match="colour"):
        persona({"words": -1.0}, colour="red")
    with pytest.raises(PersonaError, match="word"):
        persona({"word": -1.0})              # a misspelt feature must not be ignored
    with pytest.raises(PersonaError, match="missing key 'temperature'"):
        parse_persona({"name": "x", "thumbs_up_at": 1, "thumbs_down_at": 0})
    with pytest.raises(PersonaError, match="must be a number"):
        persona({"words": "many"})


def test_load_folder(tmp_path):
    (tmp_path / "a.toml").write_text(
        'name = "a"\ndescription = "d"\ntemperature = 0.5\nthumbs_up_at = -1.0\n'
        'thumbs_down_at = -3.0\n\n[utility]\nwords = -0.05\nwords_cap = 200\n\n'
        '[utility.phrases]\n"for example" = 1.0\n')
    (tmp_path / "b.toml").write_text(
        'name = "b"\ntemperature = 0\nthumbs_up_at = 1\nthumbs_down_at = 0\n')
    a, b = load_personas(tmp_path)
    assert (a.name, b.name) == ("a", "b")
    assert a.caps == {"words": 200} and a.phrases == {"for example": 1.0}
    assert b.utility("anything at all") == 0.0
    (tmp_path / "c.toml").write_text('name = "a"\ntemperature = 0\nthumbs_up_at = 1\n'
                                     'thumbs_down_at = 0\n')
    with pytest.raises(PersonaError, match="used twice"):
        load_personas(tmp_path)


def test_shared_personas_load():
    folder = ROOT.parent / "shared" / "personas"
    if not folder.is_dir():
        pytest.skip("no shared personas on this machine")
    for path in folder.glob("*.toml"):
        assert load_persona(path).name
