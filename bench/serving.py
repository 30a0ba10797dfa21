"""Serving many users at once: fused multi-adapter batches, continuous batching, prefix reuse.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.serving [--threads 1] [--tokens 64] [--rows 8]
        [--rounds 2] [--users 16] [--requests 2] [--gap 8] [--seed 0]

One process, one run, the real base (SmolLM2-135M-Instruct), the project's Engine in-process:

1. Batches of `rows` rows x `tokens` new tokens (EOS off, so every row makes all its tokens),
   the phases interleaved per round, median over rounds: the base; each row on its own
   adapter (8 random rank-8 LoRAs on all seven projections, saved with PEFT); all rows on
   one adapter; and rows one at a time on adapters (sequential).
2. Adapter cold load (from disk into the fused stacks) and hot swap after a promotion (the
   user's new version replaces the old one), in ms, median over the adapters.
3. Load: `users` simulated users on the 8 adapters, each sending `requests` requests with
   Poisson arrivals (exponential gaps of mean `gap` s), answers of 16-96 tokens (EOS on):
   the same schedule and seeds against continuous batching and static batching
   (Engine(continuous=False): a batch admits no one until all of its rows end).
   Throughput = tokens / (last answer - first arrival); TTFT from submission, broken down
   into the time queued for free rows (also in decode steps of the running batch, which do
   not depend on how fast the machine is) and the prefill after it.
4. Prefix reuse: a 4-turn chat, TTFT of each later turn with and without reusing the
   earlier turns' KV.

Writes bench/out/serving.json and prints a Markdown table. The machine is shared: compare
ratios within one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROMPTS = ["Give me three tips for sleeping well.",
           "Explain what a blizzard warning is.",
           "How do I make a simple tomato sauce?",
           "What is the difference between a show dog and a regular dog?",
           "Why do people like to go on cruises?",
           "I am looking for a good chocolate cookie recipe.",
           "How can I learn to juggle?",
           "What should I pack for a weekend hike?"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per row in the batches")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the batch phases")
    p.add_argument("--sequential-rows", type=int, default=2,
                   help="rows decoded one at a time in the sequential phase")
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--requests", type=int, default=2, help="requests per simulated user")
    p.add_argument("--gap", type=float, default=8.0, help="mean seconds between a user's requests")
    p.add_argument("--turns", type=int, default=4, help="chat turns in the prefix phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "serving.json")
    return p.parse_args(argv)


def make_adapters(model, folder: Path, count: int, rank: int = 8) -> list[Path]:
    """`count` random rank-`rank` LoRAs on all seven projections, saved by PEFT. The base
    is wrapped in place for saving and unwrapped again (unload)."""
    import torch
    from peft import LoraConfig, get_peft_model

    paths = []
    for i in range(count):
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank,
                                                      target_modules=TARGETS))
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        paths.append(folder / f"a{i}")
        peft_model.save_pretrained(str(paths[-1]))     # PEFT annotates the folder as str
        model = peft_model.unload()
    return paths


def hold(engine) -> threading.Event:
    """Hold the generation thread so that requests submitted meanwhile start together."""
    gate, held = threading.Event(), threading.Event()

    def park() -> None:
        held.set()
        gate.wait()

    engine._thread.submit(park)
    held.wait()           # a loop still finishing the last batch would admit rows one by one
    return gate


def batch_tokens_per_s(engine, refs: list, tokens: int) -> tuple[float, float]:
    """Rows submitted together (row i on refs[i]): tokens per second of the whole batch, by
    the wall clock and per CPU second of this process (with one torch thread the generation
    thread is all that runs, and CPU time is what other processes on a shared machine do
    not steal)."""
    from assistant.engine import GenRequest

    gate = hold(engine)
    reqs = [GenRequest(messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                       temperature=0.7, seed=i, max_tokens=tokens, adapter=ref)
            for i, ref in enumerate(refs)]
    started, cpu = time.perf_counter(), time.process_time()
    futures = [engine.submit(r) for r in reqs]
    gate.set()
    results = [f.result() for f in futures]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    produced = sum(len(r.candidates[0].tokens) for r in results)
    return produced / elapsed, produced / cpu


def batch_phases(engine, refs: list, args: argparse.Namespace) -> dict:
    """Median tokens per wall second of each phase, and under "per_cpu_s" the same per CPU
    second (the one nested dict)."""
    engine.eos_ids = []                       # every row makes all its tokens
    phases = {"base": [None] * args.rows,
              "mixed": [refs[i % len(refs)] for i in range(args.rows)],
              "one_adapter": [refs[0]] * args.rows}
    batch_tokens_per_s(engine, phases["mixed"], 4)          # warm-up, adapters loaded
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in phases}
    for _ in range(args.rounds):
        for name, rows in phases.items():
            runs[name].append(batch_tokens_per_s(engine, rows, args.tokens))
            print(f"  {name}: {runs[name][-1][0]:.1f} tokens/s, "
                  f"{runs[name][-1][1]:.1f} per CPU s", flush=True)
    runs["sequential"] = [batch_tokens_per_s(engine, [refs[i % len(refs)]], args.tokens)
                          for i in range(args.sequential_rows)]
    print(f"  sequential: {runs['sequential']}", flush=True)
    wall = {name: statistics.median(w for w, _ in v) for name, v in runs.items()}
    cpu = {name: statistics.median(c for _, c in v) for name, v in runs.items()}
    return {**wall, "per_cpu_s": cpu}


def adapter_timings(engine, paths: list[Path]) -> dict[str, float]:
    """Cold load of a version never seen, and hot swap of a user's promoted version (the old
    version loaded, then evicted by the new one), in ms: reading and checking the files (done
    by `submit`, off the generation thread) plus installing the weights into the fused stacks
    (on the generation thread, between two decode steps)."""
    from assistant.engine import AdapterRef

    def timed(ref) -> tuple[float, float, float]:
        """(wall ms, CPU ms, wall ms of the read alone)."""
        started, cpu = time.perf_counter(), time.thread_time()
        prepared = engine.lora.prepare(ref.name, ref.path)
        read_ms, read_cpu = (time.perf_counter() - started) * 1000, time.thread_time() - cpu

        def run() -> tuple[float, float]:
            started, cpu = time.perf_counter(), time.thread_time()
            engine._activate(ref, prepared)
            return (time.perf_counter() - started) * 1000, (time.thread_time() - cpu) * 1000
        wall, cpu_ms = engine._control(run).result()
        return read_ms + wall, read_cpu * 1000 + cpu_ms, read_ms

    out: dict[str, list[tuple[float, float, float]]] = {"cold": [], "swap": []}
    for i, path in enumerate(paths):
        out["cold"].append(timed(AdapterRef(1000 + i, 1, path)))
        out["swap"].append(timed(AdapterRef(1000 + i, 2, paths[(i + 1) % len(paths)])))
    result = {}
    for kind, name in (("cold", "cold_load"), ("swap", "hot_swap")):
        result[f"{name}_ms"] = statistics.median(t[0] for t in out[kind])
        result[f"{name}_ms_max"] = max(t[0] for t in out[kind])
        result[f"{name}_cpu_ms"] = statistics.median(t[1] for t in out[kind])
        result[f"{name}_read_ms"] = statistics.median(t[2] for t in out[kind])
    return result


def schedule(args: argparse.Namespace) -> list[tuple[float, int, int, int]]:
    """(arrival s, user, prompt index, max_tokens), the same for both engines."""
    rng = random.Random(args.seed)
    items = []
    for user in range(args.users):
        at = 0.0
        for _ in range(args.requests):
            at += rng.expovariate(1 / args.gap)
            items.append((at, user, rng.randrange(len(PROMPTS)), rng.randint(16, 96)))
    return sorted(items)


def load_phase(engine, refs: list, args: argparse.Namespace) -> dict:
    """Submit the schedule in real time; TTFT per request and overall throughput."""
    from assistant.engine import GenRequest

    plan = schedule(args)
    firsts: list[float] = []
    futures = []
    start, cpu = time.perf_counter(), time.process_time()
    for k, (at, user, prompt, max_tokens) in enumerate(plan):
        time.sleep(max(0.0, at - (time.perf_counter() - start)))
        req = GenRequest(messages=[{"role": "user", "content": PROMPTS[prompt]}],
                         temperature=0.7, seed=k, max_tokens=max_tokens,
                         adapter=refs[user % len(refs)])
        futures.append(engine.submit(req))
    results = [f.result() for f in futures]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    firsts = [r.candidates[0].first_token_ms for r in results]
    queued = [r.queued_ms for r in results]
    steps = [r.queued_steps for r in results]
    tokens = sum(len(c.tokens) for r in results for c in r.candidates)
    return {"requests": len(results), "tokens": tokens, "seconds": elapsed,
            "cpu_seconds": cpu, "tokens_per_s": tokens / elapsed,
            "tokens_per_cpu_s": tokens / cpu,
            "ttft_p50_ms": statistics.median(firsts),
            "ttft_p95_ms": statistics.quantiles(firsts, n=20)[-1],
            # Where the first token waited: queued for rows (ms, and decode steps of the
            # running batch, which do not depend on the machine's speed), then its prefill.
            "queued_p50_ms": statistics.median(queued),
            "queued_p95_ms": statistics.quantiles(queued, n=20)[-1],
            "queued_steps_p50": statistics.median(steps),
            "queued_steps_p95": statistics.quantiles(steps, n=20)[-1],
            "prefill_p50_ms": statistics.median(f - q for f, q in zip(firsts, queued,
                                                                     strict=True)),
            "decode_steps": engine.stats["steps"]}


def prefix_phase(engine, refs: list, args: argparse.Namespace, reuse: bool) -> dict:
    """A chat of `turns` turns on one adapter; TTFT of turns 2.. with or without reuse."""
    from assistant.engine import GenRequest

    engine.prefix_cache_tokens = 8192 if reuse else 0
    engine._prefixes.clear()
    messages = [{"role": "system", "content": "You are a friendly assistant. " * 8}]
    ttfts, prompt_tokens = [], []
    for turn in range(args.turns):
        messages.append({"role": "user", "content": PROMPTS[turn % len(PROMPTS)] * 3})
        result = engine.generate_sync(GenRequest(messages=list(messages), temperature=0,
                                                 max_tokens=48, adapter=refs[0], owner=1))
        cand = result.candidates[0]
        messages.append({"role": "assistant", "content": cand.text})
        if turn:
            ttfts.append(cand.first_token_ms)
            prompt_tokens.append(result.prompt_tokens)
    return {"ttft_ms": ttfts, "prompt_tokens": prompt_tokens,
            "ttft_mean_ms": statistics.mean(ttfts)}


def table(result: dict) -> str:
    b, load, pre = result["batches"], result["load"], result["prefix"]
    lines = ["| measure | value |", "| --- | --- |"]
    for name in ("base", "mixed", "one_adapter", "sequential"):
        lines.append(f"| {name} batch tokens/s | {b[name]:.1f} |")
    cpu = b["per_cpu_s"]
    lines += [f"| mixed / base (wall; per CPU s) | {result['mixed_over_base']:.2f}; "
              f"{cpu['mixed'] / cpu['base']:.2f} |",
              f"| one adapter / base (wall; per CPU s) | {result['one_adapter_over_base']:.2f}; "
              f"{cpu['one_adapter'] / cpu['base']:.2f} |",
              f"| adapter cold load ms (median, max) | {result['adapters']['cold_load_ms']:.0f}, "
              f"{result['adapters']['cold_load_ms_max']:.0f} |",
              f"| hot swap ms (median, max) | {result['adapters']['hot_swap_ms']:.0f}, "
              f"{result['adapters']['hot_swap_ms_max']:.0f} |",
              f"| cold load, hot swap CPU ms (median) | "
              f"{result['adapters']['cold_load_cpu_ms']:.0f}, "
              f"{result['adapters']['hot_swap_cpu_ms']:.0f} |"]
    for mode in ("continuous", "static"):
        m = load[mode]
        lines.append(f"| load {mode}: tokens/s (per CPU s), TTFT p50 / p95 ms | "
                     f"{m['tokens_per_s']:.1f} ({m['tokens_per_cpu_s']:.1f}), "
                     f"{m['ttft_p50_ms']:.0f} / {m['ttft_p95_ms']:.0f} |")
    for mode in ("continuous", "static"):
        m = load[mode]
        lines.append(f"| load {mode}: queued for rows p50 / p95 ms (decode steps); "
                     f"prefill p50 ms | {m['queued_p50_ms']:.0f} / {m['queued_p95_ms']:.0f} "
                     f"({m['queued_steps_p50']:.0f} / {m['queued_steps_p95']:.0f}); "
                     f"{m['prefill_p50_ms']:.0f} |")
    lines += [f"| continuous / static throughput | {result['continuous_over_static']:.2f} |",
              f"| p95 TTFT continuous / static | {result['p95_ttft_continuous_over_static']:.2f} |",
              f"| prefix reuse: TTFT of turns 2-{len(pre['reuse']['ttft_ms']) + 1} ms "
              f"(reuse vs none) | {pre['reuse']['ttft_mean_ms']:.0f} vs "
              f"{pre['none']['ttft_mean_ms']:.0f} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from adapters.base_model import load_base
    from assistant.engine import AdapterRef, Engine

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_base("", ROOT / "data" / "cache")
    folder = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    paths = make_adapters(base.model, folder, args.adapters)
    refs = [AdapterRef(i + 1, 1, p) for i, p in enumerate(paths)]

    def engine(**kw) -> Engine:
        return Engine(base.model, base.tokenizer, base.base_id, max_batch_rows=args.rows,
                      cache_size=max(16, args.adapters + 2), **kw)

    print("batches", flush=True)
    eng = engine()
    batches = batch_phases(eng, refs, args)
    adapters = adapter_timings(eng, paths)
    print(f"  adapters: {adapters}", flush=True)
    eng.eos_ids = Engine(base.model, base.tokenizer, "").eos_ids
    prefix = {"none": prefix_phase(eng, refs, args, reuse=False),
              "reuse": prefix_phase(eng, refs, args, reuse=True)}
    print(f"  prefix: {prefix}", flush=True)
    eng.close()
    load = {}
    for mode in ("continuous", "static"):
        eng = engine(continuous=mode == "continuous", prefix_cache_tokens=0)
        load[mode] = load_phase(eng, refs, args)
        print(f"  load {mode}: {load[mode]}", flush=True)
        eng.close()
    result = {
        "threads": torch.get_num_threads(), "args": {k: str(v) for k, v in vars(args).items()},
        "mixed_over_base": batches["mixed"] / batches["base"],
        "one_adapter_over_base": batches["one_adapter"] / batches["base"],
        "mixed_over_sequential": batches["mixed"] / batches["sequential"],
        "continuous_over_static": load["continuous"]["tokens_per_s"]
        / load["static"]["tokens_per_s"],
        "p95_ttft_continuous_over_static": load["continuous"]["ttft_p95_ms"]
        / load["static"]["ttft_p95_ms"],
        "ttft_p50_ms": {m: load[m]["ttft_p50_ms"] for m in load},
        "ttft_p95_ms": {m: load[m]["ttft_p95_ms"] for m in load},
        "tokens_per_s": {**{k: v for k, v in batches.items() if k != "per_cpu_s"},
                         **{f"load_{m}": load[m]["tokens_per_s"] for m in load}},
        "tokens_per_cpu_s": {**batches["per_cpu_s"],
                             **{f"load_{m}": load[m]["tokens_per_cpu_s"] for m in load}},
        "batches": batches, "adapters": adapters, "load": load, "prefix": prefix,
        "prefix_ttft_reuse_over_none": prefix["reuse"]["ttft_mean_ms"]
        / prefix["none"]["ttft_mean_ms"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
