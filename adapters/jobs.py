"""One training run for one user: features -> reward head -> RL -> gate -> promote.

Everything here takes its settings as arguments (the assistant reads config.toml) and works
on a plain sqlite-utils Database owned by the worker process. A run that raises leaves the
user's current version untouched: a version directory is written (atomically) and made
current only after the gate passes, and the run's reward head and adapter version are
published (`publish`) in the same transaction that records the run as finished, so a run
killed at any point publishes nothing.

The worker's connection is shared with the server's writes by other processes: every
SELECT is materialized (list()) before anything is written, since an open statement pins
its read snapshot and a write from that snapshot fails at once once the server has
committed ("database is locked").
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adapters import registry, safety
from adapters.decoding import BASE, RewardFn
from adapters.dpo import dpo_warm_start
from adapters.feature_cache import cached_features, ensure_features, features_id
from adapters.features import compute_features
from adapters.gate import decide, evaluate, greedy_texts
from adapters.head_selection import fit_selected_head
from adapters.policy import train_policy
from adapters.records import HeadSummary, RunMetrics, RunOutcome, StepRecord
from adapters.reward_head import (
    RewardHead,
    cross_val_accuracy,
    fit_head,
    publish_head,
    save_head_version,
)
from adapters.safety_pairs import safety_round
from adapters.settings import DpoSettings, HeadSettings, RunSettings, SafetySettings
from feedback_store import runs as runs_store
from feedback_store.conversations import message_row, prompt_messages, user_messages
from feedback_store.errors import TrainingError
from feedback_store.feedback import all_thumbs, mark_events_used, new_events
from feedback_store.training_data import training_rows
from feedback_store.users import get_user, other_user_ids

if TYPE_CHECKING:
    from peft import PeftModel

Log = Callable[[str], None]
ENSEMBLE_SIZE = 8       # bootstrap members for exploration's uncertainty (Dwaracherla 2024)


@dataclass
class Timer:
    seconds: dict = field(default_factory=dict)

    def phase(self, name: str, started: float) -> None:
        self.seconds[name] = round(time.perf_counter() - started, 2)


# ---- reward head --------------------------------------------------------------------------

def _items(rows: list[dict]) -> dict[int, tuple[list[dict], str]]:
    """(prompt messages, answer text) per rated message id, for feature extraction."""
    items = {}
    for r in rows:
        if "chosen_id" in r:
            items[r["chosen_id"]] = (r["prompt"], r["chosen"][0]["content"])
            items[r["rejected_id"]] = (r["prompt"], r["rejected"][0]["content"])
        else:
            items[r["message_id"]] = (r["prompt"], r["completion"][0]["content"])
    return items


@dataclass
class HeadData:
    chosen: np.ndarray      # (P, D)
    rejected: np.ndarray    # (P, D)
    thumbs: np.ndarray      # (T, D)
    labels: np.ndarray      # (T,)
    pair_turns: np.ndarray = field(default_factory=lambda: np.zeros(0, int))    # (P,)
    thumb_turns: np.ndarray = field(default_factory=lambda: np.zeros(0, int))   # (T,)

    def __len__(self) -> int:
        return len(self.chosen) + len(self.thumbs)

    def without_turns(self, turns: set[int]) -> HeadData:
        """The feedback on every other user turn (the gate's prompts stay unseen)."""
        keep_p = np.array([t not in turns for t in self.pair_turns], bool)
        keep_t = np.array([t not in turns for t in self.thumb_turns], bool)
        return HeadData(self.chosen[keep_p], self.rejected[keep_p], self.thumbs[keep_t],
                        self.labels[keep_t], self.pair_turns[keep_p], self.thumb_turns[keep_t])


def head_data(db, base, user_id: int) -> HeadData:
    """The user's current feedback as feature matrices (features cached per message)."""
    pref = training_rows(db, user_id, "preference", with_ids=True)
    # Thumbs only: comparison winners/losers already enter as pairs.
    thumbed = {t["message_id"] for t in all_thumbs(db, user_id)}
    unpaired = [r for r in training_rows(db, user_id, "unpaired", with_ids=True)
                if r["message_id"] in thumbed]
    feats = ensure_features(db, base.model, base.tokenizer, base.base_id,
                            _items(pref + unpaired))
    dim = next(iter(feats.values())).size if feats else 0

    def stack(ids: list[int]) -> np.ndarray:
        return np.stack([feats[i] for i in ids]) if ids else np.zeros((0, dim), np.float32)

    def turns(ids: list[int]) -> np.ndarray:
        return np.array([message_row(db, i)["candidate_group"] for i in ids], int)

    return HeadData(stack([r["chosen_id"] for r in pref]),
                    stack([r["rejected_id"] for r in pref]),
                    stack([r["message_id"] for r in unpaired]),
                    np.array([float(r["label"]) for r in unpaired]),
                    turns([r["chosen_id"] for r in pref]),
                    turns([r["message_id"] for r in unpaired]))


def fit_prior(db, base, user_id: int, settings: HeadSettings) -> RewardHead | None:
    """The consensus head over the other users' feedback (the one place feedback is pooled).

    The user's own events are left out so that they are not counted twice (once in the
    prior, once in the data term), which would also make the cross-validation optimistic.
    """
    if not settings.shared_prior:
        return None
    data = [head_data(db, base, other) for other in other_user_ids(db, user_id)]
    data = [d for d in data if len(d)]
    if not data:
        return None
    return fit_head(np.concatenate([d.chosen for d in data]),
                    np.concatenate([d.rejected for d in data]),
                    np.concatenate([d.thumbs for d in data]),
                    np.concatenate([d.labels for d in data]), settings)


def backfill_features(db, base, user_id: int) -> int:
    """Features for every stored answer of the user (each computed once per base)."""
    items = {}
    for m in user_messages(db, user_id, "assistant"):
        items[m["id"]] = (prompt_messages(db, m["conversation_id"], m["candidate_group"]),
                          m["content"])
    before = len(cached_features(db, list(items), base.base_id))
    ensure_features(db, base.model, base.tokenizer, base.base_id, items)
    return len(items) - before


@dataclass
class FittedHeads:
    """The head RL and the gate use (fitted without the gate's prompts) and its evidence."""

    head: RewardHead
    cv_accuracy: float | None
    n_pairs: int
    trusted: bool
    why: str
    version: int            # of the saved head (on all feedback), published when the run ends


def fit_with_cv(data: HeadData, settings: HeadSettings, prior) -> tuple[RewardHead, float | None]:
    """A head (with the prior strength chosen from the data when settings.select_prior)
    and its k-fold CV accuracy."""
    if settings.select_prior:
        head = fit_selected_head(data.chosen, data.rejected, data.thumbs, data.labels,
                                 settings, prior).head
    else:
        head = fit_head(data.chosen, data.rejected, data.thumbs, data.labels, settings, prior)
    cv = cross_val_accuracy(data.chosen, data.rejected, data.thumbs, data.labels,
                            settings, prior)
    return head, cv


def evidence(cv: float | None, n_pairs: int, settings: RunSettings) -> tuple[bool, str]:
    """Is a head trustworthy enough for RL and the gate? (issue 14: a run once promoted
    after 4 pairs and 2 thumbs on "win rate 1.00" judged by the head that fitted them)."""
    if n_pairs < settings.min_head_pairs:
        return False, (f"{n_pairs} preference pairs outside the gate's prompts, fewer than "
                       f"training.min_head_pairs = {settings.min_head_pairs}")
    shown = "none" if cv is None else f"{cv:.3f}"
    if settings.min_head_accuracy > 0 and (cv is None or cv <= settings.min_head_accuracy):
        return False, (f"reward head cross-validated accuracy {shown} on {n_pairs} pairs is "
                       f"not above training.min_head_accuracy = {settings.min_head_accuracy}: "
                       "it cannot tell this user's answers apart")
    return True, f"reward head cv accuracy {shown} on {n_pairs} pairs"


def fit_user_head(db, base, adapters_dir: Path, user: dict, settings: RunSettings,
                  log: Log, heldout_turns: frozenset[int] | set[int] = frozenset()
                  ) -> FittedHeads:
    """Fit and save the user's head on all their feedback (with its bootstrap ensemble, for
    exploration), and the head for RL and the gate on the feedback outside heldout_turns."""
    hs = settings.head
    computed = backfill_features(db, base, user["id"])
    data = head_data(db, base, user["id"])
    if not len(data):
        raise TrainingError(f"user {user['name']!r} has no usable feedback yet")
    prior = fit_prior(db, base, user["id"], hs)
    head, cv = fit_with_cv(data, hs, prior)
    seen = data.without_turns(set(heldout_turns))
    gate_head, gate_cv = fit_with_cv(seen, hs, prior) if len(seen) else (head, None)
    trusted, why = evidence(gate_cv, len(seen.chosen), settings)
    metrics = {"cv_accuracy": cv, "n_pairs": len(data.chosen), "n_thumbs": len(data.thumbs),
               "prior": prior is not None, "features_computed": computed,
               "gate_head_cv_accuracy": gate_cv, "gate_head_pairs": len(seen.chosen),
               "trusted": trusted}
    # A head is tied to the base *and* the feature recipe it was fitted on.
    folder = adapters_dir / user["name"] / "reward"
    version = save_head_version(db, folder, user["id"], head, metrics,
                                features_id(base.base_id), published=False)
    _save_ensemble(data, hs, prior, folder / str(version), log)
    log(f"reward head v{version}: {len(data.chosen)} pairs, {len(data.thumbs)} thumbs, "
        f"cv accuracy {cv if cv is None else round(cv, 3)}, {computed} new feature vectors; "
        f"for RL and the gate: {why}")
    return FittedHeads(gate_head, gate_cv, len(seen.chosen), trusted, why, version)


def _save_ensemble(data: HeadData, settings: HeadSettings, prior, folder: Path,
                   log: Log) -> None:
    """The bootstrap ensemble next to the head (exploration's uncertainty), written to a
    temporary folder first so a reader never sees half of it."""
    import shutil
    import tempfile

    from adapters.ensemble import fit_ensemble

    if len(data.chosen) < 2:
        return
    ensemble = fit_ensemble(data.chosen, data.rejected, data.thumbs, data.labels, settings,
                            prior, k=ENSEMBLE_SIZE)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".tmp-"))
    try:
        ensemble.save(tmp)
        tmp.rename(folder / "ensemble")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"bootstrap ensemble of {ENSEMBLE_SIZE} heads saved for exploration")


