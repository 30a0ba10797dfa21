"""Property-based fuzz of every route in the OpenAPI schema (schemathesis) against a live
tiny-model server: whatever the request, the answer is never a 5xx.

Operations and their parameters come from /schema/openapi.json, so a new route is fuzzed
without touching this file; bodies follow assistant/api_docs.py, and schemathesis sends both
conforming ("positive") and violating ("negative") data. Every call carries the admin key,
which may use every route (admin and /api alike); a few users, conversations and answers
exist first so small ids hit real rows.

Bounded for `make test`: FUZZ_EXAMPLES examples per operation (default 25), derandomized
so a run is repeatable. To explore: FUZZ_SEED=<int> (or "random") for other inputs,
FUZZ_EXAMPLES=500 for longer, FUZZ_PHASES=examples,coverage,fuzzing for schemathesis'
boundary-value phase as well.
"""

from __future__ import annotations

import os

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402  (after the importorskip)

from assistant.app import openapi_document  # noqa: E402
from tests.conftest import BOTH, new_store_url, rated_turn, start_server, tiny_engine  # noqa: E402

BACKENDS = BOTH  # the store on SQLite and on PostgreSQL

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("FUZZ_SEED", "")
PHASES = os.environ.get("FUZZ_PHASES", "examples,fuzzing").split(",")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tokenizer, request, backend):
    # Short answers: the fuzz is about the HTTP layer, not the model's speed.
    engine = tiny_engine(tokenizer)
    server, thread, live = start_server(
        tmp_path_factory.mktemp("fuzz") / "data", engine, new_store_url(request, backend),
        ASSISTANT_GENERATION_MAX_TOKENS_LIMIT=8, ASSISTANT_GENERATION_MAX_TOKENS_DEFAULT=4)
    seed_data(live)
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


def seed_data(live) -> None:
    """Users with conversations, candidates and feedback: rows for small ids to find."""
    for name in ("ann", "ben"):
        headers = live.headers(live.add_user(name))
        for _ in range(2):
            rated_turn(live, headers, "hello", max_tokens=2)


# The schema of the app's own routes, built at collection time (no server needed): every
# route the app serves is in it. (schemathesis' lazy from_fixture fails under pytest 9.)
schema = schemathesis.openapi.from_dict(openapi_document())
# schemathesis' coverage phase (every boundary value the schema implies) makes 400-600
# requests per operation, about 10 minutes for the whole API here: on demand only.
schema.config.phases.update(phases=PHASES)


def _fuzz_settings(test):
    seed = None if SEED in ("", "random") else int(SEED)
    configured = settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED == "",
                          suppress_health_check=list(HealthCheck), database=None)(test)
    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        configured = hypothesis_seed(seed)(configured)
    return configured


@schema.parametrize()
@_fuzz_settings
def test_no_route_answers_5xx(case, fuzz_server):
    headers = {**(case.headers or {}), **fuzz_server.headers(fuzz_server.admin_key)}
    response = case.call(base_url=fuzz_server.url, headers=headers, timeout=60)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r} -> "
        f"{response.status_code} {response.text[:500]}")


def test_the_fuzzed_schema_is_the_servers(fuzz_server):
    served = httpx.get(fuzz_server.url + "/schema/openapi.json").json()
    assert served["paths"] == openapi_document()["paths"]
