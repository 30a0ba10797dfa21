"""Exploration on comparison turns: generate a pool from different sources, show the most
informative pair or triple.

Why: a person's comparisons teach their reward head only where the shown answers differ in
what they care about. The default answers (one adapter, one temperature) rarely differ in
tone, examples, a closing question or a summary line, so such tastes were never learned
(issue 14: 1 and 8 of ~36 pairs differed in the liked feature). On a comparison turn
(n >= 2) we therefore generate `explore.pool` candidates, one GenRequest per candidate,
submitted together so the engine decodes them as one batch, from deliberately different
sources:

- personal: the user's serving adapter (what plain chat would answer; exploitation);
- base: the shared base without adapter;
- previous: the user's previous adapter version;
- hot: the user's adapter at explore.hot_temperature;
- arm: the user's adapter with a generic style instruction (explore.arms, parsed in
  assistant/arms.py) as a system message, plus a one-turn demonstration exchange when the
  arm has one, and an answer opening and/or closing cue when it has them (a 135M base barely
  follows instructions alone and rarely shows a demonstrated feature; an opening shows it by
  construction, a bigger base needs none of them);
- peer: another user's promoted adapter ("the population is a library of styles"). Only its
  weights are used; the text it generates answers this user's prompt and is this user's.

Then `select` picks the candidates to show:

- uncertainty: double Thompson sampling over the user's bootstrap ensemble head
  (Dwaracherla et al. 2024, "Efficient Exploration for LLMs"): the first answer is the
  argmax of one sampled member, the second the argmax of another member among the rest; a
  third maximizes the ensemble's disagreement about its preference against those shown;
- contrast: while the head has few pairs (or none) its uncertainty means little, so show the
  user's own answer against the candidate(s) whose source (a style arm, the base, a peer...)
  wins a Thompson draw from this user's record of choices between sources;
- diversity: the pair farthest apart in the head's frozen feature space (then the farthest
  third). Measured in issue 14: it mostly contrasts length and layout;
- random: uniform, the baseline to compare against ("random is hard to beat").

Training sees only what the person saw: candidates are stored with the conversation's
visible messages (the style instruction and demonstration exist only in the GenRequest) and
the answer as shown (an arm's opening and closing included, as the model's own words), so
DPO and RL distill a liked style into the adapter. Unshown candidates are not stored.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from assistant.arms import Arm, parse_arms  # noqa: F401  (parse_arms: explore's callers')
from assistant.engine import AdapterRef, GenRequest, GenResult
from assistant.sampling import row_seed
from feedback_store.training_data import source_label

SELECTIONS = ("random", "contrast", "uncertainty", "diversity")


@dataclass(frozen=True)
class Slot:
    """How one pool candidate is produced (its provenance)."""

    source: str                     # personal | base | previous | hot | arm | peer
    adapter: AdapterRef | None
    temperature: float
    arm: Arm | None = None
    draw: float = 0.0               # its source's Thompson draw this turn (plan_pool)


def arm_messages(messages: list[dict], arm: Arm, demo_question: str) -> list[dict]:
    """The visible messages with the arm's instruction added to the system message and its
    demonstration exchange placed before the conversation's turns."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    text = f"{system[0]['content']}\n\n{arm.instruction}" if system else arm.instruction
    demo = ([{"role": "user", "content": demo_question},
             {"role": "assistant", "content": arm.demo}] if arm.demo else [])
    return [{"role": "system", "content": text}, *demo, *turns]


@dataclass(frozen=True)
class Sources:
    """What the pool can draw on for this user right now."""

    personal: AdapterRef | None
    previous: AdapterRef | None = None
    peers: tuple[AdapterRef, ...] = ()


def _label(slot: Slot) -> str:
    """The slot's name in the user's record (feedback_store's source_preferences)."""
    return source_label(slot.source, slot.arm.name if slot.arm else None)