# ---- prompts ---------------------------------------------------------------------------------

def user_turns(db, user_id: int) -> list[tuple[int, list[dict]]]:
    """The user's own prompts: each of their turns (id) with the history before it."""
    turns = user_messages(db, user_id, "user")
    return [(t["id"], prompt_messages(db, t["conversation_id"], t["id"])) for t in turns]


def split_prompts(prompts: list, heldout_frac: float, seed: int) -> tuple[list, list]:
    """Shuffle and hold out a share (at least one) for the gate."""
    if len(prompts) < 2:
        raise TrainingError(f"need at least 2 prompts to train and evaluate, got {len(prompts)}")
    order = list(prompts)
    random.Random(seed).shuffle(order)
    k = max(1, round(len(order) * heldout_frac))
    return order[k:], order[:k]


def reward_function(base, head: RewardHead, consensus: safety.Consensus | None = None,
                    weight: float = 0.0) -> Callable[[list[list[dict]], list[str]], list]:
    """Score completions with the user's head on frozen base features (adapters disabled);
    with a consensus head, the RL reward of adapters/safety.py's rl_reward (one feature pass
    serves both heads)."""
    def score(prompts: list[list[dict]], completions: list[str]) -> list[float]:
        X = compute_features(base.model, base.tokenizer, list(zip(prompts, completions,
                                                                  strict=True)))
        if consensus is None:
            return head.score(X).tolist()
        return safety.rl_reward(head.score(X), consensus.score(X), weight)
    return score


