"""Erasing a user: every row, the adapter directory, loaded adapters; the last-admin rule."""

from __future__ import annotations

import os

import httpx

from feedback_store import runs
from tests.conftest import BOTH

BACKENDS = BOTH  # the store on SQLite and on PostgreSQL

# Every table that holds per-user rows, and how to find them (? = the user's id; features
# are found by the user's message ids).
USER_ROWS = {
    "users": "id = ?", "api_keys": "user_id = ?", "conversations": "user_id = ?",
    "messages": "user_id = ?", "feedback_events": "user_id = ?", "thumbs": "user_id = ?",
    "comparisons": "user_id = ?", "rankings": "user_id = ?",
    "adapter_versions": "user_id = ?", "training_runs": "user_id = ?",
    "reward_heads": "user_id = ?", "features": "message_id in ({ids})",
}


def me(live, key: str) -> dict:
    return httpx.get(f"{live.url}/api/me", headers=live.headers(key)).json()


def populate(live, key: str) -> tuple[int, list[int]]:
    """Chat, feedback of every kind, an adapter version with files, a reward head, a
    training run and cached features; return the user id and their message ids."""
    h, user = live.headers(key), me(live, key)
    r = httpx.post(f"{live.url}/api/chat", headers=h, timeout=60,
                   json={"content": "Hi", "n": 2, "max_tokens": 4}).json()
    a, b = (c["id"] for c in r["candidates"])
    httpx.put(f"{live.url}/api/messages/{a}/thumbs", headers=h, json={"value": "up"})
    httpx.post(f"{live.url}/api/comparisons", headers=h,
               json={"message_ids": [a, b], "choice": "a"})
    httpx.post(f"{live.url}/api/rankings", headers=h, json={"message_ids": [b, a]})
    uid, name = user["id"], user["name"]
    for sub in ("1", "reward"):
        folder = live.config.adapters_dir / name / sub
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")

    def rows(db):
        db["adapter_versions"].insert({"user_id": uid, "version": 1, "path": f"{name}/1",
                                       "created_at": "now"})
        db["reward_heads"].insert({"user_id": uid, "version": 1, "path": f"{name}/reward/1"})
        runs.enqueue(db, uid, True, "test")       # the run that promoted version 1
        runs.finish(db, runs.claim_next(db, os.getpid())["id"], "succeeded", adapter_version=1)
        db["features"].insert({"message_id": a, "base_id": "tiny", "dim": 1, "vector": b"x"})
        return [m["id"] for m in db["messages"].rows_where("user_id = ?", [uid])]

    return uid, live.state.store.write_sync(rows)


def leftovers(live, uid: int, ids: list[int]) -> dict[str, int]:
    def count(db):
        marks = ", ".join("?" for _ in ids)
        return {t: db.execute(f"select count(*) from {t} where {where.format(ids=marks)}",
                              ids if "{ids}" in where else [uid]).fetchone()[0]
                for t, where in USER_ROWS.items()}
    return live.state.store.write_sync(count)


def test_delete_me_erases_rows_files_and_memory(live_server):
    key, other = live_server.add_user("alice"), live_server.add_user("bob")
    uid, ids = populate(live_server, key)
    bob, bob_ids = populate(live_server, other)
    assert all(leftovers(live_server, uid, ids).values())
    forgotten = []
    engine = live_server.state.engine
    real_forget = engine.forget_user
    engine.forget_user = lambda user_id: (forgotten.append(user_id), real_forget(user_id))
    r = httpx.delete(f"{live_server.url}/api/me", headers=live_server.headers(key))
    assert r.status_code == 200, r.text
    assert r.json() == {"id": uid, "name": "alice", "erased": True}
    assert leftovers(live_server, uid, ids) == dict.fromkeys(USER_ROWS, 0)
    assert not (live_server.config.adapters_dir / "alice").exists()
    assert forgotten == [uid]
    assert httpx.get(f"{live_server.url}/api/me", headers=live_server.headers(key)).status_code \
        == 401
    # Bob is untouched.
    assert all(leftovers(live_server, bob, bob_ids).values())
    assert (live_server.config.adapters_dir / "bob" / "1" / "adapter_config.json").exists()
    assert me(live_server, other)["counts"]["thumbs_up"] == 1


def test_admin_delete_user(live_server):
    key = live_server.add_user("carol")
    uid, ids = populate(live_server, key)
    admin = live_server.headers(live_server.admin_key)
    url = f"{live_server.url}/admin/users"
    assert httpx.delete(f"{url}/{uid}", headers=live_server.headers(key)).status_code == 403
    assert httpx.delete(f"{url}/999999", headers=admin).status_code == 404
    assert httpx.delete(f"{url}/{2**70}", headers=admin).status_code == 404
    r = httpx.delete(f"{url}/{uid}", headers=admin)
    assert r.status_code == 200, r.text
    assert leftovers(live_server, uid, ids) == dict.fromkeys(USER_ROWS, 0)
    assert not (live_server.config.adapters_dir / "carol").exists()
    assert httpx.delete(f"{url}/{uid}", headers=admin).status_code == 404
    names = [u["name"] for u in httpx.get(url, headers=admin).json()]
    assert "carol" not in names


def test_last_admin_cannot_be_deleted(live_server):
    admin = live_server.headers(live_server.admin_key)
    url = f"{live_server.url}/admin/users"
    first = me(live_server, live_server.admin_key)["id"]
    r = httpx.delete(f"{url}/{first}", headers=admin)
    assert r.status_code == 409 and "last admin" in r.json()["detail"]
    assert httpx.delete(f"{live_server.url}/api/me", headers=admin).status_code == 409
    boss = live_server.add_user("boss", admin=True)
    assert httpx.delete(f"{url}/{first}", headers=admin).status_code == 200
    # The configured admin key now acts as the remaining admin, who cannot go.
    assert me(live_server, live_server.admin_key)["name"] == "boss"
    r = httpx.delete(f"{live_server.url}/api/me", headers=live_server.headers(boss))
    assert r.status_code == 409

