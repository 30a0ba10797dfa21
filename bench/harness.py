"""The harness of the benches that drive a real server over HTTP, as simulated users do.

Start a server on loopback (or use a running one), call its JSON API with bounded retries,
chat with a run's sampling settings and seeds, train a user through the admin API and wait
for the run, name the users of a run's variants. bench/personalize.py, training_run.py,
eval_trained.py and load.py build on it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from bench.personas import Persona

ROOT = Path(__file__).resolve().parent.parent
FINAL = {"succeeded", "rejected", "failed"}
# Settings the benchmark gives the server it starts, and why (overridable with --env):
SERVER_ENV = {
    # Measured on the shared 2-core box: with torch's default (all cores) a 48-token answer
    # took 24 s, with 1 thread 5.6 s - the other core is the training worker's.
    "ASSISTANT_MODEL_THREADS": "1",
    "ASSISTANT_TRAINING_THREADS": "1",
    # Training is triggered through the admin API; no timer competing with the benchmark.
    "ASSISTANT_SCHEDULER_ENABLED": "false",
}
QUICK_ENV = {"ASSISTANT_TRAINING_STEPS": "2"}


# ---- data ---------------------------------------------------------------------------------

def load_prompts(path: Path) -> list[str]:
    prompts = []
    for line in path.read_text().splitlines():
        if line.strip():
            text = json.loads(line)["prompt"]
            if isinstance(text, str) and text.strip():
                prompts.append(text.strip())
    return list(dict.fromkeys(prompts))       # duplicates would leak into the held-out set


def split_prompts(prompts: list[str], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    order = list(prompts)
    random.Random(seed).shuffle(order)
    return order[heldout:], order[:heldout]


# ---- server -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    admin_key: str
    process: subprocess.Popen | None = None
    data_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def wait_healthy(url: str, timeout: float, process: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before /health")
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/health not ready after {timeout:.0f} s")


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit inside the block, so `finally` clauses run: without it a
    terminated benchmark left its started server running, orphaned (Python's default
    SIGTERM action ends the process without unwinding). The old handler comes back after."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def server(args: argparse.Namespace) -> Iterator[Server]:
    """A running server: --url's, or a fresh `python -m assistant serve` on a temp dir."""
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"--url must be a loopback address, got {host!r}")
        wait_healthy(args.url.rstrip("/"), 60)
        yield Server(args.url.rstrip("/"), args.admin_key, data_dir=args.data_dir)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="personalize-"))
    port, key = free_port(), "bench-" + secrets.token_urlsafe(24)
    # RL samples as long as the answers the persona rated and the evaluation reads.
    env = dict(SERVER_ENV, ASSISTANT_TRAINING_MAX_COMPLETION_TOKENS=str(args.max_tokens),
               **(QUICK_ENV if args.quick else {}))
    env.update(kv.split("=", 1) for kv in args.env)
    full_env = dict(os.environ, **env, ASSISTANT_DATA_DIR=str(data_dir),
                    ASSISTANT_HOST="127.0.0.1", ASSISTANT_PORT=str(port),
                    ASSISTANT_ADMIN_KEY=key)
    log = (data_dir / "server.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "assistant", "serve"], cwd=ROOT, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with sigterm_exits():
            wait_healthy(url, args.start_timeout, proc)
            yield Server(url, key, proc, data_dir, env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if args.keep_data:
            print(f"server data kept in {data_dir}", flush=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


class Api:
    """A small JSON client with bounded retries (the server is busy, not flaky)."""

    def __init__(self, url: str, key: str, timeout: float = 900) -> None:
        self.client = httpx.Client(base_url=url, timeout=timeout,
                                   headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        for attempt in range(3):
            try:
                r = self.client.request(method, path, json=body)
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(2)
                continue
            if r.status_code >= 400:
                raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
            return r.json() if r.content else {}
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()


# ---- chat ---------------------------------------------------------------------------------

def chat(api: Api, args: argparse.Namespace, prompt: str, n: int, model: str,
         seed: int, explore: object = None) -> list[dict]:
    """One chat turn's candidates, with the run's sampling settings."""
    body = {"content": prompt, "n": n, "model": model, "temperature": args.temperature,
            "max_tokens": args.max_tokens, "seed": seed}
    if explore is not None:
        body["explore"] = explore
    return api.call("POST", "/api/chat", body)["candidates"]


def seed_of(*parts: object) -> int:
    """A request seed fixed by the run's seed and what is asked, so a rerun samples the same
    answers from the same adapter (and every model is sampled with the same seed on a
    held-out prompt: paired samples, so the comparison is less noisy)."""
    return zlib.crc32(":".join(map(str, parts)).encode())


def in_flight(rows: int, candidates: int) -> int:
    """Requests to keep open so that about `rows` candidates decode together."""
    return max(1, rows // candidates)


def answer_heldout(api: Api, prompts: list[str], model: str,
                   args: argparse.Namespace) -> list[list[dict]]:
    """Candidates (eval_n each) per held-out prompt, same sampling settings for every model."""
    with ThreadPoolExecutor(in_flight(args.rows, args.eval_n)) as pool:
        return list(pool.map(
            lambda p: chat(api, args, p, args.eval_n, model, seed_of(args.seed, "eval", p)),
            prompts))


# ---- training -----------------------------------------------------------------------------

def train_and_wait(admin: Api, user: str, timeout: float) -> dict:
    """Queue a forced run for `user` and poll it to a final status (bounded)."""
    queued = admin.call("POST", "/admin/train", {"user": user, "force": True})["queued"]
    if not queued:
        return {"status": "not_queued"}
    run_id = queued[0]["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = admin.call("GET", f"/admin/runs/{run_id}")
        if run["status"] in FINAL:
            return run
        time.sleep(3)
    run = admin.call("GET", f"/admin/runs/{run_id}")
    run["status"] = f"timeout ({run['status']})"
    return run


def run_summary(run: dict) -> dict:
    """The run's outcome and the RL signal: reward and KL at the start and end of RL."""
    metrics = run.get("metrics") or {}
    if isinstance(metrics, str):
        metrics = json.loads(metrics)
    steps = metrics.get("steps") or []

    def avg(key: str, part: list[dict]) -> float | None:
        vals = [s[key] for s in part if isinstance(s.get(key), int | float)]
        return round(sum(vals) / len(vals), 4) if vals else None

    k = max(1, len(steps) // 4)
    return {
        "id": run.get("id"), "status": run.get("status"), "error": run.get("error"),
        "adapter_version": run.get("adapter_version"), "decision": metrics.get("decision"),
        "gate": metrics.get("gate"), "seconds": metrics.get("seconds"),
        "n_steps": len(steps),
        "reward_first_quarter": avg("reward_mean", steps[:k]),
        "reward_last_quarter": avg("reward_mean", steps[-k:]),
        "kl_last_quarter": avg("kl", steps[-k:]),
        "len_first_quarter": avg("completion_len", steps[:k]),
        "len_last_quarter": avg("completion_len", steps[-k:]),
        "log_tail": None if run.get("status") == "succeeded" else
        "\n".join((run.get("log_tail") or "").splitlines()[-25:]),
    }


# ---- simulated users ----------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One simulated user: a persona with exploration on or off (its own server user)."""

    persona: Persona
    mode: str            # "on" | "off"
    user: str


VARIANT_SEP = "-explore-"


def variants(personas: list[Persona], explore: str) -> list[Variant]:
    modes = ("on", "off") if explore == "both" else (explore,)
    return [Variant(p, m, p.name if len(modes) == 1 else f"{p.name}{VARIANT_SEP}{m}")
            for m in modes for p in personas]


def split_user(user: str) -> tuple[str, str | None]:
    """A benchmark user's persona and explore mode (variants' naming; None: one mode)."""
    persona, sep, mode = user.rpartition(VARIANT_SEP)
    return (persona, mode) if sep else (user, None)


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)
