"""Shared fixtures: a tiny random Llama with the real tokenizer, temporary stores.

The store runs on SQLite unless a test module sets `BACKENDS = BOTH` (or a test is decorated
@on_both): then each such test that touches the store (through `db`, `store_url`,
`live_server`...) runs on SQLite and on PostgreSQL (a throwaway server, tests/pg.py, started
once per session when first needed). ASSISTANT_TEST_BACKENDS=postgresql (or
"sqlite,postgresql") puts every test that touches the store on those engines.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "test-admin-key-0123456789"     # config requires at least 16 characters
# The real base model's cache, prepared once by `make test` (assistant prepare).
CACHE_DIR = Path(os.environ.get("ASSISTANT_TEST_CACHE", ROOT / "data" / "cache"))


@pytest.fixture(scope="session")
def tokenizer():
    from adapters.base_model import load_tokenizer

    return load_tokenizer("", CACHE_DIR)


def make_tiny_model(tokenizer, seed: int = 0):
    """A 2-layer random Llama over the real tokenizer's vocabulary (about 3 M parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """The tiny Llama saved as a local model directory, so the worker process loads it too."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(tokenizer):
    return make_tiny_model(tokenizer)


BOTH = ("sqlite", "postgresql")
FORCED = tuple(b for b in os.environ.get("ASSISTANT_TEST_BACKENDS", "").split(",") if b)


def on_both(test):
    """Run this test's store on both engines (the module's other tests keep theirs)."""
    test.backends = BOTH
    return test


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        backends = FORCED or getattr(metafunc.function, "backends", None) \
            or getattr(metafunc.module, "BACKENDS", ("sqlite",))
        if backends != ("sqlite",):          # SQLite alone: test ids stay as they were
            metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture(scope="module")
def backend(request) -> str:
    """Which engine the store runs on (parametrized per module: BACKENDS)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the session; skip (or fail, when required) if
    the machine has no initdb / pg_ctl."""
    from tests import pg

    bin_dir = pg.binaries()
    if bin_dir is None:
        message = "PostgreSQL binaries (initdb, pg_ctl) not found"
        if pg.REQUIRED:
            pytest.fail(message + " and ASSISTANT_TEST_POSTGRES=required")
        pytest.skip(message)
    server = pg.PostgresServer(bin_dir).start()
    yield server
    server.stop()


def new_store_url(request, backend: str) -> str:
    """'' (the SQLite file under the data dir) or a fresh PostgreSQL database's URL."""
    return "" if backend == "sqlite" else request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store_url(request, backend) -> str:
    return new_store_url(request, backend)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "assistant.db"


@pytest.fixture
def db_target(db_path, store_url):
    """What open_db opens: the SQLite file, or the test's PostgreSQL database."""
    return store_url or db_path


@pytest.fixture
def db(db_target):
    from feedback_store.db import open_db

    database = open_db(db_target)
    yield database
    database.close()


# ---- a real HTTP server on loopback -------------------------------------------------------

class LiveServer:
    """A running server: base URL, config, admin key, and helpers to make users."""

    def __init__(self, url: str, config, app, admin_key: str) -> None:
        self.url, self.config, self.app, self.admin_key = url, config, app, admin_key

    @property
    def state(self):
        return self.app.state.assistant

    def headers(self, key: str) -> dict:
        return {"Authorization": f"Bearer {key}"}

    def add_user(self, name: str, admin: bool = False) -> str:
        """Create a user through the admin API; return their key."""
        import httpx

        r = httpx.post(f"{self.url}/admin/users", json={"name": name, "admin": admin},
                       headers=self.headers(self.admin_key))
        r.raise_for_status()
        return r.json()["api_key"]


def rated_turn(live: LiveServer, headers: dict, content: str, max_tokens: int) -> dict:
    """One n=3 chat turn, its first answer thumbed up and all three ranked; the chat reply."""
    import httpx

    r = httpx.post(f"{live.url}/api/chat", headers=headers, timeout=60,
                   json={"content": content, "n": 3, "max_tokens": max_tokens})
    r.raise_for_status()
    ids = [c["id"] for c in r.json()["candidates"]]
    httpx.put(f"{live.url}/api/messages/{ids[0]}/thumbs", headers=headers,
              json={"value": "up"}).raise_for_status()
    httpx.post(f"{live.url}/api/rankings", headers=headers,
               json={"message_ids": ids}).raise_for_status()
    return r.json()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, engine, store_url: str = "", **env_overrides):
    """Start the app under uvicorn on a free loopback port in a thread; yield LiveServer.
    store_url: a PostgreSQL database for the store ("" = SQLite under data_dir)."""
    import threading
    import time

    import uvicorn

    from assistant.app import create_app
    from assistant.config import load_config

    port = _free_port()
    env = {"ASSISTANT_DATA_DIR": str(data_dir), "ASSISTANT_PORT": str(port),
           "ASSISTANT_ADMIN_KEY": ADMIN_KEY, "ASSISTANT_SCHEDULER_ENABLED": "false",
           # Comparison turns stay plain unless a test is about exploration (test_explore).
           "ASSISTANT_EXPLORE_ENABLED": "false",
           # Off unless a test turns it on (tests/test_safety_flow.py): fitting the consensus
           # head on the HH file costs a feature pass per fresh data dir.
           "ASSISTANT_SAFETY_ENABLED": "false", "ASSISTANT_STORE_URL": store_url,
           **{k: str(v) for k, v in env_overrides.items()}}
    config = load_config(ROOT / "config.toml", env=env)
    app = create_app(config, engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return server, thread, LiveServer(f"http://127.0.0.1:{port}", config, app, ADMIN_KEY)


def tiny_engine(tokenizer, seed: int = 0):
    from assistant.engine import Engine

    return Engine(make_tiny_model(tokenizer, seed), tokenizer, "tiny-llama@test",
                  context_tokens=512, cache_size=4)


@pytest.fixture
def live_server(tmp_path, tokenizer, store_url):
    """A real server on loopback with a tiny random model (fast, nonsense answers)."""
    engine = tiny_engine(tokenizer)
    server, thread, live = start_server(tmp_path / "data", engine, store_url)
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


@pytest.fixture(scope="session")
def real_base():
    """The real SmolLM2 base, loaded once per test session."""
    from adapters.base_model import load_base

    return load_base("", CACHE_DIR)


@pytest.fixture
def real_server(tmp_path, real_base):
    """A real server on loopback with the real base model (for the few end-to-end tests)."""
    from assistant.engine import Engine

    engine = Engine(real_base.model, real_base.tokenizer, real_base.base_id, cache_size=4)
    server, thread, live = start_server(tmp_path / "data", engine)
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()
