"""The feedback stage of issue 14, measured in one process: what would each persona be shown
with and without exploration, and what does an exploring turn cost?

A user's first comparison turns run on the base (no adapter yet, no peers promoted), so the
sources are: the base at the request temperature (what an n=2 turn shows without
exploration: two samples), the base at explore.hot_temperature, and the base under each
style arm of config.toml [explore]. Every answer is generated once and judged by every
persona file, which makes this far cheaper than bench/personalize.py --feedback-only (that
generates per user) while measuring the same thing:

- liked-feature share per source (a taste can only be learned if some source writes it);
- informative-pair share (|u_a - u_b| > the persona's temperature) of the shown pair:
  off = the two plain samples; on = a pool planned exactly as the server does
  (assistant/explore.plan_pool with config's sources and pool size), shown pair chosen by
  `random` and by `diversity` (frozen features of the head, assistant/explore.select);
- turn cost: an ordinary n=2 request vs an exploring turn (the pool as one batch + feature
  extraction + selection), sequential, same prompts, alternating order;
- per arm, the share of answers showing the arm's own feature (ARM_FEATURES, a generic
  detector per shipped arm name), with the arm as served (instruction, demonstration,
  opening/closing: "arm:<name>") against the same arm without its opening and closing
  ("arm:<name>~plain"), same prompts and seeds; for the served arm also in the words the
  model wrote (the opening and closing cue taken out), so a feature that only the forced
  text shows is told apart from one the model went on to write.

    .venv/bin/python -m bench.arm_probe --prompts 12 --out bench/out/arm-probe
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from bench.feedback import liked_features, liked_names
from bench.harness import load_prompts, split_prompts
from bench.personas import load_personas

if TYPE_CHECKING:       # for annotations only: assistant is imported where it runs
    from assistant.arms import Arm

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--personas", type=Path, action="append",
                   help="persona folder (repeatable); default bench/personas-extra and "
                        "../shared/personas")
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/prompts-dev.jsonl"))
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--cost-turns", type=int, default=4)
    p.add_argument("--plans", type=int, default=20, help="pool plans drawn per prompt")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "arm-probe")
    p.add_argument("--from-answers", action="store_true",
                   help="reuse --out/answers.json (no generation, no turn cost)")
    p.add_argument("--no-plain-arms", action="store_true",
                   help="skip the arms without their opening/closing (halves the arm cost)")
    return p.parse_args(argv)


def generate(engine, prompts: list[str], sources: dict, args, demo_question: str) -> dict:
    """source -> answers (one per prompt); every request submitted at once, so the engine's
    batches stay full."""
    from assistant import explore as ex
    from assistant.engine import GenRequest

    futures: dict[str, list[Future]] = {}
    started = time.monotonic()
    for name, (arm, temperature, seed_offset) in sources.items():
        steered = arm is not None and not name.endswith(PLAIN)
        futures[name] = []
        for i, prompt in enumerate(prompts):
            visible = [{"role": "user", "content": prompt}]
            messages = ex.arm_messages(visible, arm, demo_question) if arm else visible
            futures[name].append(engine.submit(GenRequest(
                messages=messages, temperature=temperature, max_tokens=args.max_tokens,
                seed=1000 * seed_offset + i, opening=arm.opening if steered else "",
                closing=arm.closing_cue if steered else "")))
    answers = {}
    for name, fs in futures.items():
        answers[name] = [f.result().candidates[0].text for f in fs]
        print(f"{name}: done ({time.monotonic() - started:.0f} s)", flush=True)
    return answers


def turn_cost(engine, prompts: list[str], config, args) -> dict:
    """Seconds of an ordinary n=2 turn vs an exploring one (pool batch + features)."""
    from adapters.features import compute_features
    from assistant import explore as ex
    from assistant.engine import GenRequest

    e = config.explore
    arms = ex.parse_arms(e.arms)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for k, prompt in enumerate(prompts):
        gen = GenRequest(messages=[{"role": "user", "content": prompt}], n=2,
                         temperature=args.temperature, max_tokens=args.max_tokens, seed=k)
        for mode in (("off", "on") if k % 2 == 0 else ("on", "off")):
            t = time.monotonic()
            if mode == "off":
                engine.submit(gen).result()
            else:
                rng = random.Random(k)
                slots = ex.plan_pool(e.pool, e.sources, ex.Sources(None), arms,
                                     gen.temperature, e.hot_temperature, rng)
                futures = [engine.submit(r) for r in ex.pool_requests(gen, slots,
                                                                       e.demo_question)]
                texts = [f.result().candidates[0].text for f in futures]
                X = engine._thread.submit(compute_features, engine.model, engine.tokenizer,
                                          [(gen.messages, x) for x in texts]).result()
                ex.select(2, "diversity", rng, X)
            times[mode].append(time.monotonic() - t)
            print(f"cost turn {k} {mode}: {times[mode][-1]:.1f} s", flush=True)
    off, on = (sum(v) / len(v) for v in times.values())
    return {"turns": len(prompts), "seconds_off": round(off, 2), "seconds_on": round(on, 2),
            "ratio": round(on / off, 2), "pool": e.pool, "all": times}


def shown_pairs(answers: dict, X: dict, config, args) -> dict:
    """Per selection, the list of (text_a, text_b) pairs shown, over prompts and plans."""
    import numpy as np

    from assistant import explore as ex

    e = config.explore
    arms = {a.name: a for a in ex.parse_arms(e.arms)}
    n = len(answers["base"])
    out: dict[str, list] = {"off": [(answers["base"][i], answers["base#2"][i])
                                    for i in range(n)], "random": [], "diversity": []}
    for i in range(n):
        for plan in range(args.plans):
            rng = random.Random(f"{i}:{plan}")
            slots = ex.plan_pool(e.pool, e.sources, ex.Sources(None), list(arms.values()),
                                 args.temperature, e.hot_temperature, rng)
            # The user's own answer and a "base" slot are both plain samples: use the two
            # different samples, so a pool never shows one text twice.
            plain = iter(["base", "base#2", "base#2"])
            keys = [f"arm:{s.arm.name}" if s.arm else "hot" if s.source == "hot"
                    else next(plain) for s in slots]
            feats = np.stack([X[k][i] for k in keys])
            for mode in ("random", "diversity"):
                a, b = ex.select(2, mode, rng, feats)
                out[mode].append((answers[keys[a]][i], answers[keys[b]][i]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from adapters.base_model import load_base
    from adapters.features import compute_features
    from assistant import explore as ex
    from assistant.config import load_config
    from assistant.engine import Engine

    torch.set_num_threads(1)
    config = load_config()
    e = config.explore
    base = load_base(config.model.path, config.cache_dir)
    engine = Engine(base.model, base.tokenizer, base.base_id)
    train, heldout = split_prompts(load_prompts(args.data), args.prompts, 0)
    results: dict = {"settings": {**vars(args), "explore": vars(e)}}
    if args.cost_turns and not args.from_answers:
        results["turn_cost"] = turn_cost(engine, train[:args.cost_turns], config, args)
    sources: dict[str, tuple[Arm | None, float, int]] = {
        "base": (None, args.temperature, 0), "base#2": (None, args.temperature, 1),
        "hot": (None, e.hot_temperature, 2)}
    for k, a in enumerate(ex.parse_arms(e.arms)):
        sources[f"arm:{a.name}"] = (a, args.temperature, 3 + k)
        if not args.no_plain_arms and (a.opening or a.closing):
            sources[f"arm:{a.name}{PLAIN}"] = (a, args.temperature, 3 + k)     # same seeds
    answers = (json.loads((args.out / "answers.json").read_text()) if args.from_answers
               else generate(engine, heldout, sources, args, e.demo_question))
    X = {k: compute_features(engine.model, engine.tokenizer,
                             [([{"role": "user", "content": p}], t)
                              for p, t in zip(heldout, v, strict=True)])
         for k, v in answers.items()}
    engine.close()
    pairs = shown_pairs(answers, X, config, args)
    folders = args.personas or [ROOT / "bench" / "personas-extra",
                                Path("/work/shared/personas")]
    personas = [p for f in folders for p in load_personas(f)]
    results["personas"] = {p.name: persona_figures(p, answers, pairs) for p in personas}
    results["arm_features"] = arm_figures(ex.parse_arms(e.arms), answers)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "answers.json").write_text(json.dumps(answers, indent=1))
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = report(results, list(sources))
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


def persona_figures(persona, answers: dict, pairs: dict) -> dict:
    def informative(ps: list) -> float:
        return round(sum(abs(persona.utility(a) - persona.utility(b)) > persona.temperature
                         for a, b in ps) / len(ps), 3)

    def liked_pair(ps: list) -> float:
        return round(sum(bool(liked_features(persona, a)) != bool(liked_features(persona, b))
                         for a, b in ps) / len(ps), 3)

    return {"liked_share": {s: round(sum(bool(liked_features(persona, t)) for t in v) / len(v),
                                     3) for s, v in answers.items()},
            "informative": {m: informative(ps) for m, ps in pairs.items()},
            "pairs_differing_in_liked": {m: liked_pair(ps) for m, ps in pairs.items()},
            "liked": liked_names(persona)}


PLAIN = "~plain"      # an arm's answers without its opening and closing
# A generic detector of each shipped arm's feature, by arm name (an arm not listed is not
# scored). Bench only: the product knows no features, and these are styles, not personas.
ARM_FEATURES: dict[str, tuple[str, Callable[[str], bool]]] = {
    "enthusiastic": ("an exclamation mark", lambda t: "!" in t),
    "example": ("an example phrase", lambda t: bool(re.search(
        r"\b(for example|for instance|such as|e\.g\.)", t, re.I))),
    "question": ("a question in its last 150 characters", lambda t: "?" in t.rstrip()[-150:]),
    "summary": ("a summary phrase", lambda t: bool(re.search(
        r"\b(in short|in summary|to summarize|to sum up|overall|in conclusion)\b", t, re.I))),
    "formal": ("no '!' and a formal connective", lambda t: "!" not in t and bool(re.search(
        r"\b(therefore|however|furthermore|moreover|consequently|thus|hence)\b", t, re.I))),
    "analogy": ("an analogy phrase", lambda t: bool(re.search(
        r"\b(is like|are like|just like|similar to|imagine|think of|analogy|as if)\b", t,
        re.I))),
}


def model_written(arm, text: str) -> str:
    """What the model wrote of a served arm's answer: its opening and closing cue removed."""
    if arm.opening and text.startswith(arm.opening.rstrip()):
        text = text[len(arm.opening.rstrip()):]
    return text.replace(arm.closing_cue, "\n\n", 1) if arm.closing else text


