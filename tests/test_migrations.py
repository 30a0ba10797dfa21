"""Schema migrations: a database made by an older release upgrades in place, keeping its data."""

import sqlite3

import pytest
import sqlite_utils

from feedback_store import migrations
from feedback_store.db import connect, open_db, transaction
from feedback_store.sql import add_column, create_table
from feedback_store.users import create_user
from tests.conftest import on_both


def test_an_older_database_upgrades_and_keeps_its_rows(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    old = open_db(path)
    old["users"].insert({"id": 1, "name": "alice", "role": "user", "created_at": "then"})
    old["conversations"].insert({"id": 1, "user_id": 1, "title": "t", "created_at": "then"})
    old["messages"].insert({"id": 1, "conversation_id": 1, "user_id": 1, "role": "assistant",
                            "content": "kept", "temperature": 0.7, "created_at": "then"})
    old.close()
    monkeypatch.undo()

    db = connect(path)
    later = [fn.__name__ for fn in migrations.MIGRATIONS[1:]]
    assert migrations.migrate(db) == later and "m006_candidate_provenance" in later
    row = db["messages"].get(1)
    assert (row["content"], row["temperature"]) == ("kept", 0.7)
    assert (row["frequency_penalty"], row["presence_penalty"], row["seed"]) == (None,) * 3
    assert (row["source"], row["arm"], row["selection"]) == (None,) * 3
    assert migrations.migrate(db) == []                   # each migration runs once
    assert [m["name"] for m in db["migrations"].rows] == [
        fn.__name__ for fn in migrations.MIGRATIONS]


def legacy_db(path):
    """A database as releases before issue 13 left it: migrations recorded by number."""
    db = connect(path)
    db.execute("create table migrations (id integer primary key, name text, applied_at text)")
    with transaction(db):
        for fn in migrations.MIGRATIONS[:2]:
            fn(db)
    db.execute("insert into migrations values (1, 'm001_initial', 'then'), "
               "(2, 'm002_sampling_settings', 'then')")
    return db


def test_migrations_are_keyed_by_name_and_old_ids_upgrade(tmp_path):
    db = legacy_db(tmp_path / "legacy.db")
    db["users"].insert({"id": 1, "name": "alice", "role": "user", "created_at": "then"})
    applied = migrations.migrate(db)
    assert applied == [fn.__name__ for fn in migrations.MIGRATIONS[2:]]   # 1, 2 not re-run
    assert db["users"].get(1)["name"] == "alice"
    # renumbered on a merge (m003 -> m007), a migration is still recognized by its name
    renamed = [fn for fn in migrations.MIGRATIONS]
    def m099_initial(db):  # noqa: E306 - stands for m001 under another number
        raise AssertionError("ran twice")
    renamed[0] = m099_initial
    assert migrations.migrate(db, renamed) == []


@on_both
def test_a_failing_migration_rolls_back_all_its_ddl(db):

    def m900_half_done(db):
        create_table(db, "half", {"id": int}, pk="id")
        add_column(db, "users", "nickname", str)
        db.execute("create index users_nick on users (nickname)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        migrations.migrate(db, [*migrations.MIGRATIONS, m900_half_done])
    assert "half" not in db.table_names()
    assert "nickname" not in db.columns("users")
    assert "m900_half_done" not in {r["name"] for r in db["migrations"].rows}
    if not db.is_postgres:
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


@on_both
def test_transaction_helper_commits_rolls_back_and_nests(db):
    with transaction(db):
        create_user(db, "alice")
    with pytest.raises(ValueError), transaction(db):
        create_user(db, "bob")
        assert db.in_transaction
        raise ValueError
    with transaction(db):
        with pytest.raises(ValueError), transaction(db):    # nested: a savepoint
            create_user(db, "carol")
            raise ValueError
        create_user(db, "dave")
    assert [u["name"] for u in db["users"].rows] == ["alice", "dave"]
    assert transaction(db, lambda d, x: x * 2, 21) == 42
    assert not db.in_transaction


def test_postgres_gets_the_same_schema_and_migrates_once_under_concurrency(postgres,
                                                                           tmp_path):
    """Server and worker start together: both migrate one database at once."""
    import threading

    url = postgres.new_database()
    applied: list[list[str]] = []

    def start() -> None:
        db = connect(url)
        applied.append(migrations.migrate(db))
        db.close()

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    names = [fn.__name__ for fn in migrations.MIGRATIONS]
    assert sorted(sum(applied, [])) == sorted(names)        # each ran exactly once
    pg, lite = connect(url), open_db(tmp_path / "lite.db")
    for table in lite.table_names():
        if table != "sqlite_sequence":
            assert pg.columns(table) == lite.columns(table), table
    user, _ = create_user(pg, "alice")
    assert user["id"] == 1 and isinstance(user["id"], int)


def test_old_database_gets_autoincrement_keeping_rows_and_foreign_keys(tmp_path):
    db = legacy_db(tmp_path / "legacy.db")
    db["users"].insert({"id": 7, "name": "alice", "role": "user", "created_at": "then"})
    db["conversations"].insert({"id": 3, "user_id": 7, "title": "t", "created_at": "then"})
    db["messages"].insert({"id": 9, "conversation_id": 3, "user_id": 7, "role": "user",
                           "content": "kept", "created_at": "then", "seed": 5})
    migrations.migrate(db)
    assert db["messages"].get(9)["content"] == "kept" and db["messages"].get(9)["seed"] == 5
    schema = sqlite_utils.Database(db.conn)           # SQLite's own view of the schema
    assert "AUTOINCREMENT" in schema["users"].schema
    assert "AUTOINCREMENT" in schema["messages"].schema
    fks = {(fk.column, fk.other_table) for fk in schema["messages"].foreign_keys}
    assert fks == {("conversation_id", "conversations"), ("user_id", "users")}
    assert {i.name for i in schema["messages"].indexes} >= {"idx_messages_conversation_id",
                                                         "idx_messages_user_id"}
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    with pytest.raises(sqlite3.IntegrityError):        # foreign keys are enforced again
        db["messages"].insert({"conversation_id": 99, "user_id": 7, "role": "user",
                               "content": "x", "created_at": "now"})
    # the erased user's id (7, the highest) is never handed out again
    db.execute("delete from messages")
    db.execute("delete from conversations")
    db.execute("delete from users")
    assert create_user(db, "bob")[0]["id"] == 8