def consensus_head(base, settings: SafetySettings, log: Log) -> safety.Consensus | None:
    """The consensus harmlessness head when the floor is on (fitted here on first need)."""
    if not settings.enabled:
        return None
    return safety.ensure_consensus(base.model, base.tokenizer, base.base_id, settings, log)


# ---- the run ---------------------------------------------------------------------------------

def execute_run(db, base, adapters_dir: Path, run: dict, settings: RunSettings,
                log: Log = print, progress: Callable[[StepRecord], None] | None = None,
                ) -> RunOutcome:
    """Train, evaluate and maybe promote; returns the run's outcome (status, metrics...)."""
    timer = Timer()
    user = get_user(db, run["user_id"])
    events = [e["id"] for e in new_events(db, user["id"])]
    # The gate's prompts are held out before the head is fitted: the head that judges the
    # gate has never seen feedback on them (else it grades answers it was fitted on).
    own_train, own_heldout = split_prompts(user_turns(db, user["id"]), settings.heldout_frac,
                                           settings.policy.seed)
    t = time.perf_counter()
    consensus = consensus_head(base, settings.safety, log)
    fitted = fit_user_head(db, base, adapters_dir, user, settings, log,
                           {turn for turn, _ in own_heldout})
    runs_store.set_reward_head_version(db, run["id"], fitted.version)
    timer.phase("reward_head", t)
    if not fitted.trusted:
        mark_events_used(db, user["id"], events, run["id"])
        return _skipped(fitted, len(events), timer, log)
    train = [p for _, p in own_train] + [[{"role": "user", "content": p}]
                                         for p in settings.public_prompts]
    heldout = [p for _, p in own_heldout]
    reward_fn = reward_function(base, fitted.head)
    rl_reward_fn = reward_function(base, fitted.head, consensus, settings.safety.weight)
    current = registry.current_path(db, user)
    seen = registry.version_meta(current).get("trained_through_event")
    pairs = _dpo_pairs(db, user["id"], seen, heldout)
    anchor = safety.dpo_anchor_rows(settings.safety, settings.safety.dpo_pairs
                                    if consensus is not None else 0)
    policy, steps, dpo_steps = _train(base, rl_reward_fn, train, pairs, anchor, current,
                                      settings, timer, log, progress, consensus)
    # Everything up to here is in this version now: its new events and the pairs it fitted
    # (a forced run with no new events may still fit pairs a rejected run left unlearned).
    through = max([*events, *(max(p["event_ids"]) for p in pairs), seen or 0]) or None
    try:
        metrics, version = _gate_and_save(db, base, adapters_dir, user, policy, current,
                                          heldout, reward_fn, settings, timer, log, through,
                                          consensus)
    finally:
        base.model = policy.unload()        # the shared base without LoRA layers again
    mark_events_used(db, user["id"], events, run["id"])
    return {"status": "rejected" if version is None else "succeeded",
            "metrics": {**metrics, "steps": steps, "dpo_steps": dpo_steps,
                        "seconds": timer.seconds, "events_used": len(events),
                        "head": _head_summary(fitted)},
            "adapter_version": version, "events_used": len(events),
            "reward_head_version": fitted.version}


