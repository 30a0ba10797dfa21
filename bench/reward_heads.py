"""Feature recipes x head settings x head methods, side by side, on the same split seeds.

Usage: OMP_NUM_THREADS=1 .venv/bin/python -m bench.reward_heads \
    [--seeds 5] [--recipes NAME,...] [--methods global,personal,...] [--files hh,relabeled] \
    [--settings "l2=1,prior_strength=1;l2=4,prior_strength=4"]

Reads the rich features of bench/reward_features.py from the disk cache (only pairs whose
features are cached: a partial extraction gives a uniform sample) and cuts each recipe
out of them (bench/reward_common.py RECIPES), so no model forward runs here. For each file,
recipe, settings variant (HeadSettings fields; empty = the defaults), user and method:
held-out pair accuracy and ECE, mean and std over the seeds. Ends with the issue's
targets per recipe and variant. Writes bench/out/reward_heads.json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from adapters.settings import HeadSettings
from assistant.eval_reward import DEFAULT_METHODS, evaluate, split_users, summarize
from bench.reward_common import HH, RECIPES, RELABELED, ROOT, cut, rich_pairs

FILES = {"hh": HH, "relabeled": RELABELED}


def parse_variants(text: str) -> dict[str, HeadSettings]:
    """"l2=1,prior_strength=1;l2=4" -> {label: HeadSettings}; "" -> the defaults alone."""
    known = {f.name: f.type for f in fields(HeadSettings)}
    out = {}
    for variant in [v.strip() for v in text.split(";")] or [""]:
        # Any: each field has its own type (bool or float), known only from the key.
        overrides: dict[str, Any] = {}
        for item in [i for i in variant.split(",") if i.strip()]:
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in known:
                raise SystemExit(f"unknown head setting {key!r}; known: {sorted(known)}")
            overrides[key] = value.strip().lower() in ("1", "true") if known[key] in (
                bool, "bool") else float(value)
        out[variant or "defaults"] = replace(HeadSettings(), **overrides)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--files", default="hh,relabeled")
    ap.add_argument("--settings", default="",
                    help="';'-separated head settings variants, each 'field=value,...'")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "reward_heads.json"))
    args = ap.parse_args()
    methods = tuple(args.methods.split(","))
    variants = parse_variants(args.settings)
    report: dict = {"seeds": args.seeds, "methods": methods, "results": {}}
    data = {name: rich_pairs(FILES[name]) for name in args.files.split(",")}
    for name, (pairs, _, _) in data.items():
        report["results"][name] = {"pairs": len(pairs), "recipes": {}}
    # Recipe outermost: a run stopped early has every file's figures for the first recipes.
    for recipe in args.recipes.split(","):
        layers, pools = RECIPES[recipe]
        for name, (pairs, C, R) in data.items():
            Cr, Rr = cut(C, layers, pools), cut(R, layers, pools)
            for label, settings in variants.items():
                key = recipe if len(variants) == 1 else f"{recipe} | {label}"
                start = time.perf_counter()
                per_seed = {s: evaluate(Cr, Rr, split_users(pairs, 0.5, s), settings,
                                        methods, s) for s in range(args.seeds)}
                summary = summarize(per_seed)
                report["results"][name]["recipes"][key] = {
                    "dim": int(Cr.shape[1]), "settings": label, "summary": summary,
                    "per_seed": per_seed, "seconds": round(time.perf_counter() - start, 1)}
                print_rows(name, len(pairs), key, summary, methods)
                write(report, args.out)
    print(targets_table(report, methods))


def print_rows(name: str, n: int, recipe: str, summary: dict, methods) -> None:
    for user, r in summary.items():
        cells = " ".join(f"{m}={r['acc'][m][0]:.3f}+-{r['acc'][m][1]:.3f}"
                         f"[{r['ece'][m][0]:.3f}]" for m in methods)
        print(f"{name}({n}) | {recipe:<22} | {user:<13} | {cells}", flush=True)


def targets_table(report: dict, methods) -> str:
    """Markdown: per recipe/variant and method, HH accuracy, each relabeled user's gain over
    global and over personal (points), and the largest ECE over users (the issue's targets:
    HH >= 0.68, gain over global >= +6, never < -1 vs personal, ECE <= 0.05)."""
    res = report["results"]
    hh, rel = res.get("hh", {}).get("recipes", {}), res.get("relabeled", {}).get("recipes", {})
    rows = ["| recipe | method | HH acc | relabeled users: minus global / minus personal "
            "(points) | max ECE |", "| --- | --- | --- | --- | --- |"]
    for key in dict.fromkeys([*hh, *rel]):
        for m in methods:
            hh_acc = hh[key]["summary"] if key in hh else {}
            acc = " ".join(f"{r['acc'][m][0]:.3f}" for r in hh_acc.values()) or "-"
            gains = []
            for user, r in (rel[key]["summary"] if key in rel else {}).items():
                a = r["acc"]
                g = 100 * (a[m][0] - a["global"][0]) if "global" in a else float("nan")
                p = 100 * (a[m][0] - a["personal"][0]) if "personal" in a else float("nan")
                gains.append(f"{user} {g:+.1f} / {p:+.1f}")
            eces = [r["ece"][m][0] for part in (hh, rel) if key in part
                    for r in part[key]["summary"].values()]
            rows.append(f"| {key} | {m} | {acc} | {'; '.join(gains) or '-'} | "
                        f"{max(eces):.3f} |")
    return "\n".join(rows)


def write(report: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
