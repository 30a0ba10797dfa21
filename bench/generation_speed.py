"""Single-stream generation speed of the engine on the real base: tokens/s and TTFT.

    .venv/bin/python -m bench.generation_speed [--threads 0] [--tokens 128] [--repeats 3]

Runs the engine in-process (no HTTP), greedy, on a few prompts; prints a table and writes
bench/out/generation_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROMPTS = ["Give me three tips for sleeping well.",
           "Explain what a blizzard warning is.",
           "How do I make a simple tomato sauce?"]


def measure(engine, prompt: str, tokens: int, n: int = 1) -> dict:
    from assistant.engine import GenRequest

    started = time.perf_counter()
    result = engine.generate_sync(GenRequest(messages=[{"role": "user", "content": prompt}],
                                             n=n, temperature=0 if n == 1 else 0.7,
                                             max_tokens=tokens))
    total = time.perf_counter() - started
    produced = sum(len(c.tokens) for c in result.candidates)
    return {"ttft_ms": result.candidates[0].first_token_ms, "tokens": produced,
            "seconds": total, "tokens_per_s": produced / total}


def main(argv: list[str] | None = None) -> int:
    import torch

    from adapters.base_model import load_base
    from assistant.engine import Engine

    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_base("", ROOT / "data" / "cache")
    engine = Engine(base.model, base.tokenizer, base.base_id)
    measure(engine, "Hello", 8)                      # warm-up
    single = [measure(engine, p, args.tokens) for p in PROMPTS * args.repeats]
    batch3 = [measure(engine, p, args.tokens, n=3) for p in PROMPTS]
    result = {"threads": torch.get_num_threads(), "max_tokens": args.tokens,
              "single": {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in single),
                         "ttft_ms_p50": statistics.median(r["ttft_ms"] for r in single)},
              "n3": {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in batch3),
                     "ttft_ms_p50": statistics.median(r["ttft_ms"] for r in batch3)}}
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation_speed.json").write_text(json.dumps(result, indent=1))
    print("| stream | threads | tokens/s (median) | TTFT ms (p50) |\n| --- | --- | --- | --- |")
    for name in ("single", "n3"):
        r = result[name]
        print(f"| {name} | {result['threads']} | {r['tokens_per_s']:.1f} | "
              f"{r['ttft_ms_p50']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