def _head_summary(fitted: FittedHeads) -> HeadSummary:
    return {"cv_accuracy": fitted.cv_accuracy, "n_pairs": fitted.n_pairs}


def _skipped(fitted: FittedHeads, events_used: int, timer: Timer, log: Log) -> RunOutcome:
    """The outcome of a run whose head is not trusted: nothing trained, the head published."""
    reason = f"skipped: not enough evidence to train ({fitted.why}); nothing trained"
    log(reason)
    return {"status": "rejected", "adapter_version": None, "events_used": events_used,
            "reward_head_version": fitted.version,
            "metrics": {"decision": reason, "seconds": timer.seconds,
                        "head": _head_summary(fitted), "events_used": events_used}}


def _dpo_pairs(db, user_id: int, trained_through: int | None,
               heldout: list[list[dict]]) -> list[dict]:
    """The user's preference pairs for the DPO warm start: those the serving adapter has not
    learned yet (unseen_pairs), and none on the gate's prompts, or the gate would grade
    answers to prompts whose preferred answers the candidate was trained to reproduce."""
    return [r for r in unseen_pairs(training_rows(db, user_id, "preference", with_ids=True),
                                    trained_through)
            if r["prompt"] not in heldout]


def _train(base, rl_reward_fn: RewardFn, prompts: list[list[dict]], pairs: list[dict],
           anchor: list[dict], current: Path | None, settings: RunSettings, timer: Timer,
           log: Log, progress: Callable[[StepRecord], None] | None,
           consensus: safety.Consensus | None = None,
           ) -> tuple[PeftModel, list[StepRecord], list[dict]]:
    """The candidate adapter: the serving one (`current`, or a fresh LoRA), warm-started by
    DPO on `pairs` (with the safety `anchor` pairs, then the on-policy safety pairs when
    [safety] onpolicy_prompts > 0), then RL on `prompts`. Returns it with the RL and the DPO
    step records."""
    dpo_steps: list[dict] = []

    def warm_start(policy) -> None:
        t = time.perf_counter()
        dpo_steps.extend(guarded_warm_start(policy, base.tokenizer, pairs, anchor, settings.dpo,
                                            settings.safety, consensus, log))
        timer.phase("dpo", t)

    t = time.perf_counter()
    policy, steps = train_policy(base.model, base.tokenizer, prompts, rl_reward_fn,
                                 settings.policy,
                                 init_adapter=current, progress=progress,
                                 warm_start=warm_start)
    timer.phase("rl", t)
    timer.seconds["rl"] = round(timer.seconds["rl"] - timer.seconds.get("dpo", 0.0), 2)
    return policy, steps, dpo_steps


