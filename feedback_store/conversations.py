"""Conversations and messages: turns, candidates and the chosen branch."""

from __future__ import annotations

from typing import Any

from feedback_store.clock import now
from feedback_store.db import insert
from feedback_store.errors import BadRequest, NotFound
from feedback_store.sql import Database, json_ints

TITLE_CHARS = 60
# Ids per "in (...)" lookup: under SQLite's oldest bound-parameter limit (999), so any
# build takes it; PostgreSQL allows far more.
ID_CHUNK = 900


def create_conversation(db: Database, user_id: int, title: str,
                        system: str | None = None) -> int:
    stamp = now()
    title = " ".join(title.split())[:TITLE_CHARS]
    return insert(db, "conversations", {"user_id": user_id, "title": title, "system": system,
                                       "created_at": stamp, "updated_at": stamp})


def add_history(db: Database, user_id: int, conversation_id: int,
                messages: list[dict]) -> None:
    """Store client-supplied earlier turns (OpenAI-style requests) as a chosen branch.

    `messages` alternate user / assistant; an assistant turn is stored as the single,
    chosen candidate of the user turn before it (model 'client': we did not generate it).
    """
    turn = None
    for message in messages:
        if message["role"] == "user":
            turn = add_user_turn(db, user_id, conversation_id, message["content"])
        elif message["role"] == "assistant" and turn is not None:
            add_candidates(db, turn, [{"content": message["content"], "model": "client"}])


def get_conversation_row(db: Database, user_id: int, conversation_id: int) -> dict:
    """The conversation if it belongs to user_id; NotFound otherwise (never say whose)."""
    rows = list(db["conversations"].rows_where("id = ? and user_id = ?",
                                               [conversation_id, user_id]))
    if not rows:
        raise NotFound(f"conversation {conversation_id} not found")
    return rows[0]


def list_conversations(db: Database, user_id: int) -> list[dict]:
    return list(db.query(
        "select c.*, (select count(*) from messages m where m.conversation_id = c.id "
        "and m.role = 'user') as turns from conversations c where c.user_id = ? "
        "order by c.updated_at desc, c.id desc", [user_id]))


def delete_conversation(db: Database, user_id: int, conversation_id: int) -> None:
    get_conversation_row(db, user_id, conversation_id)
    ids = "select id from messages where conversation_id = ?"
    db.execute(f"delete from features where message_id in ({ids})", [conversation_id])
    db.execute(f"delete from thumbs where message_id in ({ids})", [conversation_id])
    db.execute(f"delete from comparisons where message_a in ({ids})", [conversation_id])
    said = f"exists (select 1 from {json_ints(db, 'message_ids')} j where j.value in ({ids}))"
    db.execute(f"delete from rankings where event_id in (select id from feedback_events where "
               f"{said})", [conversation_id])
    # The event log goes too: deleting a conversation deletes what was said about it.
    db.execute(f"delete from feedback_events where {said}", [conversation_id])
    db.execute("delete from messages where conversation_id = ?", [conversation_id])
    db.execute("delete from conversations where id = ?", [conversation_id])


def rename_conversation(db: Database, user_id: int, conversation_id: int, title: object) -> dict:
    get_conversation_row(db, user_id, conversation_id)   # another user's id is 404 first
    if not isinstance(title, str) or not title.strip():
        raise BadRequest("must be a non-empty string", field="title")
    title = " ".join(title.split())
    if len(title) > TITLE_CHARS * 2:
        raise BadRequest(f"{len(title)} characters is over {TITLE_CHARS * 2}", field="title")
    db.table("conversations").update(conversation_id, {"title": title})
    return get_conversation_row(db, user_id, conversation_id)


def find_message(db: Database, user_id: int, message_id: int) -> dict | None:
    """A message the user owns, or None for unknown or foreign ids alike."""
    rows = list(db["messages"].rows_where("id = ? and user_id = ?", [message_id, user_id]))
    return rows[0] if rows else None


def find_messages(db: Database, user_id: int, message_ids: list[int]) -> dict[int, dict]:
    """The user's messages among `message_ids`, by id (unknown or foreign ids are absent),
    in one query per ID_CHUNK ids instead of one per id: a user's record of choices reads
    every answer they compared, on each exploring turn."""
    ids = sorted(set(message_ids))
    found: dict[int, dict] = {}
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start:start + ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in db["messages"].rows_where(f"user_id = ? and id in ({marks})",
                                             [user_id, *chunk]):
            found[row["id"]] = row
    return found


def get_message(db: Database, user_id: int, message_id: int) -> dict:
    """A message the user owns; NotFound for unknown or foreign ids alike."""
    row = find_message(db, user_id, message_id)
    if row is None:
        raise NotFound(f"message {message_id} not found")
    return row


def message_row(db: Database, message_id: int) -> dict:
    """A message by id, owner unchecked: for ids the caller read from the user's own rows."""
    return db.table("messages").get(message_id)


