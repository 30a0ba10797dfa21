"""Every route, walked as another user: alice's ids are 404 to bob (admin routes 403), never
200 or 500, and nothing bob can read holds alice's data.

Routes come from the app itself and request bodies from its OpenAPI document, so a route
added later is walked without editing this file; an id parameter or body field this suite
cannot fill fails loudly (add it to ALICE_IDS / SAMPLES), rather than going unchecked.
"""

from __future__ import annotations

import re

import httpx
import pytest

from assistant.app import openapi_document
from tests.conftest import BOTH, rated_turn

BACKENDS = BOTH  # the store on SQLite and on PostgreSQL

MARKER = "alice-private-marker-7f3a"
QUERY_SAMPLES = {"user": "alice", "format": "preference"}
PUBLIC = ("/health", "/schema", "/static", "/")      # no user data behind them
SAMPLES = {          # valid values for body fields that are not ids
    "content": "hi", "model": "personal", "value": "up", "choice": "a", "name": "newname",
    "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "title": "renamed",
}


@pytest.fixture
def alice(live_server):
    """alice with a conversation (3 candidates), thumbs, a ranking, a run and a version."""
    live = live_server
    key = live.add_user("alice")
    headers = live.headers(key)
    turn = rated_turn(live, headers, MARKER, max_tokens=4)
    answers = [c["id"] for c in turn["candidates"]]
    me = httpx.get(f"{live.url}/api/me", headers=headers).json()

    def run_and_version(db) -> int:
        db["adapter_versions"].insert({"user_id": me["id"], "version": 1, "path": "alice/1",
                                       "base_id": "tiny", "created_at": "now"})
        return db["training_runs"].insert({"user_id": me["id"], "status": "failed",
                                           "created_at": "now"}).last_pk

    run_id = live.state.store.write_sync(run_and_version)
    ids = {"conversation_id": turn["conversation_id"], "message_id": answers[0],
           "user_id": me["id"], "run_id": run_id, "regenerate": turn["message"]["id"],
           "message_ids": answers, "version": 1}
    return key, ids


def operations(live) -> list[tuple[str, str, str]]:
    """(method, Litestar path, OpenAPI path) of every authenticated route of the app."""
    found = []
    for route in live.app.routes:
        if any(route.path == p or route.path.startswith(p + "/") for p in PUBLIC if p != "/") \
                or route.path == "/":
            continue
        openapi_path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            found.append((method, route.path, openapi_path))
    return found


def body_variants(doc: dict, method: str, path: str, ids: dict) -> list[dict | None]:
    """One body per id field of the operation (that id set to alice's), else one plain body."""
    op = doc["paths"].get(path, {}).get(method.lower(), {})
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}) \
        .get("schema")
    if schema is None:
        return [None]
    props, required = schema.get("properties", {}), schema.get("required", [])
    for name in required:
        assert name in ids or name in SAMPLES, \
            f"{method} {path}: add a sample value for body field {name!r}"
    base = {name: SAMPLES[name] for name in props if name in SAMPLES}
    def alices(name: str) -> object:
        value = ids[name]             # a list of ids is cut to the size the schema allows
        return value[:props[name].get("maxItems", len(value))] if isinstance(value, list) \
            else value

    return [{**base, name: alices(name)} for name in props if name in ids] or [base]


def query_params(doc: dict, method: str, path: str, ids: dict) -> dict:
    """Query parameters: alice's id where one is an id, a sample where one is required."""
    op = doc["paths"].get(path, {}).get(method.lower(), {})
    params = {}
    for p in op.get("parameters", []):
        name = p["name"]
        if p["in"] != "query":
            continue
        if name in ids:
            params[name] = ids[name]
        elif name in QUERY_SAMPLES:
            params[name] = QUERY_SAMPLES[name]
        else:
            assert not p.get("required"), f"{method} {path}: add a sample for query {name!r}"
    return params


def fill_path(template: str, ids: dict) -> str:
    def one(match: re.Match) -> str:
        name, kind = match.group(1), match.group(2)
        if kind != "int":
            return "personal"            # /v1/models/{model_id:str}: not a row id
        assert name in ids, f"{template}: teach this suite alice's {name!r}"
        return str(ids[name])
    return re.sub(r"{(\w+):(\w+)}", one, template)


def test_every_route_refuses_another_users_ids(live_server, alice):
    live = live_server
    alice_key, ids = alice
    doc = openapi_document()
    walked = 0
    for method, template, openapi_path in operations(live):
        for body in body_variants(doc, method, openapi_path, ids):
            bob = live.headers(live.add_user(f"bob{walked}"))     # fresh: some routes erase
            path = fill_path(template, ids)
            r = httpx.request(method, live.url + path, json=body, headers=bob, timeout=60,
                              params=query_params(doc, method, openapi_path, ids))
            walked += 1
            where = f"{method} {path} {body} -> {r.status_code} {r.text[:300]}"
            assert r.status_code < 500, where
            assert MARKER not in r.text, where
            if template.startswith("/admin"):
                assert r.status_code == 403, where
            elif ":int}" in template or any(k in (body or {}) for k in ids):
                assert r.status_code == 404, where
    assert walked >= 25

    # alice's data is untouched by everything bob tried.
    mine = httpx.get(f"{live.url}/api/conversations/{ids['conversation_id']}",
                     headers=live.headers(alice_key))
    assert mine.status_code == 200 and MARKER in mine.text
    assert len(mine.json()["turns"][0]["candidates"]) == 3
    me = httpx.get(f"{live.url}/api/me", headers=live.headers(alice_key)).json()
    assert (me["counts"]["thumbs_up"], me["counts"]["rankings"]) == (1, 1)
    assert me["current_version"] is None         # bob's rollback attempts did nothing


def test_admin_key_still_reaches_every_admin_route(live_server, alice):
    """The walk above is only meaningful if the admin routes answer an admin: they do."""
    live = live_server
    _, ids = alice
    admin = live.headers(live.admin_key)
    for method, template, _ in operations(live):
        if not template.startswith("/admin") or method != "GET":
            continue
        r = httpx.get(live.url + fill_path(template, ids), headers=admin,
                      params={"user": "alice", "format": "preference"}, timeout=60)
        assert r.status_code == 200, (template, r.status_code, r.text[:300])
