"""How personal can answers from the base model's own repertoire be? A ceiling for the
specificity target of bench/personalize.py, with no training at all.

    .venv/bin/python -m bench.best_of_base [--personas DIR] [--prompts-n 48] [--k 4]
        [--max-tokens 128] [--out bench/out/best_of_base]

Samples K answers per prompt from the base (the product's engine and sampling settings,
seeded), then imagines for each persona j an adapter that has learned j perfectly within
what the base already writes: on every prompt it answers with the sample j likes best. The
matrix gives, for judge i, how often that answer beats one of the other base samples (ties
count half), the same reading as personalize.py's specificity matrix (win rate vs base). If
judge i already likes persona j's best-of-K answers, no adapter can be specific for i
against j without writing something the base never does.

Writes samples.json (reuse with --samples) and results.json to --out, prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from bench.personas import Persona, load_personas

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--personas", type=Path, default=ROOT.parent / "shared" / "personas")
    p.add_argument("--prompts", type=Path,
                   default=ROOT.parent / "shared" / "data" / "prompts-dev.jsonl")
    p.add_argument("--prompts-n", type=int, default=48)
    p.add_argument("--k", type=int, default=4, help="samples per prompt (at most 8)")
    p.add_argument("--max-tokens", type=int, default=128, help="as personalize.py's cap")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=Path, help="reuse this samples.json instead of sampling")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "best_of_base")
    args = p.parse_args(argv)
    if not 2 <= args.k <= 8:
        p.error(f"--k: must be from 2 to 8; got {args.k}")
    return args


def sample(args: argparse.Namespace) -> list[dict]:
    import torch

    from adapters.base_model import load_base
    from assistant.engine import Engine, GenRequest

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = [json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines()
               if line.strip()]
    random.Random(args.seed).shuffle(prompts)
    base = load_base("", ROOT / "data" / "cache")
    engine = Engine(base.model, base.tokenizer, base.base_id, max_batch_rows=args.k)
    out = []
    for i, prompt in enumerate(prompts[:args.prompts_n]):
        result = engine.generate_sync(GenRequest(
            messages=[{"role": "user", "content": prompt}], n=args.k,
            temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed + i))
        out.append({"prompt": prompt, "samples": [c.text for c in result.candidates]})
        print(f"{i + 1}/{args.prompts_n} prompts sampled", flush=True)
    return out


def beats(judge: Persona, answer: str, others: list[str]) -> float:
    """Share of `others` that `answer` beats by judge's utility, ties counting half."""
    u, theirs = judge.utility(answer), [judge.utility(o) for o in others]
    return sum((u > v) + 0.5 * (u == v) for v in theirs) / len(others)


def matrix(personas: list[Persona], samples: list[dict]) -> dict[str, dict[str, float]]:
    """judge -> persona -> mean over prompts of `beats(judge, persona's best sample, rest)`."""
    table: dict[str, dict[str, float]] = {}
    for judge in personas:
        table[judge.name] = {}
        for liked in personas:
            scores = []
            for row in samples:
                answers = row["samples"]
                best = max(range(len(answers)), key=lambda k: liked.utility(answers[k]))
                scores.append(beats(judge, answers[best], answers[:best] + answers[best + 1:]))
            table[judge.name][liked.name] = sum(scores) / len(scores)
    return table


def report(table: dict[str, dict[str, float]]) -> str:
    names = list(table)
    lines = ["| judge \\ best-of-K for | " + " | ".join(names) + " | own - best other |",
             "| --- " * (len(names) + 2) + "|"]
    for judge in names:
        others = [table[judge][n] for n in names if n != judge]
        gap = table[judge][judge] - max(others) if others else float("nan")
        lines.append(f"| {judge} | " + " | ".join(f"{table[judge][n]:.3f}" for n in names)
                     + f" | {gap:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    personas = load_personas(args.personas)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.samples:
        samples = json.loads(args.samples.read_text())
    else:
        samples = sample(args)
        (args.out / "samples.json").write_text(json.dumps(samples, indent=1))
    table = matrix(personas, samples)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps(
        {"settings": settings, "prompts": len(samples), "matrix": table}, indent=1))
    print(report(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