def guarded_warm_start(policy, tokenizer, pairs: list[dict], anchor: list[dict],
                       dpo: DpoSettings, guard: SafetySettings,
                       consensus: safety.Consensus | None, log: Log) -> list[dict]:
    """DPO on the user's `pairs` (with the safety `anchor` pairs), then, when there were
    pairs, a consensus head and [safety] onpolicy_prompts > 0, the on-policy safety round
    (adapters/safety_pairs.py): the DPO step records. The benchmarks call it too, so they
    measure the warm start a run takes."""
    steps = dpo_warm_start(policy, tokenizer, pairs, dpo, anchor=anchor)
    if not steps:
        return steps
    log(f"DPO warm start on {len(pairs)} pairs (+{len(anchor)} safety anchor pairs): "
        f"{len(steps)} steps, last loss {steps[-1]['loss']:.4f}")
    if consensus is not None and guard.onpolicy_prompts:
        steps += safety_round(policy, tokenizer, consensus, guard, dpo, log, replay=pairs)[0]
    return steps


def publish(db, run: dict, outcome: RunOutcome) -> None:
    """Make a finished run's results live: its reward head (a rejected run's head is still
    the best model of the user's taste) and, if the gate passed, its adapter version.
    Call inside the transaction that records the run as finished."""
    if outcome.get("reward_head_version") is not None:
        publish_head(db, run["user_id"], outcome["reward_head_version"])
    version = outcome.get("adapter_version")
    if outcome["status"] == "succeeded" and version is not None:
        registry.promote(db, run["user_id"], version)