def message_exists(db: Database, message_id: int) -> bool:
    return bool(db["messages"].count_where("id = ?", [message_id]))


def user_messages(db: Database, user_id: int, role: str) -> list[dict]:
    """The user's messages of one role ("user" turns or "assistant" answers), oldest first."""
    return list(db["messages"].rows_where("user_id = ? and role = ?", [user_id, role],
                                          order_by="id"))


def opening_turns(db: Database, user_id: int, limit: int) -> list[dict]:
    """The user's latest `limit` first turns of a thread (no parent), newest first."""
    return list(db["messages"].rows_where("user_id = ? and role = 'user' and parent_id is null",
                                          [user_id], order_by="id desc", limit=limit))


def chosen_tip(db: Database, conversation_id: int) -> int | None:
    """The chosen assistant message of the latest turn (what a new turn follows)."""
    rows = list(db.query(
        "select id from messages where conversation_id = ? and role = 'assistant' and chosen = 1 "
        "order by id desc limit 1", [conversation_id]))
    return rows[0]["id"] if rows else None


def history(db: Database, conversation_id: int, tip_id: int | None) -> list[dict]:
    """Messages from the first turn to tip_id along parent links, oldest first."""
    out: list[dict] = []
    current = tip_id
    while current is not None:
        row = db.table("messages").get(current)
        out.append(row)
        current = row["parent_id"] if row["role"] == "user" else row["candidate_group"]
    out.reverse()
    return out


def add_user_turn(db: Database, user_id: int, conversation_id: int, content: str,
                  edit_of: dict | None = None, follow: dict | None = None) -> dict:
    """Store a user turn following the conversation's chosen branch; or, for an edit of an
    earlier turn `edit_of`, as a new branch beside it (same parent: the turns after it stay);
    or after the answer `follow` (the branch the reader is looking at)."""
    if edit_of:
        parent = edit_of["parent_id"]
    elif follow:
        if follow["role"] != "assistant" or follow["conversation_id"] != conversation_id:
            raise BadRequest(f"message {follow['id']} is not an answer in conversation "
                             f"{conversation_id}", field="follow")
        parent = follow["id"]
    else:
        parent = chosen_tip(db, conversation_id)
    message_id = insert(db, "messages", {
        "conversation_id": conversation_id, "user_id": user_id, "role": "user",
        "content": content, "parent_id": parent, "created_at": now(),
    })
    db.table("conversations").update(conversation_id, {"updated_at": now()})
    return db.table("messages").get(message_id)


def add_candidates(db: Database, user_turn: dict, candidates: list[dict[str, Any]]) -> list[dict]:
    """Store assistant candidates answering user_turn; the first one is the chosen branch."""
    ids = []
    for index, cand in enumerate(candidates):
        row = {
            "conversation_id": user_turn["conversation_id"], "user_id": user_turn["user_id"],
            "role": "assistant", "parent_id": user_turn["id"], "candidate_group": user_turn["id"],
            "candidate_index": index, "chosen": 1 if index == 0 else 0, "created_at": now(),
        }
        row.update(cand)
        ids.append(insert(db, "messages", row))
    db.table("conversations").update(user_turn["conversation_id"], {"updated_at": now()})
    return [db.table("messages").get(i) for i in ids]


def choose_candidate(db: Database, message: dict) -> None:
    """Make `message` the branch its conversation continues from."""
    if message["role"] != "assistant":
        raise BadRequest(f"message {message['id']} is not an assistant answer")
    db.execute("update messages set chosen = case when id = ? then 1 else 0 end "
               "where candidate_group = ?",
               [message["id"], message["candidate_group"]])


def conversation_detail(db: Database, user_id: int, conversation_id: int) -> dict:
    """The conversation with its user turns, each holding its candidates."""
    conv = get_conversation_row(db, user_id, conversation_id)
    rows = list(db["messages"].rows_where("conversation_id = ?", [conversation_id],
                                          order_by="id"))
    turns = [dict(r, candidates=[]) for r in rows if r["role"] == "user"]
    by_id = {t["id"]: t for t in turns}
    for r in rows:
        if r["role"] == "assistant" and r["candidate_group"] in by_id:
            by_id[r["candidate_group"]]["candidates"].append(r)
    return dict(conv, turns=turns)


def candidates_of(db: Database, user_turn_id: int) -> list[dict]:
    return list(db["messages"].rows_where("candidate_group = ?", [user_turn_id],
                                          order_by="candidate_index"))


def prompt_messages(db: Database, conversation_id: int, turn_id: int) -> list[dict]:
    """The chat a model saw for user turn `turn_id`: system message (if any) and the history
    along parent links up to and including that turn, as {"role", "content"} dicts."""
    chat = [{"role": m["role"], "content": m["content"]}
            for m in history(db, conversation_id, turn_id)]
    system = db.table("conversations").get(conversation_id)["system"]
    return ([{"role": "system", "content": system}] if system else []) + chat