def arm_figures(arms: list, answers: dict) -> dict:
    """Per arm with a detector: share of answers with its feature (base, plain arm, served
    arm, served arm's model-written words) and mean words."""
    out = {}
    for arm in arms:
        if arm.name not in ARM_FEATURES or f"arm:{arm.name}" not in answers:
            continue
        what, has = ARM_FEATURES[arm.name]
        served = answers[f"arm:{arm.name}"]
        texts = {"base": answers["base"], "plain": answers.get(f"arm:{arm.name}{PLAIN}"),
                 "served": served, "served_model_written": [model_written(arm, t)
                                                            for t in served]}
        out[arm.name] = {
            "feature": what, "opening": arm.opening, "closing": arm.closing,
            **{k: round(sum(map(has, v)) / len(v), 3) for k, v in texts.items() if v},
            "words": {k: round(sum(len(t.split()) for t in v) / len(v), 1)
                      for k, v in texts.items() if v and k != "served_model_written"}}
    return out


def arm_report(figures: dict) -> list[str]:
    lines = ["", "Share of answers showing each arm's feature (same prompts and seeds):", "",
             "| arm | feature | steering | base | arm without steering | arm served | "
             "served, model-written part | words base / plain / served |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, f in figures.items():
        steer = " ".join(x for x in (f"opening {f['opening']!r}" if f["opening"] else "",
                                     f"closing {f['closing']!r}" if f["closing"] else "") if x)
        w = f["words"]
        lines.append(f"| {name} | {f['feature']} | {steer} | {f['base']:.2f} | "
                     f"{f.get('plain', float('nan')):.2f} | {f['served']:.2f} | "
                     f"{f['served_model_written']:.2f} | {w['base']} / {w.get('plain', '-')} "
                     f"/ {w['served']} |")
    return lines


def report(results: dict, sources: list[str]) -> str:
    lines = ["# What each persona would be shown (first turns, on the base)", ""]
    cost = results.get("turn_cost")
    if cost:
        lines += [f"Turn cost: ordinary n=2 {cost['seconds_off']} s, exploring (pool "
                  f"{cost['pool']} + features + selection) {cost['seconds_on']} s, ratio "
                  f"{cost['ratio']} ({cost['turns']} turns each, sequential).", ""]
    lines += ["| persona | informative pairs off / on-random / on-diversity | x off "
              "(diversity) | pairs differing in a liked feature off / random / diversity |",
              "| --- | --- | --- | --- |"]
    for name, r in results["personas"].items():
        i, d = r["informative"], r["pairs_differing_in_liked"]
        ratio = f"{i['diversity'] / i['off']:.1f}" if i["off"] else "inf"
        lines.append(f"| {name} | {i['off']:.3f} / {i['random']:.3f} / {i['diversity']:.3f} | "
                     f"{ratio} | {d['off']:.3f} / {d['random']:.3f} / {d['diversity']:.3f} |")
    lines += ["", "Share of answers with any liked feature, per source:", "",
              "| persona | " + " | ".join(sources) + " |", "| --- |" + " --- |" * len(sources)]
    for name, r in results["personas"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r['liked_share'][s]:.2f}"
                                                 for s in sources) + " |")
    lines += arm_report(results.get("arm_features", {}))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