def thompson_draws(labels: list[str], record: dict[str, dict],
                   rng: random.Random) -> dict[str, float]:
    """One draw per label of the probability that its answer beats the answer it is
    compared with: theta ~ Beta(1 + won, 1 + lost) over this user's past choices (Thompson
    sampling; Russo et al. 2018, "A Tutorial on Thompson Sampling"). An untried label draws
    from the uniform prior, so every style keeps being tried until the user's choices say
    it loses; a style the user keeps choosing is drawn high and shown more."""
    draws = {}
    for label in dict.fromkeys(labels):
        entry = record.get(label) or {}
        draws[label] = rng.betavariate(1 + entry.get("won", 0), 1 + entry.get("lost", 0))
    return draws


def plan_pool(pool: int, sources: tuple[str, ...], have: Sources, arms: list[Arm],
              temperature: float, hot_temperature: float, rng: random.Random,
              record: dict[str, dict] | None = None) -> list[Slot]:
    """`pool` slots: the user's own answer first, then the available options of the
    configured sources (every style arm, every peer, base, hot, previous) ranked by a
    Thompson draw from the user's record (`thompson_draws`; with no record every draw comes
    from the prior, i.e. a random order). A source listed k times fills at most k slots;
    when the options run out the rest are more of the user's own answers."""
    slots = [Slot("personal", have.personal, temperature)]
    options = _options(sources, have, arms, temperature, hot_temperature, rng)
    draws = thompson_draws([_label(o) for o in options], record or {}, rng)
    options = sorted((replace(o, draw=draws[_label(o)]) for o in options),
                     key=lambda o: -o.draw)
    room = {s: sources.count(s) for s in sources}
    for option in options:
        if len(slots) >= pool:
            break
        if room[option.source] > 0:
            room[option.source] -= 1
            slots.append(option)
    while len(slots) < pool:                # nothing else available: more of the user's own
        slots.append(Slot("personal", have.personal, temperature))
    return slots


def _options(sources: tuple[str, ...], have: Sources, arms: list[Arm], temperature: float,
             hot: float, rng: random.Random) -> list[Slot]:
    """Every slot the configured sources could fill for this user, in a random order (ties
    between equal draws, e.g. two peers, fall randomly)."""
    found: list[Slot] = []
    if "base" in sources:
        found.append(Slot("base", None, temperature))
    if "hot" in sources:
        found.append(Slot("hot", have.personal, hot))
    if "previous" in sources and have.previous is not None:
        found.append(Slot("previous", have.previous, temperature))
    if "arm" in sources:
        found += [Slot("arm", have.personal, temperature, arm) for arm in arms]
    if "peer" in sources:
        found += [Slot("peer", peer, temperature) for peer in have.peers]
    rng.shuffle(found)
    return found


def pool_requests(gen: GenRequest, slots: list[Slot], demo_question: str) -> list[GenRequest]:
    """One single-candidate GenRequest per slot, sharing the turn's other settings; an arm's
    slot adds its instruction and demonstration to the messages and its opening and closing
    to the request (the engine decodes rows with different openings in one batch)."""
    reqs = []
    for i, slot in enumerate(slots):
        arm = slot.arm
        messages = arm_messages(gen.messages, arm, demo_question) if arm else gen.messages
        reqs.append(replace(gen, messages=messages, n=1, temperature=slot.temperature,
                            adapter=slot.adapter,
                            seed=None if gen.seed is None else row_seed(gen.seed, i),
                            opening=arm.opening if arm else "",
                            closing=arm.closing_cue if arm else ""))
    return reqs


async def generate_pool(engine, reqs: list[GenRequest]) -> list[GenResult | BaseException]:
    """Submit every request before awaiting any, so the engine decodes them as one batch;
    a request whose adapter failed to load comes back as its exception."""
    futures = [asyncio.wrap_future(engine.submit(r)) for r in reqs]
    return list(await asyncio.gather(*futures, return_exceptions=True))


# ---- selection -----------------------------------------------------------------------------

def adds_to_its_cues(arm: Arm | None, text: str) -> bool:
    """Does the answer say anything beyond its arm's opening and closing? On the 135M base
    a forced opening is sometimes followed by the end of the answer at once (a bare
    "Certainly."): shown, it wins on brevity with users who like short answers and teaches
    the adapter to answer with the cue alone."""
    if arm is None:
        return True
    rest = text.strip()
    for cue in (arm.opening.strip(), arm.closing.strip()):
        if cue:
            rest = rest.replace(cue, "", 1)
    return any(ch.isalnum() for ch in rest)


