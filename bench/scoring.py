"""Scores of a personalization run: held-out answers judged by every persona's hidden utility,
the reward head's agreement with the persona, and the informative-pair comparison of the
explore modes."""

from __future__ import annotations

from bench.feedback import feature_share, pair_share
from bench.harness import Api, split_user
from bench.personas import Persona


def win_rate(persona: Persona, ours: list[list[str]], base: list[list[str]]) -> float:
    """Share of (ours, base) answer pairs to the same prompt where ours has the higher
    utility, ties counting half; averaged per prompt, then over prompts."""
    per_prompt = []
    for mine, theirs in zip(ours, base, strict=True):
        us = [persona.utility(t) for t in mine]
        them = [persona.utility(t) for t in theirs]
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a in us for b in them]
        per_prompt.append(sum(wins) / len(wins))
    return sum(per_prompt) / len(per_prompt)


def decisive(persona: Persona, ours: list[list[str]], base: list[list[str]]) -> dict:
    """Win rate with ties excluded, and the share of (ours, base) pairs that tie."""
    wins = ties = total = 0
    for mine, theirs in zip(ours, base, strict=True):
        for a in mine:
            for b in theirs:
                ua, ub = persona.utility(a), persona.utility(b)
                total += 1
                wins += ua > ub
                ties += ua == ub
    return {"decisive_win_rate": round(wins / (total - ties), 3) if total > ties else None,
            "tie_share": round(ties / total, 3) if total else None}


def mean_utility(persona: Persona, answers: list[list[str]]) -> float:
    vals = [persona.utility(t) for group in answers for t in group]
    return sum(vals) / len(vals)


def texts(groups: list[list[dict]]) -> list[list[str]]:
    return [[c["content"] for c in g] for g in groups]


def head_accuracy(api: Api, persona: Persona, personal: list[list[dict]],
                  base: list[list[dict]]) -> dict:
    """Does the reward head order the persona's held-out answers as the persona would?

    Pairs: every (personal, base) and within-model pair to one prompt, all owned by the
    persona's user; the label is the persona's utility (exact ties skipped), the score is
    the 'reward' GET /api/messages/{id} returns (None while the server does not fill it).
    """
    agree = total = 0
    for mine, theirs in zip(personal, base, strict=True):
        group = mine + theirs
        raw = [api.call("GET", f"/api/messages/{c['id']}").get("reward") for c in group]
        # Kept only when every message has a numeric reward, so indices still match `group`.
        rewards = [r for r in raw if isinstance(r, int | float)]
        if len(rewards) != len(raw):
            return {"accuracy": None, "pairs": 0, "why": "messages carry no 'reward'"}
        utils = [persona.utility(c["content"]) for c in group]
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                if utils[a] != utils[b] and rewards[a] != rewards[b]:
                    total += 1
                    agree += (utils[a] > utils[b]) == (rewards[a] > rewards[b])
    return {"accuracy": round(agree / total, 3) if total else None, "pairs": total}


def find_accuracy(head: object) -> float | None:
    """The reward head's cross-validated accuracy from GET /api/me, wherever it is nested."""
    if isinstance(head, dict):
        for key in ("cv_accuracy", "accuracy"):
            if isinstance(head.get(key), int | float):
                return float(head[key])
        for value in head.values():
            found = find_accuracy(value)
            if found is not None:
                return found
    return None


def routing(groups: list[list[dict]], version: int | None) -> dict:
    """Did 'personal' answers come from the user's current adapter version?"""
    cands = [c for g in groups for c in g]
    hit = sum(1 for c in cands if version is not None and c.get("adapter_version") == version)
    return {"current_version": version, "answers": len(cands), "from_current_adapter": hit,
            "models": sorted({str(c.get("model")) for c in cands})}


def score_answers(personas: list[Persona], base: list[list[str]],
                  own: dict[str, list[list[str]]]) -> dict:
    """Utility-based scores of one stage's held-out answers (texts per prompt): per persona
    its win rate and utilities, the specificity matrix and the head-to-head matrix."""
    names = [p.name for p in personas]
    spec = {j.name: {n: round(win_rate(j, own[n], base), 3) for n in names} for j in personas}
    per = {p.name: {"win_rate": spec[p.name][p.name],
                    **decisive(p, own[p.name], base),
                    "liked_share_personal": feature_share(p, own[p.name]),
                    "liked_share_base": feature_share(p, base),
                    "utility_personal": round(mean_utility(p, own[p.name]), 3),
                    "utility_base": round(mean_utility(p, base), 3),
                    "words_personal": round(mean_words(own[p.name]), 1),
                    "words_base": round(mean_words(base), 1)} for p in personas}
    return {"personas": per, "specificity": spec, "head_to_head": head_to_head(personas, own)}


def head_to_head(personas: list[Persona], own: dict[str, list[list[str]]]) -> dict:
    """judge -> other -> win rate of the judge's own adapter against the other persona's
    adapter, by the judge's utility, on the same held-out prompts (ties count half)."""
    return {j.name: {o.name: round(win_rate(j, own[j.name], own[o.name]), 3)
                     for o in personas if o.name != j.name} for j in personas}


def rescore(results: dict, answers: dict, personas: list[Persona]) -> dict:
    """Recompute every utility-based figure of a finished run from its answers.json
    (a run of one explore mode; the users are named after the personas)."""
    for stage in results["rounds"]:
        own = {p.name: answers["personal"][f"{p.name}@{stage['events']}"] for p in personas}
        scores = score_answers(personas, answers["base"], own)
        for name, fresh in scores["personas"].items():
            stage["personas"][name].update(fresh)
        stage.update(specificity=scores["specificity"], head_to_head=scores["head_to_head"])
    last = results["rounds"][-1]
    for name, r in results["personas"].items():
        r.update({k: v for k, v in last["personas"][name].items() if k in r})
    results.update(specificity=last["specificity"], head_to_head=last["head_to_head"])
    return results


def feedback_events(counts: dict | None) -> int | None:
    if not counts:
        return None
    return sum(counts.get(k, 0) for k in ("thumbs_up", "thumbs_down", "comparisons",
                                          "rankings"))


def mean_words(groups: list[list[str]]) -> float:
    words = [len(t.split()) for g in groups for t in g]
    return sum(words) / len(words)


def informative_rows(summaries: dict[str, dict]) -> dict[str, dict]:
    """Per persona with both modes (user -> feedback summary): the informative-pair share
    off, with exploration over the turns the off user also had (same prompts and seeds:
    both modes draw the same plan), their ratio, and with exploration over all turns."""
    users: dict[str, dict] = {}
    for user, f in summaries.items():
        persona, mode = split_user(user)
        if mode:
            users.setdefault(persona, {})[mode] = f
    rows = {}
    for persona, m in users.items():
        if "on" not in m or "off" not in m or any("turn_pairs" not in f for f in m.values()):
            continue            # one mode only, or a results.json from before turn_pairs
        on, off = m["on"], m["off"]
        k = len(off["turn_pairs"])
        same, base = pair_share(on["turn_pairs"][:k]), off["informative_pair_share"]
        rows[persona] = {"off": base, "on_same": same, "turns_compared": k,
                         "ratio": round(same / base, 2) if same is not None and base else None,
                         "on_all": on["informative_pair_share"],
                         "on_by_block": on["informative_pair_share_by_block"]}
    return rows
