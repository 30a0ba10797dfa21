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
  .venv/bin/python -m bench.personalize --out bench/out/personalize            # full run
  .venv/bin/python -m bench.personalize --quick --out bench/out/personalize-quick
  .venv/bin/python -m bench.personalize --url http://127.0.0.1:8000 --admin-key KEY

Only loopback traffic: the benchmark starts its own server on 127.0.0.1 or talks to --url.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python bench/personalize.py`: run as `python -m bench.personalize` from this checkout,
    # so that the bench package and the project's packages are the checkout's.
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
    os.execve(sys.executable, [sys.executable, "-m", "bench.personalize", *sys.argv[1:]],
              dict(os.environ, PYTHONPATH=path))

from bench import safety_report
from bench.feedback import turn_cost
from bench.harness import (
    ROOT,
    Api,
    Variant,
    load_prompts,
    say,
    server,
    split_prompts,
    variants,
)
from bench.personas import load_personas
from bench.pipeline import (
    Shared,
    answers_record,
    feedback_only_variant,
    guarded,
    persona_pipeline,
    score_stage,
    variant_points,
)
from bench.report import markdown, plots
from bench.scoring import rescore

CURVE_POINTS = (20, 40, 60)


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
    _where_options(p)
    _feedback_options(p)
    _explore_options(p)
    _run_options(p)
    _safety_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.heldout, args.eval_n = min(args.events, 6), min(args.heldout, 4), 1
    if args.url and not args.admin_key:
        p.error("--url needs --admin-key")
    return args


def _where_options(p: argparse.ArgumentParser) -> None:
    """Where the personas, prompts and results are; --url's server."""
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "personalize")
    p.add_argument("--personas", type=Path, default=ROOT.parent / "shared" / "personas")
    p.add_argument("--prompts", type=Path,
                   default=ROOT.parent / "shared" / "data" / "prompts-dev.jsonl")
    p.add_argument("--url", help="use a running server instead of starting one")
    p.add_argument("--admin-key", help="admin key of --url's server")


def _feedback_options(p: argparse.ArgumentParser) -> None:
    """How much feedback each simulated user gives, and how answers are sampled."""
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


def _explore_options(p: argparse.ArgumentParser) -> None:
    """The started server's environment; exploration on feedback turns."""
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


def _run_options(p: argparse.ArgumentParser) -> None:
    """Timeouts, seeds, size of the run."""
    p.add_argument("--start-timeout", type=float, default=900,
                   help="seconds to wait for the started server's /health (a shared, loaded "
                        "machine took over 300 s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-timeout", type=float, default=1800, help="seconds per training run")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 6 events, 4 held-out prompts, 2 RL steps")
    p.add_argument("--keep-data", action="store_true", help="keep the server's data dir")


def _safety_options(p: argparse.ArgumentParser) -> None:
    """--safety figures; --rescore of a finished run."""
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


def stages(events: int, rounds: int, curve: bool) -> list[int]:
    """Cumulative event counts after which to train and evaluate."""
    points = {events * r for r in range(1, rounds + 1)}
    if curve:
        points |= {c for c in CURVE_POINTS if c <= events * rounds}
    return sorted(points)


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
            cost = measure_turn_cost(srv.url, admin, train_prompts[-args.turn_cost:], args)
        run_users(admin, vs, train_prompts, heldout, points, args, shared)
        admin.close()
        env = srv.env
        if args.safety:
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
    feedback = {f"{v.user}@{t}": shared.stage_info[(v.user, t)]["feedback"]
                for v in vs for t in variant_points(v, points, args)}
    base = {"started": started, "settings": run_settings(args, points, len(heldout), env),
            "turn_cost": cost, "feedback": feedback, "seconds": shared.seconds,
            **({"safety": shared.safety} if args.safety else {})}
    if args.feedback_only:
        return base, {}
    modes = scored_modes(vs, shared, points, args)
    first = next(iter(modes.values()))
    return {**base, **first, "modes": modes}, answers_record(vs, heldout, shared, points)


def measure_turn_cost(url: str, admin: Api, prompts: list[str],
                      args: argparse.Namespace) -> dict:
    """--turn-cost: a user of its own times n=2 turns with and without exploration."""
    key = admin.call("POST", "/admin/users", {"name": "turn-cost"})["api_key"]
    say(f"turn cost: {args.turn_cost} n=2 turns with and without exploration")
    cost_api = Api(url, key)
    cost = turn_cost(cost_api, prompts, args)
    cost_api.close()
    say(f"turn cost: {cost['seconds_off']} s off, {cost['seconds_on']} s on, "
        f"ratio {cost['ratio']}")
    return cost


def run_users(admin: Api, vs: list[Variant], train_prompts: list[str], heldout: list[str],
              points: list[int], args: argparse.Namespace, shared: Shared) -> None:
    """Create every variant's user and run their pipelines, one thread each, to the end."""
    keys = {v.user: admin.call("POST", "/admin/users", {"name": v.user})["api_key"]
            for v in vs}
    threads = [threading.Thread(target=guarded, name=v.user, args=(
        persona_pipeline, shared, v, keys[v.user], admin, train_prompts, heldout, points,
        args, shared)) for v in vs]
    for th in threads:
        th.start()
        time.sleep(1)           # the first persona takes the generation lane first
    for th in threads:
        th.join()


def run_settings(args: argparse.Namespace, points: list[int], heldout: int,
                 env: dict[str, str]) -> dict:
    """results.json's "settings": what the run measured with."""
    return {"events": args.events, "rounds": args.rounds, "stages": points,
            "heldout": heldout, "eval_n": args.eval_n, "mix": args.mix,
            "n3_share": args.n3_share, "rows": args.rows, "temperature": args.temperature,
            "top_p": "server default (0.95)", "max_tokens": args.max_tokens,
            "server_env": env, "seed": args.seed, "quick": args.quick,
            "explore": args.explore, "selection": args.selection or "server default",
            "feedback_only": args.feedback_only, "off_events": args.off_events}


def scored_modes(vs: list[Variant], shared: Shared, points: list[int],
                 args: argparse.Namespace) -> dict:
    """Per explore mode that was trained: every stage's scores, and the last stage's."""
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
    return modes


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
        table += "\n" + safety_report.markdown(results["safety"])
    (args.out / "results.md").write_text(table)
    if "rounds" in results:
        plots(results, args.out, args.curve or bool(args.rescore and len(results["rounds"]) > 1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
