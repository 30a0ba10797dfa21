"""Training runs of N users on the tiny model: the process worker vs Ray tasks (issue 19).

The same seeded store (N users, each with the same few comparisons, through a real server on
loopback) is copied once per executor; every user's run is queued, the executor is started
and the wall time until every run has a final status is measured. Same seeds, same settings,
one A/B run. Starting Ray itself (ray.init) is timed apart: a server pays it once.

    .venv/bin/python -m bench.ray_training [--users 4] [--parallel 2] [--out bench/out]

Prints a table and writes ray_training.json to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.load import tiny_model_dir
from tests.conftest import start_server, tiny_engine

ROOT = Path(__file__).resolve().parent.parent

# The tests' fast run (tests/test_training_flow.py), gate open: what is measured is the
# executor, not the learning.
FAST = {"ASSISTANT_TRAINING_STEPS": "2", "ASSISTANT_TRAINING_GROUP_SIZE": "2",
        "ASSISTANT_TRAINING_PROMPTS_PER_STEP": "1",
        "ASSISTANT_TRAINING_MAX_COMPLETION_TOKENS": "6", "ASSISTANT_TRAINING_THREADS": "1",
        "ASSISTANT_TRAINING_MIN_HEAD_PAIRS": "0", "ASSISTANT_TRAINING_MIN_HEAD_ACCURACY": "0",
        "ASSISTANT_TRAINING_PROMOTE_MARGIN": "-1e9", "ASSISTANT_TRAINING_KL_BUDGET": "1e9",
        "ASSISTANT_SAFETY_ENABLED": "false", "ASSISTANT_SCHEDULER_ENABLED": "false",
        "ASSISTANT_EXPLORE_ENABLED": "false", "ASSISTANT_ADMIN_KEY": "bench-admin-key-0123456789"}


def seed(data_dir: Path, model_dir: Path, users: int, turns: int) -> None:
    """N users, each with `turns` comparisons (first answer preferred), via the HTTP API."""
    import httpx

    from adapters.base_model import load_tokenizer

    engine = tiny_engine(load_tokenizer(str(model_dir), data_dir / "cache"))
    server, thread, live = start_server(data_dir, engine, ASSISTANT_MODEL_PATH=model_dir)
    try:
        for u in range(users):
            h = live.headers(live.add_user(f"user{u}"))
            for i in range(turns):
                body = httpx.post(f"{live.url}/api/chat", headers=h, timeout=120, json={
                    "content": f"question number {i}", "n": 2, "max_tokens": 4}).json()
                ids = [c["id"] for c in body["candidates"]]
                httpx.post(f"{live.url}/api/comparisons", headers=h, timeout=60,
                           json={"message_ids": ids, "choice": "a"}).raise_for_status()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


def measure(executor: str, seeded: Path, model_dir: Path, parallel: int, work: Path) -> dict:
    """Queue every user's run, start the executor, time until all runs are final."""
    from assistant.config import load_config
    from assistant.scheduler import training_scheduler
    from feedback_store import runs
    from feedback_store.db import Store

    data_dir = work / executor
    shutil.copytree(seeded, data_dir)
    env = {**FAST, "ASSISTANT_DATA_DIR": str(data_dir), "ASSISTANT_MODEL_PATH": str(model_dir),
           "ASSISTANT_TRAINING_EXECUTOR": executor,
           "ASSISTANT_TRAINING_MAX_PARALLEL_RUNS": str(parallel)}
    config = load_config(ROOT / "config.toml", env=env)
    store = Store(config.db_path)
    ray_init = None
    if executor == "ray":
        from assistant.ray_executor import connect

        t = time.perf_counter()
        connect(config)
        ray_init = time.perf_counter() - t
    queued = store.write_sync(runs.request_training, None, True, 1, "bench")
    scheduler = training_scheduler(config, store)
    started = time.perf_counter()
    scheduler.start()
    final = wait_final(store, [r["id"] for r in queued])
    wall = time.perf_counter() - started
    scheduler.shutdown()
    store.close()
    if executor == "ray":
        import ray

        ray.shutdown()
    return {"executor": executor, "max_parallel_runs": parallel if executor == "ray" else 1,
            "runs": len(final), "wall_seconds": round(wall, 1),
            "ray_init_seconds": None if ray_init is None else round(ray_init, 1),
            "statuses": [r["status"] for r in final],
            "run_seconds": [round(sum((r["metrics"] or {}).get("seconds", {}).values()), 1)
                            for r in final]}


def wait_final(store, run_ids: list[int], timeout: float = 3600) -> list[dict]:
    from feedback_store import runs

    deadline = time.time() + timeout
    while time.time() < deadline:
        got = [store.write_sync(runs.get_run, i) for i in run_ids]
        if all(r["status"] in runs.FINAL for r in got):
            return got
        time.sleep(0.5)
    raise RuntimeError(f"runs {run_ids} not final after {timeout} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--turns", type=int, default=3, help="comparisons per user")
    p.add_argument("--parallel", type=int, default=2, help="training.max_parallel_runs (ray)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.getLogger("httpx").setLevel(logging.WARNING)      # one line per seeding request
    with tempfile.TemporaryDirectory(prefix="bench-ray-training-") as tmp:
        work = Path(tmp)
        model_dir = tiny_model_dir(work / "tiny-model")
        seed(work / "seeded", model_dir, args.users, args.turns)
        rows = [measure(executor, work / "seeded", model_dir, args.parallel, work)
                for executor in ("process", "ray")]
    print(f"{'executor':10} {'parallel':>8} {'runs':>4} {'wall s':>8} {'ray.init s':>10}  "
          "statuses")
    for r in rows:
        init = "-" if r["ray_init_seconds"] is None else f"{r['ray_init_seconds']:.1f}"
        print(f"{r['executor']:10} {r['max_parallel_runs']:>8} {r['runs']:>4} "
              f"{r['wall_seconds']:>8.1f} {init:>10}  {','.join(r['statuses'])}")
    speedup = rows[0]["wall_seconds"] / rows[1]["wall_seconds"]
    print(f"process / ray wall time: {speedup:.2f}x  (cores: {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.1f}: a shared machine, one A/B run)")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "ray_training.json"
    out.write_text(json.dumps({"users": args.users, "turns": args.turns, "rows": rows,
                               "process_over_ray": round(speedup, 2),
                               "cpu_count": os.cpu_count(),
                               "load_average": os.getloadavg()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
