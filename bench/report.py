"""The personalization run's report: results.md tables and the plots."""

from __future__ import annotations

import json
from pathlib import Path

from bench.scoring import informative_rows


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
