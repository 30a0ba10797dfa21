"""Serving replicas behind Ray Serve: 16 simulated users over loopback HTTP, 2 replicas vs 1.

One process: a local Ray instance, the engine deployment ([serving] backend = "ray") and the
Litestar app under uvicorn on a loopback port, as `assistant serve` runs them. Each user has
their own random LoRA adapter (registered as version 1); every user sends --turns greedy
questions (temperature 0, --max-tokens), one after the other, all users at once. The same
prompts run against 2 replicas, then against 1 (the deployment redeployed on the same Ray).

Checked: every answer names adapter version 1 and equals what the app's local engine
answers through that user's adapter (same weights, greedy), and no request fails.
Reported: wall time, completion tokens per second, latency percentiles, the ratio.

    .venv/bin/python -m bench.ray_serving --real            # SmolLM2-135M (data/cache)
    .venv/bin/python -m bench.ray_serving                   # the tiny random model

Each replica decodes on one thread and holds 1 logical CPU; the machine has 2 cores and is
shared with other jobs, so one A/B run's ratio is what counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx

from assistant.config import Config, load_config
from assistant.engine import AdapterRef, GenRequest
from bench.load import free_port, tiny_model_dir
from bench.serving import make_adapters

ROOT = Path(__file__).resolve().parent.parent

ADMIN_KEY = "bench-admin-key-0123456789"
QUESTIONS = ["What is a good way to start learning to cook?",
             "How do I keep a houseplant alive?",
             "Explain what a budget is in two sentences.",
             "Give me one tip for sleeping better."]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--real", action="store_true", help="the real base (else the tiny model)")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--turns", type=int, default=2, help="questions per user")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ray-serving.json")
    args = p.parse_args(argv)
    if not 1 <= args.users <= 64 or not 1 <= args.turns <= 8 or not 1 <= args.max_tokens <= 256:
        p.error("bounded: --users 1..64, --turns 1..8, --max-tokens 1..256")
    return args


def make_config(work: Path, real: bool) -> Config:
    data = work / "data"
    data.mkdir()
    env = {"ASSISTANT_DATA_DIR": str(data), "ASSISTANT_ADMIN_KEY": ADMIN_KEY,
           "ASSISTANT_SCHEDULER_ENABLED": "false", "ASSISTANT_EXPLORE_ENABLED": "false",
           "ASSISTANT_SAFETY_ENABLED": "false", "ASSISTANT_MODEL_THREADS": "1",
           "ASSISTANT_PORT": str(free_port()), "ASSISTANT_SERVING_BACKEND": "ray",
           "ASSISTANT_SERVER_LOG_LEVEL": "warning"}
    if real:        # the converted base, not converted again
        (data / "cache").symlink_to((ROOT / "data" / "cache").resolve())
    else:
        env["ASSISTANT_MODEL_PATH"] = str(tiny_model_dir(work / "tiny"))
    return load_config(ROOT / "config.toml", env=env)


class App:
    """The app on backend ray, in a uvicorn thread."""

    def __init__(self, config: Config, engine) -> None:
        import uvicorn

        from assistant.app import create_app

        self.config, self.engine = config, engine
        self.app = create_app(config, engine)
        self.url = f"http://127.0.0.1:{config.server.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1",
                                                    port=config.server.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the app did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def add_users(app: App, count: int, local) -> list[tuple[str, AdapterRef]]:
    """`count` users, each with their own random adapter as version 1."""
    from adapters.base_model import load_base
    from feedback_store.db import connect

    folder = app.config.adapters_dir
    base = load_base(app.config.model.path, app.config.cache_dir).model     # a copy to wrap
    paths = make_adapters(base, folder / "_made", count)
    users, db = [], connect(app.config.db_path)
    for i, path in enumerate(paths):
        r = httpx.post(f"{app.url}/admin/users", json={"name": f"u{i}"},
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        r.raise_for_status()
        user_id = r.json()["id"]
        dest = folder / f"u{i}" / "1"
        dest.parent.mkdir(parents=True)
        path.rename(dest)
        with db.conn:
            db["adapter_versions"].insert({"user_id": user_id, "version": 1,
                                           "path": f"u{i}/1", "base_id": local.base_id})
            db["users"].update(user_id, {"current_version": 1})
        users.append((r.json()["api_key"], AdapterRef(user_id, 1, dest)))
    db.close()
    return users


def expected_answers(local, users, args) -> dict[tuple[int, int], str]:
    """What the local engine answers each (user, question) through the user's adapter."""
    futures = {}
    for i, (_, ref) in enumerate(users):
        for t in range(args.turns):
            req = GenRequest(messages=[{"role": "user", "content": QUESTIONS[t % 4]}],
                             temperature=0, max_tokens=args.max_tokens, adapter=ref)
            futures[(i, t)] = local.submit(req)
    return {k: f.result().candidates[0].text for k, f in futures.items()}