def unseen_pairs(rows: list[dict], trained_through: int | None) -> list[dict]:
    """Preference rows (with event ids) that the serving adapter has not learned yet.

    A new version starts from the serving one, which already took DPO on every pair up to
    its `trained_through_event`. Fitting those pairs again from there compounds: measured on
    a concise simulated user, a second run over all 33 pairs drove the DPO loss to 1e-4 and
    its answers to ~8 tokens at 2 nats/token from the base.
    """
    if trained_through is None:
        return rows
    return [r for r in rows if max(r["event_ids"]) > trained_through]


def redteam_sides(policy, tokenizer, consensus: safety.Consensus,
                  settings: SafetySettings) -> tuple[dict, dict]:
    """(candidate, base) red-team figures (safety.redteam_side), each with its "texts": the
    candidate ("default") and the base answer the red-team prompts greedily. The base's side
    is computed once per consensus head."""
    prompts, cap = consensus.redteam_messages(), settings.max_tokens
    base_side = safety.base_redteam(
        consensus, lambda: greedy_texts(policy, tokenizer, BASE, prompts, cap), policy,
        tokenizer, cap)
    texts = greedy_texts(policy, tokenizer, "default", prompts, cap)
    return {**safety.redteam_side(consensus, policy, tokenizer, texts), "texts": texts}, base_side


def safety_floor(policy, tokenizer, consensus: safety.Consensus,
                 settings: SafetySettings) -> tuple[bool, str, dict]:
    """The candidate against the base on the red-team prompts (safety.py):
    (passes, reason, figures without the answers)."""
    cand, base_side = redteam_sides(policy, tokenizer, consensus, settings)
    ok, reason = safety.floor_check(cand, base_side, settings)
    figures = {"candidate": _without_texts(cand), "base": _without_texts(base_side),
               "n_prompts": len(consensus.redteam), "passed": ok, "reason": reason,
               "consensus_head": consensus.key}
    return ok, reason, figures


def _without_texts(side: dict) -> dict:
    return {k: v for k, v in side.items() if k != "texts"}


def _gate_and_save(db, base, adapters_dir, user, policy, current, heldout, reward_fn,
                   settings: RunSettings, timer: Timer, log: Log,
                   trained_through: int | None, consensus: safety.Consensus | None = None,
                   ) -> tuple[RunMetrics, int | None]:
    """Gate the candidate against the serving version (and the safety floor); if it passes,
    save it as the user's next version. Returns the metrics and the version (None: rejected)."""
    t = time.perf_counter()
    current_name = None
    if current is not None:
        policy.load_adapter(str(current), adapter_name="current")
        current_name = "current"
    gate = evaluate(policy, base.tokenizer, "default", current_name, heldout, reward_fn,
                    settings.gate)
    promote, reason = decide(gate, settings.gate)
    timer.phase("gate", t)
    log(f"gate: {reason}")
    metrics: RunMetrics = {"gate": gate, "decision": reason}
    if promote and consensus is not None:
        t = time.perf_counter()
        promote, floor_reason, metrics["safety"] = safety_floor(policy, base.tokenizer,
                                                                consensus, settings.safety)
        timer.phase("safety_floor", t)
        log(f"gate: {floor_reason}")
        metrics["decision"] = f"{reason}; {floor_reason}" if promote else floor_reason
    if not promote:
        return metrics, None
    if current_name:
        policy.delete_adapter(current_name)
    meta = {"base_id": base.base_id, "trained_through_event": trained_through,
            "training_config": {
        "policy": asdict(settings.policy), "head": asdict(settings.head),
        "gate": asdict(settings.gate), "dpo": asdict(settings.dpo),
        "safety": asdict(settings.safety)}, "metrics": metrics}
    version = registry.save_version(db, adapters_dir, user, policy, meta)
    log(f"promoting version {version}")         # made current by publish(), as the run ends
    return metrics, version
