"""What a simulated user does on its feedback turns, and what it was shown.

A persona (bench/personas.py) chats on prompts through the HTTP API and rates the candidates
as it would (pairwise Bradley-Terry picks, rankings, thumbs); FeedbackLog records what it was
shown: informative pairs, liked features, sources, timings.
"""

from __future__ import annotations

import argparse
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench.harness import Api, chat, in_flight, seed_of
from bench.personas import Persona


@dataclass
class FeedbackLog:
    """What a persona did during one stage, for diagnosing where signal is lost."""

    prompts: int = 0
    kinds: dict[str, int] = field(default_factory=lambda: {"pairwise": 0, "ranking": 0,
                                                            "thumbs": 0})
    thumbs: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0, "none": 0})
    pair_agree: int = 0          # pairwise picks that agree with the higher utility
    pair_decided: int = 0        # pairwise picks between different utilities
    utilities: list[float] = field(default_factory=list)    # of every candidate shown
    words: list[int] = field(default_factory=list)
    adapter_versions: dict[str, int] = field(default_factory=dict)
    shown_pairs: int = 0         # every pair of answers shown together on a turn
    informative: int = 0         # ... whose utilities differ by more than the temperature
    liked: dict[str, list[int]] = field(default_factory=dict)   # feature -> [shown, with it]
    pairs_differing: dict[str, int] = field(default_factory=dict)  # feature -> shown pairs
    sources: dict[str, int] = field(default_factory=dict)       # shown answers per source
    winners: dict[str, int] = field(default_factory=dict)       # pairwise winners per source
    source_liked: dict[str, list[int]] = field(default_factory=dict)  # source -> [shown, liked]
    turn_seconds: list[float] = field(default_factory=list)
    turn_pairs: list[tuple[int, int]] = field(default_factory=list)  # (shown, informative)

    def shown(self, persona: Persona, cands: list[dict]) -> None:
        """Record one turn's shown answers: informative pairs and liked features."""
        texts_ = [c["content"] for c in cands]
        utils = [persona.utility(t) for t in texts_]
        has = [liked_features(persona, t) for t in texts_]
        for name in liked_names(persona):
            entry = self.liked.setdefault(name, [0, 0])
            entry[0] += len(cands)
            entry[1] += sum(name in h for h in has)
        before = (self.shown_pairs, self.informative)
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                self.shown_pairs += 1
                self.informative += abs(utils[i] - utils[j]) > persona.temperature
                for name in liked_names(persona):
                    if (name in has[i]) != (name in has[j]):
                        self.pairs_differing[name] = self.pairs_differing.get(name, 0) + 1
        self.turn_pairs.append((self.shown_pairs - before[0], self.informative - before[1]))
        for c, h in zip(cands, has, strict=True):
            source = f"arm:{c['arm']}" if c.get("arm") else str(c.get("source"))
            self.sources[source] = self.sources.get(source, 0) + 1
            entry = self.source_liked.setdefault(source, [0, 0])
            entry[0] += 1
            entry[1] += bool(h)

    def summary(self) -> dict:
        n = len(self.utilities)
        t = self.turn_seconds
        return {"prompts": self.prompts, "kinds": self.kinds, "thumbs": self.thumbs,
                "shown_pairs": self.shown_pairs,
                "informative_pair_share": (round(self.informative / self.shown_pairs, 3)
                                           if self.shown_pairs else None),
                "informative_pair_share_by_block": self.block_shares(20),
                "turn_pairs": [list(t) for t in self.turn_pairs],
                "liked_feature_share": {k: round(v[1] / v[0], 3) if v[0] else None
                                        for k, v in self.liked.items()},
                "pairs_differing_in_feature": self.pairs_differing,
                "shown_sources": self.sources, "pairwise_winner_sources": self.winners,
                "liked_share_by_source": {k: round(v[1] / v[0], 3)
                                          for k, v in self.source_liked.items()},
                "turn_seconds_mean": round(sum(t) / len(t), 2) if t else None,
                "pairwise_agreement": (round(self.pair_agree / self.pair_decided, 3)
                                       if self.pair_decided else None),
                "candidate_utility_mean": round(sum(self.utilities) / n, 3) if n else None,
                "candidate_words_mean": round(sum(self.words) / n, 1) if n else None,
                "candidate_adapter_versions": self.adapter_versions}


    def block_shares(self, size: int) -> list[float | None]:
        """Informative-pair share per block of `size` prompts (does exploration improve as
        the user's record grows?)."""
        return [pair_share(self.turn_pairs[i:i + size])
                for i in range(0, len(self.turn_pairs), size)]


def pair_share(turn_pairs: list) -> float | None:
    """The informative share of the pairs of some turns, each (shown, informative)."""
    shown = sum(s for s, _ in turn_pairs)
    return round(sum(k for _, k in turn_pairs) / shown, 3) if shown else None