def select(n: int, mode: str, rng: random.Random, X: np.ndarray | None = None,
           ensemble=None, draws: list[float] | None = None) -> list[int]:
    """Indices of the n candidates to show, in pool order, by `mode` (SELECTIONS).

    X: (P, D) frozen features of the pool (needed by diversity and uncertainty);
    ensemble: an object with .scores(X) -> (K, P) (needed by uncertainty);
    draws: (P,) the Thompson draw of each candidate's source (needed by contrast).
    """
    size = len(X) if X is not None else len(draws) if draws is not None else None
    if mode == "contrast" and draws is not None:
        return contrast(draws, n)
    if mode == "uncertainty" and ensemble is not None and X is not None:
        return double_thompson(ensemble.scores(X), n, rng)
    if mode in ("diversity", "uncertainty") and X is not None:
        return farthest(X, n)
    return sorted(rng.sample(range(size if size is not None else n), n))


def contrast(draws: list[float], n: int) -> list[int]:
    """The user's own answer (index 0) against the n - 1 candidates whose sources drew
    highest: each shown pair asks "this style or what you get now?", the comparison that
    moves a DPO step toward a style when it wins (an anchored duel: top-two Thompson
    sampling, Russo 2016, with the incumbent as the first arm). Feature-distance pairs
    mostly contrast length and layout, which the default answers already vary in."""
    rest = sorted(range(1, len(draws)), key=lambda i: -draws[i])
    return sorted([0, *rest[:n - 1]])


def double_thompson(scores: np.ndarray, n: int, rng: random.Random) -> list[int]:
    """scores: (K, P) rewards of P candidates under K ensemble members.

    First: argmax of a sampled member. Second: argmax of another sampled member among the
    rest (Dwaracherla et al. 2024 resample until it differs; excluding the first is the same
    in one draw). Further ones: the largest ensemble std of the reward difference to the
    candidates already chosen, i.e. where the members disagree about the preference most.
    """
    k, p = scores.shape
    first = int(np.argmax(scores[rng.randrange(k)]))
    chosen = [first]
    rest = [i for i in range(p) if i != first]
    member = scores[rng.randrange(k)]
    chosen.append(max(rest, key=lambda i: member[i]))
    while len(chosen) < n:
        rest = [i for i in range(p) if i not in chosen]
        chosen.append(max(rest, key=lambda i: min(
            float(np.std(scores[:, i] - scores[:, j])) for j in chosen)))
    return sorted(chosen)


def farthest(X: np.ndarray, n: int) -> list[int]:
    """The pair at the largest distance after per-feature standardization over the pool,
    then greedily the candidate farthest from those chosen (max-min distance)."""
    Z = (X - X.mean(0)) / (X.std(0) + 1e-6)
    dist = np.linalg.norm(Z[:, None, :] - Z[None, :, :], axis=-1)       # (P, P)
    a, b = np.unravel_index(int(np.argmax(dist)), dist.shape)
    chosen = [int(a), int(b)]
    while len(chosen) < n:
        rest = [i for i in range(len(X)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: min(dist[i, j] for j in chosen)))
    return sorted(chosen)


def choose_mode(configured: str, n_pairs: int, has_ensemble: bool,
                uncertainty_from_pairs: int) -> str:
    """'auto': uncertainty once the user's ensemble head has enough pairs, else contrast."""
    if configured != "auto":
        return configured
    if has_ensemble and n_pairs >= uncertainty_from_pairs:
        return "uncertainty"
    return "contrast"


@lru_cache(maxsize=32)
def load_ensemble(path: str):
    """The bootstrap ensemble saved next to a reward head (None if that head has none)."""
    folder = Path(path) / "ensemble"
    if not folder.exists():
        return None
    try:
        from adapters.ensemble import EnsembleHead
    except ImportError:
        return None
    return EnsembleHead.load(folder)
