"""Time the RL core on the real base: single steps at several shapes, then a full default run.

    .venv/bin/python -m bench.policy_step [--threads 1] [--steps 20]

Uses a toy reward, minus the completion's length in characters / 100 ("be brief"), which
the base can visibly learn in a few steps. Prints a table and writes bench/out/policy_step.json.
Wall-clock seconds suffer when other processes share the machine; cpu_seconds (process CPU
time, one torch thread) is the cost on an idle core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from adapters import gate, policy
from adapters.base_model import load_base
from adapters.records import StepRecord

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "Tell me about the history of Rome.", "How do I bake sourdough bread?",
    "What is a neural network?", "Give me tips for sleeping better.",
    "Explain how vaccines work.", "Write a short poem about autumn.",
    "What should I pack for a weekend hiking trip?", "How does a credit score work?",
    "Why is the sky blue?", "Suggest a plan to learn Spanish in three months.",
]
HELDOUT = ["What are the benefits of drinking water?", "How do airplanes fly?",
           "Give me an idea for a birthday present.", "What is photosynthesis?"]


def chat(questions: list[str]) -> list[list[dict]]:
    return [[{"role": "user", "content": q}] for q in questions]


def brevity(prompts: list[list[dict]], completions: list[str]) -> list[float]:
    return [-len(c) / 100 for c in completions]


def one_step(base, settings: policy.PolicySettings) -> dict:
    started, cpu = time.perf_counter(), time.process_time()
    model, records = policy.train_policy(base.model, base.tokenizer, chat(QUESTIONS), brevity,
                                         settings)
    model.unload()          # give the plain base back for the next configuration
    rec = records[0]
    return {"group_size": settings.group_size, "prompts": settings.prompts_per_step,
            "tokens": settings.max_completion_tokens, "bf16": settings.bf16,
            "completion_len": rec["completion_len"], "gen_s": rec["gen_seconds"],
            "step_s": rec["seconds"], "step_cpu_s": rec["cpu_seconds"],
            "total_s_with_setup": time.perf_counter() - started,
            "total_cpu_s_with_setup": time.process_time() - cpu}


def full_run(base, settings: policy.PolicySettings) -> dict:
    def show(r: StepRecord) -> None:
        print(f"  step {r['step']:2d} reward {r['reward_mean']:+.3f} ±{r['reward_std']:.3f} "
              f"kl {r['kl']:.4f} len {r['completion_len']:5.1f} loss {r['loss']:+.4f} "
              f"{r['seconds']:5.1f}s (cpu {r['cpu_seconds']:5.1f}s)", flush=True)

    started, cpu = time.perf_counter(), time.process_time()
    model, records = policy.train_policy(base.model, base.tokenizer, chat(QUESTIONS), brevity,
                                         settings, progress=show)
    rl = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}
    cpu = time.process_time()
    gated = gate.evaluate(model, base.tokenizer, "default", None, chat(HELDOUT), brevity,
                          gate.GateSettings(max_completion_tokens=settings.max_completion_tokens))
    # A plain dict: the bench adds its CPU time, which GateMetrics has no key for.
    metrics = {**gated, "cpu_seconds": time.process_time() - cpu}
    model.unload()
    first = statistics.mean(r["reward_mean"] for r in records[:5])
    last = statistics.mean(r["reward_mean"] for r in records[-5:])
    return {"settings": dataclasses.asdict(settings), "rl": rl, "records": records,
            "reward_first5": first, "reward_last5": last, "reward_went_up": last > first,
            "gate_vs_base": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=policy.PolicySettings().steps,
                        help="RL steps of the full run (default: production's, training.steps)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "policy_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_base("", ROOT / "data" / "cache")
    defaults = policy.PolicySettings()
    shapes = [dataclasses.replace(defaults, steps=1, group_size=k, prompts_per_step=p,
                                  max_completion_tokens=t)
              for k, p, t in [(4, 1, 48), (8, 1, 48), (4, 1, 96), (8, 1, 96), (4, 2, 96)]]
    shapes.append(dataclasses.replace(shapes[-1], bf16=False))
    print(f"{'k':>3} {'P':>2} {'tok':>4} {'bf16':>5} {'len':>5} {'gen s':>6} {'step s':>7} "
          f"{'cpu s':>6}")
    steps = []
    for settings in shapes:
        row = one_step(base, settings)
        steps.append(row)
        print(f"{row['group_size']:3d} {row['prompts']:2d} {row['tokens']:4d} "
              f"{row['bf16']!s:>5} {row['completion_len']:5.1f} {row['gen_s']:6.1f} "
              f"{row['step_s']:7.1f} {row['step_cpu_s']:6.1f}", flush=True)
    print(f"full run with the defaults, {args.steps} steps:")
    run = full_run(base, dataclasses.replace(defaults, steps=args.steps))
    print(f"RL {run['rl']['seconds']:.0f}s wall, {run['rl']['cpu_seconds']:.0f}s cpu; "
          f"reward first 5 steps {run['reward_first5']:+.3f} -> last 5 {run['reward_last5']:+.3f}"
          f" (went up: {run['reward_went_up']})")
    g = run["gate_vs_base"]
    print(f"gate on {g['n_prompts']} held-out prompts vs base: gain {g['reward_gain']:+.3f}, "
          f"win rate {g['win_rate']:.2f}, KL {g['candidate_kl']:.4f}, len "
          f"{g['candidate_len']:.0f} vs {g['baseline_len']:.0f}, {g['seconds']:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "base_id": base.base_id,
                                    "one_step": steps, "full_run": run}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
