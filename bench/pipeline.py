"""One simulated user's stages in a personalization run, run in its own thread: feedback,
training through the admin API, held-out answers; and each stage's scores from them."""

from __future__ import annotations

import argparse
import random
import threading
import time
from dataclasses import dataclass, field

from bench.feedback import explore_value, feedback_phase
from bench.harness import Api, Variant, answer_heldout, run_summary, say, train_and_wait
from bench.scoring import (
    feedback_events,
    find_accuracy,
    head_accuracy,
    routing,
    score_answers,
    texts,
)


@dataclass
class Shared:
    """State the persona threads share: one generation lane, results, timings."""

    lane: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The base is one model for everyone: its held-out answers are generated once, by the
    # first persona to evaluate (only that persona's user owns them, see head_accuracy).
    base: list[list[dict]] = field(default_factory=list)
    base_owner: str | None = None
    personal: dict[tuple[str, int], list[list[dict]]] = field(default_factory=dict)
    stage_info: dict[tuple[str, int], dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    safety: dict = field(default_factory=dict)     # --safety: eval-safety figures per user

    def time(self, name: str, started: float) -> None:
        with self.lock:
            self.seconds[name] = round(self.seconds.get(name, 0) + time.monotonic() - started, 1)


def persona_pipeline(variant: Variant, key: str, admin: Api, train_prompts: list[str],
                     heldout: list[str], points: list[int], args: argparse.Namespace,
                     shared: Shared) -> None:
    """Feedback -> train -> evaluate for each stage. Generation phases take the shared lane
    so that one persona chats while another trains (the server trains one run at a time).
    Both modes of a persona draw the same plan and seeds (rng seeded by the persona)."""
    persona = variant.persona
    api, rng = Api(str(admin.client.base_url), key), random.Random(f"{args.seed}:{persona.name}")
    done, name = 0, variant.user
    feedback_only = args.feedback_only or feedback_only_variant(variant, args)
    points = variant_points(variant, points, args)
    try:
        for stage, target in enumerate(points):
            with shared.lane:
                if stage > 0 and not feedback_only:
                    evaluate_stage(api, variant, heldout, points[stage - 1], args, shared)
                t = time.monotonic()
                say(f"{name}: feedback on prompts {done}..{target - 1}")
                fb = feedback_phase(api, persona, train_prompts[done:target], args, rng,
                                    explore_value(variant.mode, args))
                shared.time(f"feedback/{name}", t)
            done = target
            if feedback_only:
                with shared.lock:
                    shared.stage_info[(name, target)] = {"feedback": fb.summary()}
                continue
            t = time.monotonic()
            say(f"{name}: training after {target} events")
            run = run_summary(train_and_wait(admin, name, args.run_timeout))
            shared.time(f"training_wait/{name}", t)
            say(f"{name}: run {run['id']} {run['status']} ({run['decision']}) "
                f"reward {run['reward_first_quarter']} -> {run['reward_last_quarter']}"
                + (f" error: {run['error']}" if run["error"] else ""))
            me = api.call("GET", "/api/me")
            with shared.lock:
                shared.stage_info[(name, target)] = {
                    "feedback": fb.summary(), "run": run, "me_counts": me.get("counts"),
                    "reward_head": me.get("reward_head"),
                    "current_version": me.get("current_version")}
        if not feedback_only:
            with shared.lane:
                evaluate_stage(api, variant, heldout, points[-1], args, shared)
    finally:
        api.close()


def feedback_only_variant(variant: Variant, args: argparse.Namespace) -> bool:
    """--off-events: an explore-off user only measures what it is shown."""
    return bool(args.off_events) and variant.mode == "off"


def variant_points(variant: Variant, points: list[int], args: argparse.Namespace) -> list[int]:
    return [args.off_events] if feedback_only_variant(variant, args) else points


def evaluate_stage(api: Api, variant: Variant, heldout: list[str], target: int,
                   args: argparse.Namespace, shared: Shared) -> None:
    """Answer the held-out prompts with this persona's adapter (and once with the base)."""
    name, persona = variant.user, variant.persona
    if shared.base_owner is None:
        t = time.monotonic()
        say(f"{name}: base answers to {len(heldout)} held-out prompts")
        shared.base = answer_heldout(api, heldout, "base", args)
        shared.base_owner = name
        shared.time("eval_base_generation", t)
    t = time.monotonic()
    say(f"{name}: personal answers to {len(heldout)} held-out prompts ({target} events)")
    answers = answer_heldout(api, heldout, "personal", args)
    with shared.lock:
        shared.personal[(name, target)] = answers
    info = shared.stage_info[(name, target)]
    info["routing"] = routing(answers, info["current_version"])
    own_base = shared.base if shared.base_owner == name else [[] for _ in heldout]
    info["heldout_head"] = head_accuracy(api, persona, answers, own_base)
    shared.time(f"eval_personal_generation/{name}", t)


def score_stage(vs: list[Variant], shared: Shared, target: int) -> dict:
    """score_answers for one stage and one mode's users, plus what the server reported."""
    personas = [v.persona for v in vs]
    own = {v.persona.name: texts(shared.personal[(v.user, target)]) for v in vs}
    scores = score_answers(personas, texts(shared.base), own)
    for v in vs:
        p, info = v.persona, shared.stage_info[(v.user, target)]
        me_acc = find_accuracy(info["reward_head"])
        held = info.get("heldout_head", {}).get("accuracy")
        scores["personas"][p.name].update({
            "reward_head_accuracy": held if held is not None else me_acc,
            "reward_head_cv_accuracy": me_acc,
            "reward_head_heldout": info.get("heldout_head"),
            "events": target,
            "feedback_events": feedback_events(info.get("me_counts")),
            "feedback": info["feedback"], "run": info["run"], "routing": info.get("routing")})
    return {"events": target, **scores}


def answers_record(vs: list[Variant], heldout: list[str], shared: Shared,
                   points: list[int]) -> dict:
    """Every held-out answer text, so a run can be re-scored (--rescore) or audited."""
    return {"heldout": heldout, "base": texts(shared.base),
            "personal": {f"{v.user}@{t}": texts(shared.personal[(v.user, t)])
                         for v in vs for t in points if (v.user, t) in shared.personal}}


def guarded(fn, shared: Shared, *args) -> None:
    """Run a persona thread; record a failure instead of losing it in the thread."""
    try:
        fn(*args)
    except Exception:
        import traceback

        traceback.print_exc()
        with shared.lock:
            shared.seconds["errors"] = shared.seconds.get("errors", 0) + 1
