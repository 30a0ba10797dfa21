"""Schema migrations: a database made by an older release upgrades in place, keeping its data."""

from feedback_store import migrations
from feedback_store.db import connect, open_db


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
    assert migrations.migrate(db) == later and "m003_candidate_provenance" in later
    row = db["messages"].get(1)
    assert (row["content"], row["temperature"]) == ("kept", 0.7)
    assert (row["frequency_penalty"], row["presence_penalty"], row["seed"]) == (None,) * 3
    assert (row["source"], row["arm"], row["selection"]) == (None,) * 3
    assert migrations.migrate(db) == []                   # each migration runs once
    assert [m["name"] for m in db["migrations"].rows] == ["m001_initial", *later]
