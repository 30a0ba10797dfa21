"""Load test: N users chatting, voting and training at once against a fresh server.

Starts `python -m assistant serve` on loopback with a temporary data directory (a tiny random
model by default, for speed; --real for the real base), runs --users simulated users for
--duration seconds (each: chat with two candidates, compare them, thumbs every third turn),
and meanwhile trains user u0 --runs times, one after the other. Load goes on until both the
duration has passed and the runs have finished (never past --duration + --run-timeout).

Then it stops the server and checks every write the server acknowledged against the
database: acked vs stored messages, comparisons and thumbs. Prints a Markdown table and
writes JSON to --out.

    .venv/bin/python -m bench.load                        # tiny model, 8 users, 60 s
    .venv/bin/python -m bench.load --real --users 8 --duration 180 --runs 1

Targets: 0 errors, 0 lost writes, 0 failed runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.harness import FINAL, free_port, sigterm_exits

ROOT = Path(__file__).resolve().parent.parent
MAX_USERS = 64                  # bounded: this is a loopback bench, not a stress tool
MAX_DURATION = 1800
TINY_TRAINING = {"ASSISTANT_TRAINING_STEPS": "2", "ASSISTANT_TRAINING_GROUP_SIZE": "2",
                 "ASSISTANT_TRAINING_PROMPTS_PER_STEP": "1",
                 "ASSISTANT_TRAINING_MAX_COMPLETION_TOKENS": "6"}
# A real run kept to a few minutes on 2 shared cores: fewer, shorter RL samples.
REAL_TRAINING = {"ASSISTANT_TRAINING_STEPS": "4", "ASSISTANT_TRAINING_MAX_COMPLETION_TOKENS": "32"}


def tiny_model_dir(path: Path) -> Path:
    """A 2-layer random Llama over the real tokenizer (as the test suite's), saved to path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from adapters.base_model import load_tokenizer

    tokenizer = load_tokenizer("", ROOT / "data" / "cache")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class Server:
    """`python -m assistant serve` in a child process; its output kept in memory only (the
    first start prints the admin user's key: it must not land in a file)."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port, self.key = free_port(), "bench-" + secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        full = dict(os.environ, **env, ASSISTANT_DATA_DIR=str(data_dir),
                    ASSISTANT_HOST="127.0.0.1", ASSISTANT_PORT=str(self.port),
                    ASSISTANT_ADMIN_KEY=self.key, ASSISTANT_SCHEDULER_ENABLED="false",
                    OMP_NUM_THREADS="1")
        self.output: deque[str] = deque(maxlen=200)
        self.proc = subprocess.Popen([sys.executable, "-m", "assistant", "serve"], cwd=ROOT,
                                     env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None  # Popen(stdout=PIPE) above
        for line in self.proc.stdout:
            self.output.append(line.rstrip())

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("server exited:\n" + "\n".join(self.output))
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit("server did not become healthy:\n" + "\n".join(self.output))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            if error:
                self.errors[kind].append(error)


@dataclass
class Acked:
    messages: set[int] = field(default_factory=set)
    comparisons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    thumbs: dict[tuple[str, int], str] = field(default_factory=dict)


class User(threading.Thread):
    def __init__(self, name: str, key: str, url: str, args, stats: Stats, acked: Acked,
                 stop: threading.Event, seed: int) -> None:
        super().__init__(daemon=True, name=name)
        self.name_, self.stats, self.acked, self.stop_event = name, stats, acked, stop
        self.args, self.rng = args, random.Random(seed)
        self.client = httpx.Client(base_url=url, timeout=args.request_timeout,
                                   headers={"Authorization": f"Bearer {key}"})
        self.votes = 0

    def call(self, kind: str, method: str, path: str, body: dict) -> dict | None:
        started = time.perf_counter()
        error = None
        try:
            r = self.client.request(method, path, json=body)
            if r.status_code != 200:
                error = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.stats.record(kind, time.perf_counter() - started, error)
        return None if error else r.json()

    def run(self) -> None:
        turn = 0
        while not self.stop_event.is_set():
            turn += 1
            body = self.call("chat", "POST", "/api/chat", {
                "content": f"{self.name_}, question {turn}: name a fruit and a colour.",
                "n": 2, "max_tokens": self.args.max_tokens})
            if body is None:
                continue
            a, b = (c["id"] for c in body["candidates"])
            with self.stats.lock:
                self.acked.messages |= {a, b}
            choice = self.rng.choice("ab")
            if self.call("compare", "POST", "/api/comparisons",
                         {"message_ids": [a, b], "choice": choice}) is not None:
                self.votes += 1
                with self.stats.lock:
                    self.acked.comparisons[self.name_] += 1
            if turn % 3 == 0:
                value = self.rng.choice(["up", "down"])
                if self.call("thumbs", "PUT", f"/api/messages/{a}/thumbs",
                             {"value": value}) is not None:
                    with self.stats.lock:
                        self.acked.thumbs[(self.name_, a)] = value


def train_runs(server: Server, user: User, count: int, timeout: float,
               stats: Stats) -> list[dict]:
    """Train the user `count` times in a row (once it has 3 votes); each run's outcome."""
    admin = httpx.Client(base_url=server.url, timeout=60,
                         headers={"Authorization": f"Bearer {server.key}"})
    while user.votes < 3 and user.is_alive():
        time.sleep(0.5)
    outcomes: list[dict] = []
    for _ in range(count):
        started = time.perf_counter()
        r = admin.post("/admin/train", json={"user": user.name_, "force": True})
        stats.record("train", time.perf_counter() - started,
                     None if r.status_code == 202 else f"{r.status_code} {r.text[:200]}")
        if r.status_code != 202:
            outcomes.append({"status": "not queued", "error": r.text[:300]})
            continue
        run_id, deadline = r.json()["queued"][0]["id"], time.time() + timeout
        run: dict = {"status": "queued"}
        while run["status"] not in FINAL and time.time() < deadline:
            time.sleep(1.0)
            run = admin.get(f"/admin/runs/{run_id}").json()
        outcomes.append({"id": run_id, "status": run["status"], "error": run.get("error"),
                         "seconds": round(time.perf_counter() - started, 1),
                         "adapter_version": run.get("adapter_version")})
    return outcomes


def stored(db_path: Path, acked: Acked) -> dict:
    """What of the acknowledged writes is in the database (read after the server stopped)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    ids = {r[0] for r in db.execute("select id from messages where role = 'assistant'")}
    comparisons = dict(db.execute("select u.name, count(*) from comparisons c "
                                  "join users u on u.id = c.user_id group by u.name"))
    thumbs = {(name, mid): value for name, mid, value in db.execute(
        "select u.name, t.message_id, t.value from thumbs t join users u on u.id = t.user_id")}
    db.close()
    return {
        "messages": (len(acked.messages), len(acked.messages & ids)),
        "comparisons": (sum(acked.comparisons.values()),
                        sum(min(n, comparisons.get(u, 0)) for u, n in acked.comparisons.items())),
        "thumbs": (len(acked.thumbs),
                   sum(thumbs.get(k) == v for k, v in acked.thumbs.items())),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(result: dict) -> str:
    lines = [f"## bench/load.py: {result['model']}, {result['users']} users, "
             f"{result['seconds']:.0f} s", "",
             "| request | count | errors | p50 s | p95 s |", "|---|---:|---:|---:|---:|"]
    for kind, row in result["requests"].items():
        lines.append(f"| {kind} | {row['count']} | {row['errors']} | {row['p50']:.3f} | "
                     f"{row['p95']:.3f} |")
    lines += ["", "| write | acked | stored | lost |", "|---|---:|---:|---:|"]
    for kind, row in result["writes"].items():
        lines.append(f"| {kind} | {row['acked']} | {row['stored']} | {row['lost']} |")
    lines += ["", "| run | status | seconds | error |", "|---|---|---:|---|"]
    for run in result["runs"]:
        lines.append(f"| {run.get('id')} | {run['status']} | {run.get('seconds')} | "
                     f"{run.get('error') or ''} |")
    t = result["totals"]
    lines += ["", f"**Totals:** {t['requests']} requests, {t['errors']} errors, "
              f"{t['lost_writes']} lost writes, {t['failed_runs']} failed runs"]
    return "\n".join(lines)


def run_bench(args) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="load-"))
    env = {"ASSISTANT_MODEL_THREADS": "1", "ASSISTANT_TRAINING_THREADS": "1",
           "ASSISTANT_TRAINING_MIN_NEW_EVENTS": "3"}
    if args.real:       # the converted real base, shared read-only (no conversion per run)
        (data_dir / "data").mkdir(mode=0o700)
        (data_dir / "data" / "cache").symlink_to((ROOT / "data" / "cache").resolve())
        env.update(REAL_TRAINING)
    else:
        env.update(TINY_TRAINING, ASSISTANT_MODEL_PATH=str(tiny_model_dir(data_dir / "tiny")),
                   ASSISTANT_MODEL_CONTEXT_TOKENS="512")
    env.update(kv.split("=", 1) for kv in args.env)
    server = Server(data_dir / "data", env)
    stats, acked, stop = Stats(), Acked(), threading.Event()
    try:
        server.wait_healthy(600)
        admin = {"Authorization": f"Bearer {server.key}"}
        users = []
        for i in range(args.users):
            r = httpx.post(f"{server.url}/admin/users", headers=admin, json={"name": f"u{i}"},
                           timeout=60)
            r.raise_for_status()
            users.append(User(f"u{i}", r.json()["api_key"], server.url, args, stats, acked,
                              stop, seed=i))
        started = time.perf_counter()
        for u in users:
            u.start()
        outcomes: list[dict] = []
        trainer = threading.Thread(target=lambda: outcomes.extend(
            train_runs(server, users[0], args.runs, args.run_timeout, stats)), daemon=True)
        trainer.start()
        time.sleep(args.duration)
        trainer.join(timeout=args.run_timeout)
        stop.set()
        for u in users:
            u.join(timeout=args.request_timeout + 5)
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        server.stop()
    db_path = data_dir / "data" / "assistant.db"
    writes = stored(db_path, acked)
    if not args.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    requests = {kind: {"count": len(v), "errors": len(stats.errors[kind]),
                       "p50": percentile(v, 50), "p95": percentile(v, 95),
                       "error_samples": stats.errors[kind][:5]}
                for kind, v in stats.latencies.items()}
    write_rows = {k: {"acked": a, "stored": s, "lost": a - s} for k, (a, s) in writes.items()}
    return {
        "model": "real SmolLM2-135M-Instruct" if args.real else "tiny random Llama",
        "users": args.users, "seconds": seconds, "duration": args.duration,
        "max_tokens": args.max_tokens, "env": env, "requests": requests, "writes": write_rows,
        "runs": outcomes,
        "totals": {"requests": sum(r["count"] for r in requests.values()),
                   "errors": sum(r["errors"] for r in requests.values()),
                   "lost_writes": sum(w["lost"] for w in write_rows.values()),
                   "failed_runs": sum(r["status"] not in ("succeeded", "rejected")
                                      for r in outcomes)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (at least)")
    p.add_argument("--runs", type=int, default=1, help="training runs of u0, one after another")
    p.add_argument("--real", action="store_true", help="the real base instead of a tiny model")
    p.add_argument("--max-tokens", type=int, default=None, help="per answer (16 real, 4 tiny)")
    p.add_argument("--run-timeout", type=float, default=900.0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    p.add_argument("--keep-data", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = p.parse_args(argv)
    if not 1 <= args.users <= MAX_USERS or not 0 < args.duration <= MAX_DURATION:
        p.error(f"--users must be 1..{MAX_USERS} and --duration 0..{MAX_DURATION} s")
    if args.max_tokens is None:
        args.max_tokens = 16 if args.real else 4
    # Stopped from outside (timeout, Ctrl-C), still stop the server it started.
    with sigterm_exits():
        result = run_bench(args)
    print(report(result))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"load-{'real' if args.real else 'tiny'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (out / name).write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {out / name}")
    t = result["totals"]
    return 0 if t["errors"] == t["lost_writes"] == t["failed_runs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
