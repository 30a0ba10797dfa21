"""End-to-end personalization benchmark with simulated users (bench/personas.py).

For every persona file: create a user on a real server, chat on training prompts and give the
feedback that persona would give (pairwise Bradley-Terry picks, rankings, thumbs), train
through the admin API, and repeat. After each stage, answer held-out prompts with every
persona's adapter and with the base and score them with every persona's hidden utility:

- win rate of `personal` vs `base` by the persona's own utility (ties count half),
- the specificity matrix: persona i's win rate for answers of persona j's adapter,
- the reward head's accuracy on the persona's own held-out judgements,
- where the signal goes (feedback agreement, run metrics, gate decision, routing), timings.

Usage:
  .venv/bin/python bench/personalize.py --out bench/out/personalize            # full run
  .venv/bin/python bench/personalize.py --quick --out bench/out/personalize-quick
  .venv/bin/python bench/personalize.py --url http://127.0.0.1:8000 --admin-key KEY

Only loopback traffic: the benchmark starts its own server on 127.0.0.1 or talks to --url.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from personas import Persona, load_personas  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FINAL = {"succeeded", "rejected", "failed"}
CURVE_POINTS = (20, 40, 60)
# Settings the benchmark gives the server it starts, and why (overridable with --env):
SERVER_ENV = {
    # Measured on the shared 2-core box: with torch's default (all cores) a 48-token answer
    # took 24 s, with 1 thread 5.6 s - the other core is the training worker's.
    "ASSISTANT_MODEL_THREADS": "1",
    "ASSISTANT_TRAINING_THREADS": "1",
    # Training is triggered through the admin API; no timer competing with the benchmark.
    "ASSISTANT_SCHEDULER_ENABLED": "false",
}
QUICK_ENV = {"ASSISTANT_TRAINING_STEPS": "2"}


# ---- options ------------------------------------------------------------------------------

def parse_mix(text: str) -> dict[str, float]:
    """'pairwise=0.6,ranking=0.2,thumbs=0.2' -> normalized shares."""
    mix = {}
    for part in text.split(","):
        kind, _, share = part.partition("=")
        kind = kind.strip()
        if kind not in ("pairwise", "ranking", "thumbs"):
            raise argparse.ArgumentTypeError(f"--mix: unknown feedback kind {kind!r}")
        mix[kind] = float(share)
    total = sum(mix.values())
    if total <= 0 or any(v < 0 for v in mix.values()):
        raise argparse.ArgumentTypeError("--mix: shares must be >= 0 and not all 0")
    return {k: v / total for k, v in mix.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "personalize")
    p.add_argument("--personas", type=Path, default=ROOT.parent / "shared" / "personas")
    p.add_argument("--prompts", type=Path,
                   default=ROOT.parent / "shared" / "data" / "prompts-dev.jsonl")
    p.add_argument("--url", help="use a running server instead of starting one")
    p.add_argument("--admin-key", help="admin key of --url's server")
    p.add_argument("--events", type=int, default=60, help="feedback prompts per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--heldout", type=int, default=30, help="held-out prompts for evaluation")
    p.add_argument("--mix", type=parse_mix, default=parse_mix("pairwise=0.6,ranking=0.2,"
                                                                "thumbs=0.2"))
    p.add_argument("--n3-share", type=float, default=0.25,
                   help="share of feedback turns with 3 candidates instead of 2")
    p.add_argument("--eval-n", type=int, default=2,
                   help="samples per held-out prompt and model (pairs are all compared)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature for every answer (the product's default)")
    p.add_argument("--max-tokens", type=int, default=128,
                   help="answer cap for every request, also given to the started server as "
                        "training.max_completion_tokens, so feedback, RL and evaluation see "
                        "the same length regime")
    p.add_argument("--rows", type=int, default=8,
                   help="candidate rows to keep in flight per generation phase, as a client "
                        "pool would; 8 fills the server's default model.max_batch_rows")
    p.add_argument("--curve", action="store_true",
                   help="also train and evaluate after 20, 40 and 60 events")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the started server (e.g. training overrides)")
    p.add_argument("--explore", choices=("on", "off", "both"), default="on",
                   help="exploration on comparison turns: on (the server's [explore]), off "
                        "(requests say explore=false), or both: two users per persona on one "
                        "server, same seeds, one run")
    p.add_argument("--selection",
                   choices=("auto", "random", "contrast", "uncertainty", "diversity"),
                   help="explore-on turns ask for this selection mode (default: the server's)")
    p.add_argument("--off-events", type=int, default=0, metavar="K",
                   help="with --explore both: the explore-off users only give feedback on the "
                        "first K prompts (informative pairs without exploration) and are not "
                        "trained; 0 = they run the whole pipeline")
    p.add_argument("--feedback-only", action="store_true",
                   help="only the feedback phase (no training or evaluation): informative "
                        "pairs and liked-feature shares of what each persona was shown")
    p.add_argument("--turn-cost", type=int, default=0, metavar="K",
                   help="first time K sequential n=2 turns with and without exploration "
                        "(same prompts and seeds, alternating order) on an idle server")
    p.add_argument("--start-timeout", type=float, default=900,
                   help="seconds to wait for the started server's /health (a shared, loaded "
                        "machine took over 300 s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-timeout", type=float, default=1800, help="seconds per training run")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 6 events, 4 held-out prompts, 2 RL steps")
    p.add_argument("--keep-data", action="store_true", help="keep the server's data dir")
    p.add_argument("--safety", action="store_true",
                   help="also report each persona's `assistant eval safety` figures "
                        "(bench/safety_report.py) as results.json's \"safety\"")
    p.add_argument("--safety-limit", type=int, default=64, help="HH pairs per safety eval")
    p.add_argument("--data-dir", type=Path, help="--url's server data dir (for --safety)")
    p.add_argument("--safety-data", type=Path,
                   default=ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl")
    p.add_argument("--rescore", type=Path, metavar="DIR",
                   help="no run: recompute the utility-based figures of DIR/results.json "
                        "from DIR/answers.json with --personas, and rewrite DIR's reports")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.heldout, args.eval_n = min(args.events, 6), min(args.heldout, 4), 1
    if args.url and not args.admin_key:
        p.error("--url needs --admin-key")
    return args


def stages(events: int, rounds: int, curve: bool) -> list[int]:
    """Cumulative event counts after which to train and evaluate."""
    points = {events * r for r in range(1, rounds + 1)}
    if curve:
        points |= {c for c in CURVE_POINTS if c <= events * rounds}
    return sorted(points)


# ---- data ---------------------------------------------------------------------------------

def load_prompts(path: Path) -> list[str]:
    prompts = []
    for line in path.read_text().splitlines():
        if line.strip():
            text = json.loads(line)["prompt"]
            if isinstance(text, str) and text.strip():
                prompts.append(text.strip())
    return list(dict.fromkeys(prompts))       # duplicates would leak into the held-out set


def split_prompts(prompts: list[str], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    order = list(prompts)
    random.Random(seed).shuffle(order)
    return order[heldout:], order[:heldout]


# ---- server -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    admin_key: str
    process: subprocess.Popen | None = None
    data_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def wait_healthy(url: str, timeout: float, process: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before /health")
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/health not ready after {timeout:.0f} s")


@contextmanager
def server(args: argparse.Namespace) -> Iterator[Server]:
    """A running server: --url's, or a fresh `python -m assistant serve` on a temp dir."""
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"--url must be a loopback address, got {host!r}")
        wait_healthy(args.url.rstrip("/"), 60)
        yield Server(args.url.rstrip("/"), args.admin_key, data_dir=args.data_dir)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="personalize-"))
    port, key = free_port(), "bench-" + secrets.token_urlsafe(24)
    # RL samples as long as the answers the persona rated and the evaluation reads.
    env = dict(SERVER_ENV, ASSISTANT_TRAINING_MAX_COMPLETION_TOKENS=str(args.max_tokens),
               **(QUICK_ENV if args.quick else {}))
    env.update(kv.split("=", 1) for kv in args.env)
    full_env = dict(os.environ, **env, ASSISTANT_DATA_DIR=str(data_dir),
                    ASSISTANT_HOST="127.0.0.1", ASSISTANT_PORT=str(port),
                    ASSISTANT_ADMIN_KEY=key)
    log = (data_dir / "server.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "assistant", "serve"], cwd=ROOT, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, args.start_timeout, proc)
        yield Server(url, key, proc, data_dir, env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if args.keep_data:
            print(f"server data kept in {data_dir}", flush=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


class Api:
    """A small JSON client with bounded retries (the server is busy, not flaky)."""

    def __init__(self, url: str, key: str, timeout: float = 900) -> None:
        self.client = httpx.Client(base_url=url, timeout=timeout,
                                   headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        for attempt in range(3):
            try:
                r = self.client.request(method, path, json=body)
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(2)
                continue
            if r.status_code >= 400:
                raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
            return r.json() if r.content else {}
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()


# ---- feedback -----------------------------------------------------------------------------

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


def chat(api: Api, args: argparse.Namespace, prompt: str, n: int, model: str,
         seed: int, explore: object = None) -> list[dict]:
    """One chat turn's candidates, with the run's sampling settings."""
    body = {"content": prompt, "n": n, "model": model, "temperature": args.temperature,
            "max_tokens": args.max_tokens, "seed": seed}
    if explore is not None:
        body["explore"] = explore
    return api.call("POST", "/api/chat", body)["candidates"]


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


def seed_of(*parts: object) -> int:
    """A request seed fixed by the run's seed and what is asked, so a rerun samples the same
    answers from the same adapter (and every model is sampled with the same seed on a
    held-out prompt: paired samples, so the comparison is less noisy)."""
    return zlib.crc32(":".join(map(str, parts)).encode())


def in_flight(rows: int, candidates: int) -> int:
    """Requests to keep open so that about `rows` candidates decode together."""
    return max(1, rows // candidates)


# ---- training -----------------------------------------------------------------------------

def train_and_wait(admin: Api, user: str, timeout: float) -> dict:
    """Queue a forced run for `user` and poll it to a final status (bounded)."""
    queued = admin.call("POST", "/admin/train", {"user": user, "force": True})["queued"]
    if not queued:
        return {"status": "not_queued"}
    run_id = queued[0]["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = admin.call("GET", f"/admin/runs/{run_id}")
        if run["status"] in FINAL:
            return run
        time.sleep(3)
    run = admin.call("GET", f"/admin/runs/{run_id}")
    run["status"] = f"timeout ({run['status']})"
    return run


def run_summary(run: dict) -> dict:
    """The run's outcome and the RL signal: reward and KL at the start and end of RL."""
    metrics = run.get("metrics") or {}
    if isinstance(metrics, str):
        metrics = json.loads(metrics)
    steps = metrics.get("steps") or []

    def avg(key: str, part: list[dict]) -> float | None:
        vals = [s[key] for s in part if isinstance(s.get(key), int | float)]
        return round(sum(vals) / len(vals), 4) if vals else None

    k = max(1, len(steps) // 4)
    return {
        "id": run.get("id"), "status": run.get("status"), "error": run.get("error"),
        "adapter_version": run.get("adapter_version"), "decision": metrics.get("decision"),
        "gate": metrics.get("gate"), "seconds": metrics.get("seconds"),
        "n_steps": len(steps),
        "reward_first_quarter": avg("reward_mean", steps[:k]),
        "reward_last_quarter": avg("reward_mean", steps[-k:]),
        "kl_last_quarter": avg("kl", steps[-k:]),
        "len_first_quarter": avg("completion_len", steps[:k]),
        "len_last_quarter": avg("completion_len", steps[-k:]),
        "log_tail": None if run.get("status") == "succeeded" else
        "\n".join((run.get("log_tail") or "").splitlines()[-25:]),
    }


# ---- evaluation ---------------------------------------------------------------------------

def answer_heldout(api: Api, prompts: list[str], model: str,
                   args: argparse.Namespace) -> list[list[dict]]:
    """Candidates (eval_n each) per held-out prompt, same sampling settings for every model."""
    with ThreadPoolExecutor(in_flight(args.rows, args.eval_n)) as pool:
        return list(pool.map(
            lambda p: chat(api, args, p, args.eval_n, model, seed_of(args.seed, "eval", p)),
            prompts))


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
        rewards = [api.call("GET", f"/api/messages/{c['id']}").get("reward") for c in group]
        if any(not isinstance(r, int | float) for r in rewards):
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


# ---- the per-persona pipeline --------------------------------------------------------------

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


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


@dataclass(frozen=True)
class Variant:
    """One simulated user: a persona with exploration on or off (its own server user)."""

    persona: Persona
    mode: str            # "on" | "off"
    user: str


VARIANT_SEP = "-explore-"


def variants(personas: list[Persona], explore: str) -> list[Variant]:
    modes = ("on", "off") if explore == "both" else (explore,)
    return [Variant(p, m, p.name if len(modes) == 1 else f"{p.name}{VARIANT_SEP}{m}")
            for m in modes for p in personas]


def split_user(user: str) -> tuple[str, str | None]:
    """A benchmark user's persona and explore mode (variants' naming; None: one mode)."""
    persona, sep, mode = user.rpartition(VARIANT_SEP)
    return (persona, mode) if sep else (user, None)


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
                if stage > 0:
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


# ---- scoring and reports ----------------------------------------------------------------

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
                    "words_personal": round(_mean_words(own[p.name]), 1),
                    "words_base": round(_mean_words(base), 1)} for p in personas}
    return {"personas": per, "specificity": spec, "head_to_head": head_to_head(personas, own)}


def head_to_head(personas: list[Persona], own: dict[str, list[list[str]]]) -> dict:
    """judge -> other -> win rate of the judge's own adapter against the other persona's
    adapter, by the judge's utility, on the same held-out prompts (ties count half)."""
    return {j.name: {o.name: round(win_rate(j, own[j.name], own[o.name]), 3)
                     for o in personas if o.name != j.name} for j in personas}


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
            "feedback_events": _feedback_events(info.get("me_counts")),
            "feedback": info["feedback"], "run": info["run"], "routing": info.get("routing")})
    return {"events": target, **scores}


def answers_record(vs: list[Variant], heldout: list[str], shared: Shared,
                   points: list[int]) -> dict:
    """Every held-out answer text, so a run can be re-scored (--rescore) or audited."""
    return {"heldout": heldout, "base": texts(shared.base),
            "personal": {f"{v.user}@{t}": texts(shared.personal[(v.user, t)])
                         for v in vs for t in points if (v.user, t) in shared.personal}}


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


def _feedback_events(counts: dict | None) -> int | None:
    if not counts:
        return None
    return sum(counts.get(k, 0) for k in ("thumbs_up", "thumbs_down", "comparisons",
                                          "rankings"))


def _mean_words(groups: list[list[str]]) -> float:
    words = [len(t.split()) for g in groups for t in g]
    return sum(words) / len(words)


def fmt(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, float) else "-" if x is None else str(x)


def markdown(results: dict) -> str:
    lines = [f"# Personalization benchmark ({results['started']})", "",
             f"Settings: {json.dumps(results['settings'])}", ""]
    cost = results.get("turn_cost")
    if cost:
        lines += [f"Turn cost (n=2, {cost['turns']} sequential turns each): "
                  f"{cost['seconds_off']} s without exploration, {cost['seconds_on']} s with, "
                  f"ratio {cost['ratio']}.", ""]
    lines += feedback_table(results.get("feedback") or {})
    lines += informative_table(results.get("feedback") or {})
    if "rounds" not in results:
        return _seconds(lines, results)
    modes = results.get("modes") or {"on": results}
    if len(modes) > 1:
        lines += compare_table(modes)
    for mode, data in modes.items():
        if len(modes) > 1:
            lines += [f"# Exploration {mode}", ""]
        lines += _mode_markdown(data)
    return _seconds(lines, results)


def feedback_table(feedback: dict) -> list[str]:
    """Per user and stage: what the persona was shown during feedback."""
    if not feedback:
        return []
    lines = ["## What each persona was shown (feedback phase)", "",
             "| user@events | informative pairs | shown pairs | liked-feature share | pairs "
             "differing in it | shown sources | pairwise winners | s/turn |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, f in feedback.items():
        lines.append(f"| {key} | {fmt(f.get('informative_pair_share'))} | "
                     f"{f.get('shown_pairs')} | {_kv(f.get('liked_feature_share'))} | "
                     f"{_kv(f.get('pairs_differing_in_feature'))} | "
                     f"{_kv(f.get('shown_sources'))} | {_kv(f.get('pairwise_winner_sources'))} "
                     f"| {fmt(f.get('turn_seconds_mean'))} |")
    return lines + [""]


def _kv(d: dict | None) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in (d or {}).items()) or "-"


def informative_table(feedback: dict) -> list[str]:
    """Markdown of informative_rows over a run's feedback ("user@events" -> summary)."""
    return informative_lines(informative_rows(
        {key.rpartition("@")[0]: f for key, f in feedback.items()}))


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


def informative_lines(rows: dict[str, dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Informative pairs, exploration on vs off (same prompts and seeds)", "",
             "| persona | off | on, same turns | on ÷ off | on, all turns "
             "| on by block of 20 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for persona, r in rows.items():
        lines.append(f"| {persona} | {fmt(r['off'])} | {fmt(r['on_same'])} | "
                     f"{fmt(r['ratio'])} | {fmt(r['on_all'])} | "
                     f"{' '.join(fmt(x) for x in r['on_by_block'])} |")
    return lines + [""]


def compare_table(modes: dict) -> list[str]:
    """Exploration on vs off, per persona, after the last stage."""
    lines = ["## Exploration on vs off (last stage)", "",
             "| persona | explore | win rate vs base | decisive | ties | head acc. (held-out) "
             "| liked share personal / base | run |", "| --- | --- | --- | --- | --- | --- | "
             "--- | --- |"]
    for mode, data in modes.items():
        for name, r in data["rounds"][-1]["personas"].items():
            lines.append(
                f"| {name} | {mode} | {fmt(r['win_rate'])} | {fmt(r.get('decisive_win_rate'))}"
                f" | {fmt(r.get('tie_share'))} | "
                f"{fmt((r.get('reward_head_heldout') or {}).get('accuracy'))} | "
                f"{_kv(r.get('liked_share_personal'))} / {_kv(r.get('liked_share_base'))} | "
                f"{r['run']['status']}: {r['run']['decision']} |")
    return lines + [""]


def _seconds(lines: list[str], results: dict) -> str:
    lines += ["## Seconds", "", "| phase | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in results["seconds"].items()]
    return "\n".join(lines) + "\n"


def _mode_markdown(results: dict) -> list[str]:
    lines: list[str] = []
    for stage in results["rounds"]:
        lines += [f"## After {stage['events']} events per persona", "",
                  "| persona | win rate vs base | decisive (ties excl.) | tie share | liked "
                  "share personal / base | utility personal | utility base | words "
                  "personal / base | head acc. (held-out) | head CV acc. | run | decision |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in stage["personas"].items():
            run = r["run"]
            lines.append(
                f"| {name} | {fmt(r['win_rate'])} | {fmt(r.get('decisive_win_rate'))} | "
                f"{fmt(r.get('tie_share'))} | {_kv(r.get('liked_share_personal'))} / "
                f"{_kv(r.get('liked_share_base'))} | {fmt(r['utility_personal'])} | "
                f"{fmt(r['utility_base'])} | {r['words_personal']} / {r['words_base']} | "
                f"{fmt((r['reward_head_heldout'] or {}).get('accuracy'))} | "
                f"{fmt(r['reward_head_cv_accuracy'])} | {run['status']} | "
                f"{run['decision']} |")
        names = list(stage["specificity"])
        lines += ["", "Specificity: win rate vs base by the row persona's utility of answers "
                  "from the column persona's adapter.", "",
                  "| judge \\ adapter | " + " | ".join(names) + " |",
                  "| --- |" + " --- |" * len(names)]
        for judge, row in stage["specificity"].items():
            lines.append(f"| {judge} | " + " | ".join(fmt(row[n]) for n in names) + " |")
        lines += ["", "Head to head: win rate of the row persona's own adapter against the "
                  "column persona's adapter, by the row persona's utility.", "",
                  "| judge (own adapter) \\ other adapter | " + " | ".join(names) + " |",
                  "| --- |" + " --- |" * len(names)]
        for judge, row in stage.get("head_to_head", {}).items():
            lines.append(f"| {judge} | " + " | ".join(fmt(row.get(n)) for n in names) + " |")
        lines.append("")
    return lines


def plots(results: dict, out: Path, curve: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = results["rounds"]
    names = list(results["personas"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        xs = [s["events"] for s in rounds]
        ax.plot(xs, [s["personas"][name]["win_rate"] for s in rounds], "o-", label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.axhline(0.75, color="green", lw=0.8, ls="--", label="target 0.75")
    ax.set(xlabel="feedback events per persona", ylabel="win rate vs base (own utility)",
           ylim=(0, 1), title="Personal vs base, per stage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / ("curve.png" if curve else "win_rate.png"), dpi=120)
    if curve:
        fig.savefig(out / "win_rate.png", dpi=120)
    plt.close(fig)

    spec = results["specificity"]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 1.3 * len(names) + 1.5))
    grid = [[spec[j][a] for a in names] for j in names]
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="adapter of", ylabel="judged by", title="Win rate vs base")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "specificity.png", dpi=120)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------

def run_benchmark(args: argparse.Namespace) -> tuple[dict, dict]:
    """Run everything against a server; returns (results, every held-out answer text)."""
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.monotonic()
    personas = load_personas(args.personas)
    prompts = load_prompts(args.prompts)
    points = stages(args.events, args.rounds, args.curve)
    train_prompts, heldout = split_prompts(prompts, args.heldout, args.seed)
    if len(train_prompts) < points[-1]:
        raise SystemExit(f"{len(train_prompts)} training prompts, need {points[-1]}")
    vs = variants(personas, args.explore)
    shared, cost = Shared(), None
    t = time.monotonic()
    with server(args) as srv:
        shared.seconds["server_start"] = round(time.monotonic() - t, 1)
        admin = Api(srv.url, srv.admin_key)
        if args.turn_cost:
            key = admin.call("POST", "/admin/users", {"name": "turn-cost"})["api_key"]
            say(f"turn cost: {args.turn_cost} n=2 turns with and without exploration")
            cost_api = Api(srv.url, key)
            cost = turn_cost(cost_api, train_prompts[-args.turn_cost:], args)
            cost_api.close()
            say(f"turn cost: {cost['seconds_off']} s off, {cost['seconds_on']} s on, "
                f"ratio {cost['ratio']}")
        keys = {v.user: admin.call("POST", "/admin/users", {"name": v.user})["api_key"]
                for v in vs}
        threads = [threading.Thread(target=_guarded, name=v.user, args=(
            persona_pipeline, shared, v, keys[v.user], admin, train_prompts, heldout, points,
            args, shared)) for v in vs]
        for th in threads:
            th.start()
            time.sleep(1)           # the first persona takes the generation lane first
        for th in threads:
            th.join()
        admin.close()
        env = srv.env
        if args.safety:
            import safety_report

            say("safety: assistant eval safety for every persona")
            shared.safety = safety_report.report(
                [v.user for v in vs], srv.data_dir, srv.env, args.safety_data,
                args.safety_limit, args.out)
    shared.seconds["total"] = round(time.monotonic() - t0, 1)
    if shared.seconds.get("errors"):
        args.out.mkdir(parents=True, exist_ok=True)
        partial = {f"{n}@{e}": v for (n, e), v in shared.stage_info.items()}
        (args.out / "partial.json").write_text(json.dumps(partial, indent=1, default=str))
        raise SystemExit(f"a persona pipeline failed (traceback above; {args.out}/partial.json)")
    settings = {"events": args.events, "rounds": args.rounds, "stages": points,
                "heldout": len(heldout), "eval_n": args.eval_n, "mix": args.mix,
                "n3_share": args.n3_share, "rows": args.rows, "temperature": args.temperature,
                "top_p": "server default (0.95)", "max_tokens": args.max_tokens,
                "server_env": env, "seed": args.seed, "quick": args.quick,
                "explore": args.explore, "selection": args.selection or "server default",
                "feedback_only": args.feedback_only, "off_events": args.off_events}
    feedback = {f"{v.user}@{t}": shared.stage_info[(v.user, t)]["feedback"]
                for v in vs for t in variant_points(v, points, args)}
    base = {"started": started, "settings": settings, "turn_cost": cost,
            "feedback": feedback, "seconds": shared.seconds,
            **({"safety": shared.safety} if args.safety else {})}
    if args.feedback_only:
        return base, {}
    modes = {}
    for mode in dict.fromkeys(v.mode for v in vs if not feedback_only_variant(v, args)):
        mine = [v for v in vs if v.mode == mode]
        rounds = [score_stage(mine, shared, target) for target in points]
        last = rounds[-1]
        modes[mode] = {
            "personas": {n: {k: v for k, v in r.items() if k not in ("feedback", "run")}
                         for n, r in last["personas"].items()},
            "specificity": last["specificity"], "head_to_head": last["head_to_head"],
            "rounds": rounds}
    first = next(iter(modes.values()))
    return {**base, **first, "modes": modes}, answers_record(vs, heldout, shared, points)


def _guarded(fn, shared: Shared, *args) -> None:
    """Run a persona thread; record a failure instead of losing it in the thread."""
    try:
        fn(*args)
    except Exception:
        import traceback

        traceback.print_exc()
        with shared.lock:
            shared.seconds["errors"] = shared.seconds.get("errors", 0) + 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rescore:
        args.out = args.rescore
        answers = json.loads((args.out / "answers.json").read_text())
        results = rescore(json.loads((args.out / "results.json").read_text()), answers,
                          load_personas(args.personas))
    else:
        results, answers = run_benchmark(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "answers.json").write_text(json.dumps(answers, indent=1))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    if results.get("safety"):
        import safety_report

        table += "\n" + safety_report.markdown(results["safety"])
    (args.out / "results.md").write_text(table)
    if "rounds" in results:
        plots(results, args.out, args.curve or bool(args.rescore and len(results["rounds"]) > 1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