def liked_names(persona: Persona) -> list[str]:
    """The countable features the persona likes (positive weight), plus "any" of them."""
    names = [k for k in ("bullets", "has_bullets", "questions", "exclamations")
             if persona.weights.get(k, 0) > 0]
    names += [f"phrase:{p}" for p, w in persona.phrases.items() if w > 0]
    if "bullets" in names and "has_bullets" in names:
        names.remove("bullets")             # the same lines, counted once
    return names + ["any"] if len(names) > 1 else names


def liked_features(persona: Persona, text: str) -> set[str]:
    """Which of liked_names(persona) the answer has."""
    feats, lower = persona.features(text), text.lower()
    found = {k for k in liked_names(persona)
             if (k.startswith("phrase:") and k[7:] in lower)
             or (not k.startswith("phrase:") and k != "any" and feats.get(k, 0) > 0)}
    return found | ({"any"} if found else set())


def feature_share(persona: Persona, groups: list[list[str]]) -> dict[str, float | None]:
    """Share of answers with each liked feature."""
    answers = [t for g in groups for t in g]
    return {k: round(sum(k in liked_features(persona, t) for t in answers) / len(answers), 3)
            if answers else None for k in liked_names(persona)}


def pick_kind(mix: dict[str, float], rng: random.Random) -> str:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def give_feedback(api: Api, persona: Persona, cands: list[dict], kind: str,
                  rng: random.Random, log: FeedbackLog) -> None:
    texts = [c["content"] for c in cands]
    if kind == "pairwise":
        i, j = rng.sample(range(len(cands)), 2)
        choice = persona.compare(texts[i], texts[j], rng)
        ui, uj = persona.utility(texts[i]), persona.utility(texts[j])
        won = cands[i] if choice == "a" else cands[j]
        source = f"arm:{won['arm']}" if won.get("arm") else str(won.get("source"))
        log.winners[source] = log.winners.get(source, 0) + 1
        if ui != uj:
            log.pair_decided += 1
            log.pair_agree += (choice == "a") == (ui > uj)
        api.call("POST", "/api/comparisons",
                 {"message_ids": [cands[i]["id"], cands[j]["id"]], "choice": choice})
    elif kind == "ranking":
        order = persona.rank(texts, rng)
        api.call("POST", "/api/rankings", {"message_ids": [cands[k]["id"] for k in order]})
    else:
        # Each shown answer gets its own thumb, as in the UI; no vote between the thresholds.
        for c, text in zip(cands, texts, strict=True):
            value = persona.thumb(text)
            log.thumbs[value or "none"] += 1
            if value:
                api.call("PUT", f"/api/messages/{c['id']}/thumbs", {"value": value})
    log.kinds[kind] += 1


def feedback_phase(api: Api, persona: Persona, prompts: list[str], args: argparse.Namespace,
                   rng: random.Random, explore: object = None) -> FeedbackLog:
    """Chat on every prompt (several requests in flight, so the server batches them), then
    rate each reply in prompt order as it arrives. `explore` goes into each request."""
    log = FeedbackLog()
    plan = [(prompt, 3 if rng.random() < args.n3_share else 2, pick_kind(args.mix, rng))
            for prompt in prompts]

    def timed(step: tuple) -> list[dict]:
        t = time.monotonic()
        cands = chat(api, args, step[0], step[1], "personal",
                     seed_of(args.seed, persona.name, step[0]), explore)
        log.turn_seconds.append(time.monotonic() - t)
        return cands

    with ThreadPoolExecutor(in_flight(args.rows, 2)) as pool:
        replies = pool.map(timed, plan)
        for (_, _, kind), cands in zip(plan, replies, strict=True):
            log.shown(persona, cands)
            for c in cands:
                log.utilities.append(persona.utility(c["content"]))
                log.words.append(len(c["content"].split()))
                version = str(c.get("adapter_version"))
                log.adapter_versions[version] = log.adapter_versions.get(version, 0) + 1
            give_feedback(api, persona, cands, kind, rng, log)
            log.prompts += 1
    return log


def explore_value(mode: str, args: argparse.Namespace) -> object:
    """What an explore-on or -off user puts in its requests."""
    return False if mode == "off" else args.selection


def turn_cost(api: Api, prompts: list[str], args: argparse.Namespace) -> dict:
    """Seconds per n=2 turn without and with exploration, sequential on an idle server, same
    prompt and seed for both, order alternating (so warm caches favour neither)."""
    times: dict[str, list[float]] = {"off": [], "on": []}
    for k, prompt in enumerate(prompts):
        order = ("off", "on") if k % 2 == 0 else ("on", "off")
        for mode in order:
            t = time.monotonic()
            chat(api, args, prompt, 2, "personal", seed_of(args.seed, "cost", prompt),
                 explore_value(mode, args) if mode == "off" else (args.selection or True))
            times[mode].append(time.monotonic() - t)
    off, on = (sum(times[m]) / len(times[m]) for m in ("off", "on"))
    return {"turns": len(prompts), "seconds_off": round(off, 2), "seconds_on": round(on, 2),
            "ratio": round(on / off, 2), "all": times}