def one_user(app: App, i: int, key: str, args) -> list[dict]:
    out = []
    with httpx.Client(timeout=600) as client:
        for t in range(args.turns):
            start = time.perf_counter()
            r = client.post(f"{app.url}/api/chat", headers={"Authorization": f"Bearer {key}"},
                            json={"content": QUESTIONS[t % 4], "temperature": 0,
                                  "max_tokens": args.max_tokens})
            row = {"user": i, "turn": t, "status": r.status_code,
                   "seconds": time.perf_counter() - start}
            if r.status_code == 200:
                cand = r.json()["candidates"][0]
                row.update(text=cand["content"], version=cand["adapter_version"],
                           tokens=cand["completion_tokens"])
            out.append(row)
    return out


def run_phase(app: App, users, expected, args) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(len(users)) as pool:
        rows = [r for rs in pool.map(lambda iu: one_user(app, iu[0], iu[1][0], args),
                                     enumerate(users)) for r in rs]
    wall = time.perf_counter() - start
    ok = [r for r in rows if r["status"] == 200]
    right = [r for r in ok if r["version"] == 1 and r["text"] == expected[(r["user"],
                                                                            r["turn"])]]
    lat = sorted(r["seconds"] for r in ok)
    tokens = sum(r["tokens"] for r in ok)
    return {"requests": len(rows), "errors": len(rows) - len(ok), "right_adapter": len(right),
            "wall_s": round(wall, 2), "completion_tokens": tokens,
            "tokens_per_s": round(tokens / wall, 2),
            "latency_p50_s": round(statistics.median(lat), 2) if lat else None,
            "latency_max_s": round(lat[-1], 2) if lat else None}


def table(result: dict) -> str:
    lines = ["| replicas | requests | errors | right adapter | wall s | tokens/s | p50 s "
             "| max s |", "|---|---|---|---|---|---|---|---|"]
    for n, p in result["phases"].items():
        lines.append(f"| {n} | {p['requests']} | {p['errors']} | {p['right_adapter']} | "
                     f"{p['wall_s']} | {p['tokens_per_s']} | {p['latency_p50_s']} | "
                     f"{p['latency_max_s']} |")
    lines.append(f"\nthroughput 2 replicas / 1 replica: {result['ratio']}x "
                 f"({result['model']}, {result['users']} users x {result['turns']} turns x "
                 f"{result['max_tokens']} tokens; 2 shared cores)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray
    from ray import serve

    from assistant.cli import build_engine
    from assistant.ray_serving import remote_engine, start

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        config = make_config(Path(tmp), args.real)
        local = build_engine(config)
        engine = remote_engine(config, local, start(replace_replicas(config, 2), num_cpus=2))
        app = App(config, engine)
        try:
            users = add_users(app, args.users, local)
            expected = expected_answers(local, users, args)
            phases = {}
            for n in (2, 1):
                if n != 2:
                    engine.handle = start(replace_replicas(config, n))     # type: ignore
                phases[str(n)] = run_phase(app, users, expected, args)
                print(f"{n} replica(s): {phases[str(n)]}", flush=True)
        finally:
            app.stop()
            serve.shutdown()
            ray.shutdown()
            local.close()
    one, two = phases["1"]["tokens_per_s"], phases["2"]["tokens_per_s"]
    result = {"model": local.base_id if args.real else "tiny random Llama (2 layers)",
              "users": args.users, "turns": args.turns, "max_tokens": args.max_tokens,
              "phases": phases, "ratio": round(two / one, 2) if one else None,
              "machine": "2 cores, shared with other jobs; 1 torch thread per replica",
              "command": "bench/ray_serving.py " + " ".join(argv or sys.argv[1:])}
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    bad = any(p["errors"] or p["right_adapter"] != p["requests"] for p in phases.values())
    return 1 if bad else 0


def replace_replicas(config: Config, n: int) -> Config:
    return replace(config, serving=replace(config.serving, replicas=n))


if __name__ == "__main__":
    sys.exit(main())
