"""API keys: required, hashed at rest, rotatable and revocable; admin-only routes."""

import sqlite3
import subprocess
import sys

import httpx

from tests.conftest import ROOT


def test_routes_need_a_valid_key(live_server):
    url = live_server.url
    assert httpx.get(f"{url}/api/conversations").status_code == 401
    assert httpx.get(f"{url}/api/conversations",
                     headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{url}/api/conversations",
                     headers={"Authorization": "Basic abc"}).status_code == 401
    r = httpx.post(f"{url}/api/chat", json={"content": "hi"})
    assert r.status_code == 401 and "API key" in r.json()["detail"]


def test_keys_are_stored_hashed(live_server):
    key = live_server.add_user("alice")
    rows = sqlite3.connect(live_server.config.db_path).execute(
        "select key_hash, prefix from api_keys").fetchall()
    assert rows and all(key not in h for h, _ in rows)
    assert any(h == __import__("hashlib").sha256(key.encode()).hexdigest() for h, _ in rows)


def test_rotate_and_revoke(live_server):
    key = live_server.add_user("alice")
    admin = live_server.headers(live_server.admin_key)
    users = httpx.get(f"{live_server.url}/admin/users", headers=admin).json()
    alice = next(u for u in users if u["name"] == "alice")
    r = httpx.post(f"{live_server.url}/admin/users/{alice['id']}/rotate-key", headers=admin)
    new_key = r.json()["api_key"]
    assert new_key != key
    me = f"{live_server.url}/api/conversations"
    assert httpx.get(me, headers=live_server.headers(key)).status_code == 401
    assert httpx.get(me, headers=live_server.headers(new_key)).status_code == 200
    httpx.post(f"{live_server.url}/admin/users/{alice['id']}/revoke-keys", headers=admin)
    assert httpx.get(me, headers=live_server.headers(new_key)).status_code == 401


def test_admin_routes_need_admin_role(live_server):
    key = live_server.add_user("mallory")
    r = httpx.post(f"{live_server.url}/admin/users", json={"name": "eve"},
                   headers=live_server.headers(key))
    assert r.status_code == 403
    assert httpx.get(f"{live_server.url}/admin/users").status_code == 401


def test_admin_user_creation_validates(live_server):
    admin = live_server.headers(live_server.admin_key)
    url = f"{live_server.url}/admin/users"
    assert httpx.post(url, json={"name": "bad name!"}, headers=admin).status_code == 400
    assert httpx.post(url, json={"name": "ok", "admin": "yes"}, headers=admin).status_code == 400
    first = httpx.post(url, json={"name": "dup"}, headers=admin)
    assert first.status_code == 201 and set(first.json()) >= {"id", "name", "api_key"}
    again = httpx.post(url, json={"name": "dup"}, headers=admin)
    assert again.status_code == 409 and "dup" in again.json()["detail"]


def test_cli_user_add_prints_key_last(tmp_path):
    env = {"ASSISTANT_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "assistant", "user", "add", "carol", "--admin"],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("pa-") and len(key) > 30
    db = sqlite3.connect(tmp_path / "assistant.db")
    role = db.execute("select role from users where name = 'carol'").fetchone()[0]
    assert role == "admin"
    dup = subprocess.run([sys.executable, "-m", "assistant", "user", "add", "carol"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert dup.returncode == 2 and "already exists" in dup.stderr


def test_init_prints_the_admins_key_only_when_no_admin_key_is_configured(
        tmp_path, tiny_dir, monkeypatch, capsys):
    """`assistant init` shows the first admin's key once, so the operator can log in; with
    ASSISTANT_ADMIN_KEY set the operator already has one, and a second live key would only
    end up in whatever captures stdout (a service's journal, a benchmark's server.log)."""
    from assistant import cli
    from feedback_store.users import KEY_PREFIX

    monkeypatch.setenv("ASSISTANT_MODEL_PATH", str(tiny_dir))
    monkeypatch.setenv("ASSISTANT_DATA_DIR", str(tmp_path / "with-key"))
    monkeypatch.setenv("ASSISTANT_ADMIN_KEY", "operator-key-0123456789")
    assert cli.main(["init"]) == 0
    out = capsys.readouterr().out
    assert "created user 'admin'" in out and KEY_PREFIX not in out

    monkeypatch.delenv("ASSISTANT_ADMIN_KEY")
    monkeypatch.setenv("ASSISTANT_DATA_DIR", str(tmp_path / "without"))
    assert cli.main(["init"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith(KEY_PREFIX)
    assert cli.main(["init"]) == 0                   # run again: nothing new, no key
    assert KEY_PREFIX not in capsys.readouterr().out
