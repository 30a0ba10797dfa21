"""Evaluate the users a personalization run trained, on a server that is still running
(after `bench/personalize.py --keep-data` lost its patience, or for users trained later).

Why: on this 2-core machine one training run of the product's defaults takes ~30 minutes
and the runs are serial, so personalize.py's per-run timeout ends a long run before most
personas are trained; the server goes on training its queue. This script answers the
same held-out prompts (same split, seeds and sampling as personalize.py) with the base
and with each named user's current adapter, and prints personalize.py's scores: win rate
vs base (decisive and ties), liked-feature shares personal / base, and the head-to-head
matrix among the users given.

    .venv/bin/python -m bench.eval_trained --url http://127.0.0.1:PORT --admin-key KEY \
        --personas bench/personas-extra --user closer-explore-on --user concise-explore-on

Users trained in separate data dirs (two offline runs at once need two, each holding its
training lock) are scored together with --combine: the results.json of each one's
evaluation, given the same --heldout, --seed and --base-answers, are joined into one table
and one head-to-head matrix, without a server:

    .venv/bin/python -m bench.eval_trained --personas bench/personas-extra \
        --combine A/results.json --combine B/results.json --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

from bench.harness import Api, answer_heldout, load_prompts, split_prompts, split_user
from bench.personas import load_personas
from bench.report import fmt
from bench.scoring import score_answers, texts

ROOT = Path(__file__).resolve().parent.parent


class Evaluation(NamedTuple):
    own: dict[str, list[list[str]]]      # persona -> per held-out prompt, its adapter's texts
    info: dict[str, dict]                # user -> the version and head that served it
    base: list[list[str]] | None         # per held-out prompt, the base's texts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url")
    p.add_argument("--admin-key")
    p.add_argument("--personas", type=Path, action="append", required=True)
    p.add_argument("--user", action="append", default=[],
                   help="'<persona>-explore-<mode>' or a persona name (repeatable)")
    p.add_argument("--combine", type=Path, action="append", default=[], metavar="RESULTS_JSON",
                   help="an earlier evaluation's results.json whose users join this one's "
                        "(repeatable); every one must hold the same base answers")
    p.add_argument("--prompts", type=Path,
                   default=ROOT.parent / "shared" / "data" / "prompts-dev.jsonl")
    p.add_argument("--heldout", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-n", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "eval-trained")
    p.add_argument("--base-answers", type=Path, metavar="ANSWERS_JSON",
                   help="a personalize.py run's answers.json: its base answers stand for "
                        "the base's here (the same held-out prompts, seeds and sampling "
                        "give the same texts), so only the users' adapters answer")
    args = p.parse_args(argv)
    if args.user and not (args.url and args.admin_key):
        p.error("--user needs --url and --admin-key (a running server answers for it)")
    if not args.user and not args.combine:
        p.error("name a --user to evaluate or a --combine results.json to join")
    return args


def user_key(admin: Api, url: str, name: str) -> tuple[str, dict]:
    """A fresh key for the user (the run's keys lived in its memory) and what serves it."""
    user = next(u for u in admin.call("GET", "/admin/users") if u["name"] == name)
    key = admin.call("POST", f"/admin/users/{user['id']}/rotate-key")["api_key"]
    api = Api(url, key)
    me = api.call("GET", "/api/me")
    api.close()
    return key, {"current_version": me.get("current_version"),
                 "reward_head": me.get("reward_head")}


def reused_base(path: Path | None, heldout: list[str]) -> list[list[str]] | None:
    """The base's answers from a personalize.py answers.json (None: answer them here). Its
    held-out prompts must be these, in this order, or the texts would belong elsewhere."""
    if path is None:
        return None
    record = json.loads(path.read_text())
    if "base" not in record or "heldout" not in record:
        raise SystemExit(f"{path}: no base answers in it (a --feedback-only run answers no "
                         "held-out prompts; use a run that evaluated)")
    if record["heldout"] != heldout:
        raise SystemExit(f"{path}: its held-out prompts are not this split's "
                         "(use the run's --heldout and --seed)")
    return record["base"]


def answer_users(args: argparse.Namespace, heldout: list[str]) -> Evaluation:
    """Each named user's adapter answers the held-out prompts (and the base, unless reused)."""
    admin = Api(args.url, args.admin_key)
    own, info, base = {}, {}, reused_base(args.base_answers, heldout)
    for name in args.user:
        persona = split_user(name)[0]
        key, info[name] = user_key(admin, args.url, name)
        api = Api(args.url, key)
        if base is None:
            base = texts(answer_heldout(api, heldout, "base", args))
        own[persona] = texts(answer_heldout(api, heldout, "personal", args))
        print(f"{name}: answered {len(heldout)} held-out prompts "
              f"(version {info[name]['current_version']})", flush=True)
        api.close()
    return Evaluation(own, info, base)


def combine(evaluation: Evaluation, paths: list[Path]) -> Evaluation:
    """Join earlier evaluations' users to this one. Equal base answers are the check that
    they answered the same held-out prompts with the same seeds and sampling."""
    own, info, base = dict(evaluation.own), dict(evaluation.info), evaluation.base
    for path in paths:
        record = json.loads(path.read_text())
        answers = record["answers"]
        if base is not None and answers["base"] != base:
            raise SystemExit(f"{path}: its base answers are not this evaluation's (use the "
                             "same --heldout, --seed, sampling and --base-answers)")
        base = answers["base"]
        for user, served in record["users"].items():
            persona = split_user(user)[0]
            if persona in own:
                raise SystemExit(f"{path}: persona {persona!r} is evaluated twice")
            own[persona], info[user] = answers[persona], served
    return Evaluation(own, info, base)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    personas = {p.name: p for folder in args.personas for p in load_personas(folder)}
    _, heldout = split_prompts(load_prompts(args.prompts), args.heldout, args.seed)
    evaluation = Evaluation({}, {}, None)
    if args.user:
        evaluation = answer_users(args, heldout)
    evaluation = combine(evaluation, args.combine)
    own, info, base = evaluation
    if base is None:  # parse_args demands a --user or a --combine, and either brings one
        raise SystemExit("no base answers: name a --user or --combine a results.json")
    chosen = [personas[p] for p in own]
    scores = score_answers(chosen, base, own)
    result = {"users": info, "heldout": len(heldout), "scores": scores,
              "answers": {"base": base, **own}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    lines = ["| persona | version | win rate vs base | decisive | ties | liked share "
             "personal / base | words personal / base |", "| --- | --- | --- | --- | --- | "
             "--- | --- |"]
    for user, persona in zip(info, own, strict=True):
        r = scores["personas"][persona]
        lines.append(f"| {persona} | {info[user]['current_version']} | {fmt(r['win_rate'])} | "
                     f"{fmt(r.get('decisive_win_rate'))} | {fmt(r.get('tie_share'))} | "
                     f"{r['liked_share_personal']} / {r['liked_share_base']} | "
                     f"{r['words_personal']} / {r['words_base']} |")
    lines += ["", "head to head (row's own adapter vs column's, by row's utility):",
              json.dumps(scores["head_to_head"])]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
