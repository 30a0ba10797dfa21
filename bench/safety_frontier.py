"""Taste against harmlessness: every variant of one or more bench.dpo_variants --floor runs on
one picture, with the floor and the rare-taste target as lines.

Each point is a variant (a DPO setting, a safety anchor, an on-policy safety round, or a
trained adapter): x = its mean consensus harmlessness on the gate's red-team prompts, y = the
share of its held-out answers with the persona's liked feature; the label gives its win rate
against the base. A variant that learned the taste (`learned`: the issue's target) and kept
the floor lies in the top right box with a label of 0.75 or more. Prints the table, writes
JSON and a PNG.

    .venv/bin/python -m bench.safety_frontier --user examples \\
        --variants bench/out/dv-a.json --variants bench/out/dv-b.json --out bench/out/frontier
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adapters.settings import SafetySettings
from bench.report import table

ROOT = Path(__file__).resolve().parent.parent
# The rare-taste target: win rate vs the base >= 0.75 and a liked-feature share
# >= 0.4 and >= 2x the base's.
TARGET_WIN, TARGET_SHARE = 0.75, 0.4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", type=Path, action="append", required=True,
                   help="a bench.dpo_variants --floor JSON (repeatable)")
    p.add_argument("--user", required=True)
    p.add_argument("--margin", type=float, default=SafetySettings().margin,
                   help="[safety] margin of the runs (the floor line)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "safety_frontier")
    return p.parse_args(argv)


def points(paths: list[Path], user: str) -> tuple[list[dict], float]:
    """(one row per variant with a floor check, the base's harmlessness). A name seen in an
    earlier file keeps its first figures."""
    rows: dict[str, dict] = {}
    base = None
    for path in paths:
        variants = json.loads(path.read_text())["users"][user]["variants"]
        for name, v in variants.items():
            if not v.get("floor") or name in rows:
                continue
            base = v["floor"]["base"]["harmless_score"]
            rows[name] = {"variant": name, "win": v["win_rate"],
                          "liked": v["liked_share"]["any"],
                          "liked_base": v["liked_share_base"]["any"], "words": v["words"],
                          "harmless": round(v["floor"]["candidate"]["harmless_score"], 3),
                          "floor": v["floor"]["passed"], "overrides": v["overrides"]}
    if base is None:
        raise SystemExit(f"no variant of {user} has floor figures (run with --floor)")
    return list(rows.values()), base


def learned(row: dict) -> bool:
    """Did the variant meet the rare-taste target (TARGET_WIN, TARGET_SHARE)?"""
    return (row["win"] >= TARGET_WIN
            and row["liked"] >= max(TARGET_SHARE, 2 * row["liked_base"]))


def plot(rows: list[dict], base: float, margin: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        ax.scatter(r["harmless"], r["liked"], color="tab:green" if r["floor"] else "tab:red")
        ax.annotate(f"{r['variant']} ({r['win']:.2f})", (r["harmless"], r["liked"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(base - margin, color="grey", ls="--", label=f"floor (base {base:+.2f} - {margin})")
    ax.axvline(base, color="grey", ls=":", label="the base")
    ax.axhline(TARGET_SHARE, color="tab:blue", ls="--", label="rare-taste target share")
    ax.set_xlabel("red-team harmlessness (consensus head, greedy)")
    ax.set_ylabel("held-out answers with the liked feature")
    ax.set_title("taste vs harmlessness (label: win rate vs the base)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, base = points(args.variants, args.user)
    rows.sort(key=lambda r: r["harmless"])
    print("\n".join(table(
        ["variant", "win", "liked share", "words", "harmlessness", "floor"],
        ([r["variant"], f"{r['win']:.2f}", f"{r['liked']:.2f}", f"{r['words']:.0f}",
          f"{r['harmless']:+.2f}", "pass" if r["floor"] else "fail"] for r in rows))))
    both = [r["variant"] for r in rows if r["floor"] and learned(r)]
    print(f"base harmlessness {base:+.2f}; learned the taste and kept the floor: "
          f"{', '.join(both) or 'none'}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.json").write_text(json.dumps(
        {"user": args.user, "base_harmless": base, "margin": args.margin, "rows": rows,
         "both": both}, indent=1))
    plot(rows, base, args.margin, args.out / "frontier.png")
    print(f"wrote {args.out}/frontier.json and frontier.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
