"""One user's full training run on the real model, and chat latency while it runs.

Measures the two targets of the training issue over HTTP, on a fresh server:
- a full run (features, reward head, RL, gate) for a user with --events feedback events,
  with the time of each phase;
- chat time to first token (TTFT), p50/p90, idle and while that run is training.

    .venv/bin/python -m bench.training_run [--events 60] [--probes 8] [--out bench/out]

Prints a table and writes training_run.json to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

from bench.harness import Api, load_prompts, server

ROOT = Path(__file__).resolve().parent.parent
PROBE = "In one sentence, what is a good breakfast?"


def ttft(url: str, key: str) -> float:
    """Seconds from sending a streamed chat request to its first token."""
    started = time.perf_counter()
    with httpx.stream("POST", f"{url}/api/chat", headers={"Authorization": f"Bearer {key}"},
                      json={"content": PROBE, "max_tokens": 8, "stream": True},
                      timeout=300) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("event: delta"):
                first = time.perf_counter() - started
                for _ in lines:                # drain, so the next probe starts clean
                    pass
                return first
    raise RuntimeError("the stream ended without a token")


def give_feedback(api: Api, prompts: list[str], events: int) -> float:
    """`events` comparisons preferring the shorter answer (a simple, learnable taste)."""
    started = time.perf_counter()
    for prompt in prompts[:events]:
        cands = api.call("POST", "/api/chat", {"content": prompt, "n": 2,
                                              "max_tokens": 64})["candidates"]
        a, b = cands
        choice = "a" if len(a["content"]) <= len(b["content"]) else "b"
        api.call("POST", "/api/comparisons", {"message_ids": [a["id"], b["id"]],
                                              "choice": choice})
    return time.perf_counter() - started


def probes_while(url: str, key: str, admin: Api, run_id: int, limit: int) -> tuple[list, dict]:
    """TTFT probes while the run is running; then wait for it to finish."""
    samples: list[float] = []
    while True:
        run = admin.call("GET", f"/admin/runs/{run_id}")
        if run["status"] in ("succeeded", "rejected", "failed"):
            return samples, run
        if run["status"] == "running" and len(samples) < limit:
            samples.append(ttft(url, key))
        time.sleep(2)


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "p50": statistics.median(values),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=60)
    p.add_argument("--probes", type=int, default=8)
    p.add_argument("--prompts", type=Path, default=ROOT.parent / "shared/data/prompts-dev.jsonl")
    p.add_argument("--out", type=Path, default=ROOT / "bench/out")
    args = p.parse_args(argv)
    ns = argparse.Namespace(url=None, quick=False, env=[], keep_data=False)
    with server(ns) as srv:
        admin = Api(srv.url, srv.admin_key)
        key = admin.call("POST", "/admin/users", {"name": "latency"})["api_key"]
        user = Api(srv.url, key)
        feedback_s = give_feedback(user, load_prompts(args.prompts), args.events)
        idle = [ttft(srv.url, key) for _ in range(args.probes)]
        run = admin.call("POST", "/admin/train", {"user": "latency", "force": True})["queued"][0]
        started = time.perf_counter()
        busy, final = probes_while(srv.url, key, admin, run["id"], args.probes)
        wall = time.perf_counter() - started
    result = {"events": args.events, "feedback_seconds": round(feedback_s, 1),
              "run": {"status": final["status"], "wall_seconds": round(wall, 1),
                      "phases": (final.get("metrics") or {}).get("seconds"),
                      "decision": (final.get("metrics") or {}).get("decision"),
                      "error": final.get("error")},
              "ttft_idle": summary(idle), "ttft_training": summary(busy)}
    if idle and busy:
        result["ttft_p50_ratio"] = result["ttft_training"]["p50"] / result["ttft_idle"]["p50"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_run.json").write_text(json.dumps(result, indent=1))
    print_table(result)
    return 0


def print_table(r: dict) -> None:
    print(f"\nfull run for {r['events']} events: {r['run']['status']} in "
          f"{r['run']['wall_seconds']} s (queue to final); phases: {r['run']['phases']}")
    print(f"gate: {r['run']['decision']}")
    print("| TTFT (s) | n | p50 | p90 |\n| --- | --- | --- | --- |")
    for name in ("ttft_idle", "ttft_training"):
        s = r[name]
        if s["n"]:
            print(f"| {name[5:]} | {s['n']} | {s['p50']:.2f} | {s['p90']:.2f} |")
    if "ttft_p50_ratio" in r:
        print(f"p50 ratio training/idle: {r['ttft_p50_ratio']:.2f} (target <= 2)")


if __name__ == "__main__":
    sys.exit(main())
