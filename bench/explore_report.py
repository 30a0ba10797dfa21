"""What each simulated user was shown, and what their reward head can learn from it, read
back from a personalization run's data dir (`bench/personalize.py --keep-data`).

Why a second reader: on this 2-core machine one training run of the product's defaults
takes ~30 minutes, so a 60-event run of eight personas cannot train them all in a session;
the feedback stage is complete long before. This script recomputes, from the stored turns
(the shown answers in order, as the persona saw them), the feedback-stage figures of
`personalize.py` (informative pairs, liked-feature shares, pairs differing in a liked
feature, shown sources) for every user, and with --heads fits each user's reward head on
a copy of the database the way a training run does (frozen base features, the product's
[reward] settings) and reports its k-fold CV accuracy: the stage after selection where a
rare taste can still be lost.

    .venv/bin/python -m bench.explore_report --data-dir /tmp/personalize-XXXX \
        --personas bench/personas-extra --heads --out bench/out/explore-report
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
from pathlib import Path

from bench.feedback import FeedbackLog
from bench.harness import split_user
from bench.personas import Persona, load_personas
from bench.report import fmt, informative_lines
from bench.scoring import informative_rows

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True, help="the run's server data dir")
    p.add_argument("--personas", type=Path, action="append", required=True,
                   help="persona folder (repeatable)")
    p.add_argument("--heads", action="store_true",
                   help="also fit each user's reward head on a copy of the database")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "explore-report")
    return p.parse_args(argv)


def persona_of(user: str, personas: dict[str, Persona]) -> tuple[Persona, str] | None:
    """The user's persona and explore mode (a bare persona name: mode 'on')."""
    name, mode = split_user(user)
    return (personas[name], mode or "on") if name in personas else None


def shown_turns(db_path: Path, user: str) -> list[list[dict]]:
    """Every comparison turn of the user (two or more shown answers), in order."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    rows = con.execute(
        "select m.parent_id, m.content, m.source, m.arm from messages m join users u "
        "on u.id = m.user_id where u.name = ? and m.role = 'assistant' "
        "order by m.parent_id, m.candidate_index", [user]).fetchall()
    con.close()
    turns: dict[int, list[dict]] = {}
    for r in rows:
        turns.setdefault(r["parent_id"], []).append(dict(r))
    return [t for _, t in sorted(turns.items()) if len(t) >= 2]


def users(db_path: Path) -> list[str]:
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    names = [r[0] for r in con.execute("select name from users order by id")]
    con.close()
    return names


def feedback_summary(persona: Persona, turns: list[list[dict]]) -> dict:
    log = FeedbackLog()
    for cands in turns:
        log.shown(persona, cands)
        log.prompts += 1
    return log.summary()


def head_accuracies(db_path: Path, names: list[str]) -> dict[str, dict]:
    """Fit every user's head as a run would, on a copy (features are written to it)."""
    import sqlite_utils

    from adapters.base_model import load_base
    from adapters.jobs import backfill_features, fit_prior, fit_with_cv, head_data
    from assistant.config import load_config
    from assistant.training_settings import run_settings

    config = load_config()
    settings = run_settings(config).head
    base = load_base(config.model.path, config.cache_dir, config.model.device,
                     config.model.dtype)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        src.backup(dst)
        src.close()
        dst.close()
        db = sqlite_utils.Database(copy)
        for name in names:
            user = next(db["users"].rows_where("name = ?", [name]))
            backfill_features(db, base, user["id"])
            data = head_data(db, base, user["id"])
            if len(data.chosen) < 2:
                out[name] = {"n_pairs": len(data.chosen), "cv_accuracy": None}
                continue
            _, cv = fit_with_cv(data, settings, fit_prior(db, base, user["id"], settings))
            out[name] = {"n_pairs": len(data.chosen), "n_thumbs": len(data.thumbs),
                         "cv_accuracy": None if cv is None else round(cv, 3)}
            print(f"{name}: head CV accuracy {out[name]['cv_accuracy']} on "
                  f"{len(data.chosen)} pairs", flush=True)
    return out


def markdown(report: dict) -> str:
    lines = ["# What each user was shown", "",
             "| user | comparison turns | informative pairs | by block of 20 turns | liked-feature "
             "share | pairs differing in it | head CV acc. (pairs) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for user, r in report["users"].items():
        f, h = r["feedback"], r.get("head") or {}
        liked = ", ".join(f"{k} {fmt(v)}" for k, v in f["liked_feature_share"].items())
        differ = ", ".join(f"{k} {v}" for k, v in f["pairs_differing_in_feature"].items())
        blocks = " ".join(fmt(x) for x in f["informative_pair_share_by_block"])
        lines.append(f"| {user} | {f['prompts']} | {fmt(f['informative_pair_share'])} | "
                     f"{blocks} | {liked or '-'} | {differ or '-'} | "
                     f"{fmt(h.get('cv_accuracy'))} ({h.get('n_pairs', '-')}) |")
    return "\n".join(lines + [""] + informative_lines(report["on_vs_off"])) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    personas = {p.name: p for folder in args.personas for p in load_personas(folder)}
    db_path = args.data_dir / "assistant.db"
    report: dict[str, dict] = {}
    for user in users(db_path):
        found = persona_of(user, personas)
        if found is None:
            continue
        report[user] = {"persona": found[0].name, "mode": found[1],
                        "feedback": feedback_summary(found[0], shown_turns(db_path, user))}
    if args.heads:
        for user, head in head_accuracies(db_path, list(report)).items():
            report[user]["head"] = head
    result = {"data_dir": str(args.data_dir), "users": report,
              "on_vs_off": informative_rows({u: r["feedback"] for u, r in report.items()})}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
