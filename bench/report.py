"""The personalization run's report: results.md tables and the plots."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from bench.scoring import informative_rows


def fmt(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, float) else "-" if x is None else str(x)


def table(header: list[str], rows: Iterable[Iterable[object]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


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
    if "rounds" in results:
        modes = results.get("modes") or {"on": results}
        if len(modes) > 1:
            lines += compare_table(modes)
        for mode, data in modes.items():
            if len(modes) > 1:
                lines += [f"# Exploration {mode}", ""]
            lines += _mode_markdown(data)
    lines += ["## Seconds", "", *table(["phase", "seconds"], results["seconds"].items())]
    return "\n".join(lines) + "\n"


def feedback_table(feedback: dict) -> list[str]:
    """Per user and stage: what the persona was shown during feedback."""
    if not feedback:
        return []
    header = ["user@events", "informative pairs", "shown pairs", "liked-feature share",
              "pairs differing in it", "shown sources", "pairwise winners", "s/turn"]
    rows = ([key, fmt(f.get("informative_pair_share")), f.get("shown_pairs"),
             _kv(f.get("liked_feature_share")), _kv(f.get("pairs_differing_in_feature")),
             _kv(f.get("shown_sources")), _kv(f.get("pairwise_winner_sources")),
             fmt(f.get("turn_seconds_mean"))] for key, f in feedback.items())
    return ["## What each persona was shown (feedback phase)", "", *table(header, rows), ""]


def _kv(d: dict | None) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in (d or {}).items()) or "-"


def informative_table(feedback: dict) -> list[str]:
    """Markdown of informative_rows over a run's feedback ("user@events" -> summary)."""
    return informative_lines(informative_rows(
        {key.rpartition("@")[0]: f for key, f in feedback.items()}))


def informative_lines(rows: dict[str, dict]) -> list[str]:
    if not rows:
        return []
    header = ["persona", "off", "on, same turns", "on ÷ off", "on, all turns",
              "on by block of 20"]
    cells = ([persona, fmt(r["off"]), fmt(r["on_same"]), fmt(r["ratio"]), fmt(r["on_all"]),
              " ".join(fmt(x) for x in r["on_by_block"])] for persona, r in rows.items())
    return ["## Informative pairs, exploration on vs off (same prompts and seeds)", "",
            *table(header, cells), ""]


def compare_table(modes: dict) -> list[str]:
    """Exploration on vs off, per persona, after the last stage."""
    header = ["persona", "explore", "win rate vs base", "decisive", "ties",
              "head acc. (held-out)", "liked share personal / base", "run"]
    rows = ([name, mode, fmt(r["win_rate"]), fmt(r.get("decisive_win_rate")),
             fmt(r.get("tie_share")), fmt((r.get("reward_head_heldout") or {}).get("accuracy")),
             f"{_kv(r.get('liked_share_personal'))} / {_kv(r.get('liked_share_base'))}",
             f"{r['run']['status']}: {r['run']['decision']}"]
            for mode, data in modes.items()
            for name, r in data["rounds"][-1]["personas"].items())
    return ["## Exploration on vs off (last stage)", "", *table(header, rows), ""]


STAGE_HEADER = ["persona", "win rate vs base", "decisive (ties excl.)", "tie share",
                "liked share personal / base", "utility personal", "utility base",
                "words personal / base", "head acc. (held-out)", "head CV acc.", "run",
                "decision"]


def _mode_markdown(results: dict) -> list[str]:
    lines: list[str] = []
    for stage in results["rounds"]:
        rows = ([name, fmt(r["win_rate"]), fmt(r.get("decisive_win_rate")),
                 fmt(r.get("tie_share")),
                 f"{_kv(r.get('liked_share_personal'))} / {_kv(r.get('liked_share_base'))}",
                 fmt(r["utility_personal"]), fmt(r["utility_base"]),
                 f"{r['words_personal']} / {r['words_base']}",
                 fmt((r["reward_head_heldout"] or {}).get("accuracy")),
                 fmt(r["reward_head_cv_accuracy"]), r["run"]["status"], r["run"]["decision"]]
                for name, r in stage["personas"].items())
        names = list(stage["specificity"])
        lines += [f"## After {stage['events']} events per persona", "",
                  *table(STAGE_HEADER, rows),
                  "", "Specificity: win rate vs base by the row persona's utility of answers "
                  "from the column persona's adapter.", "",
                  *table(["judge \\ adapter", *names],
                         ([judge, *(fmt(row[n]) for n in names)]
                          for judge, row in stage["specificity"].items())),
                  "", "Head to head: win rate of the row persona's own adapter against the "
                  "column persona's adapter, by the row persona's utility.", "",
                  *table(["judge (own adapter) \\ other adapter", *names],
                         ([judge, *(fmt(row.get(n)) for n in names)]
                          for judge, row in stage.get("head_to_head", {}).items())),
                  ""]
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
