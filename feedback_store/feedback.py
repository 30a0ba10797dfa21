"""Feedback writes (thumbs, pairwise comparisons, rankings) and the event log behind them.

Every function that changes feedback runs inside the caller's single transaction
(`store.write(fn, ...)`), appends at most one row to feedback_events, and keeps the
"current state" tables (thumbs, comparisons, rankings) in step. Repeating a request that
would change nothing appends nothing, so retries never inflate the training signal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from feedback_store import conversations as conv
from feedback_store.clock import now
from feedback_store.db import insert
from feedback_store.errors import BadRequest, NotFound
from feedback_store.sql import Database, json_first_int

THUMBS = ("up", "down")
CHOICES = ("a", "b", "tie", "both_bad")
COMMENT_MAX = 4000
MAX_ID = 2**63 - 1  # SQLite's INTEGER range; larger ids would raise OverflowError (a 500)


# ---- validation ---------------------------------------------------------------------------

def check_id(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"must be an integer message id; got {value!r}", field=field)
    if not 1 <= value <= MAX_ID:
        raise NotFound(f"message {value} not found")
    return value


def check_reasons(reasons: object, allowed: Iterable[str], field: str = "reasons") -> list[str]:
    """Sorted, de-duplicated reasons from the vocabulary (sorted so order never matters)."""
    if reasons is None:
        return []
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise BadRequest(f"must be a list of strings; got {reasons!r}", field=field)
    vocabulary = set(allowed)
    unknown = [r for r in reasons if r not in vocabulary]
    if unknown:
        raise BadRequest(f"unknown reason {unknown[0]!r}; "
                         f"choose from {', '.join(sorted(vocabulary))}", field=field)
    return sorted(set(reasons))


def check_comment(comment: object) -> str | None:
    if comment is None:
        return None
    if not isinstance(comment, str):
        raise BadRequest(f"must be a string; got {type(comment).__name__}", field="comment")
    if len(comment) > COMMENT_MAX:
        raise BadRequest(f"{len(comment)} characters is over {COMMENT_MAX}", field="comment")
    return comment.strip() or None


def check_choice(choice: object) -> str:
    if choice not in CHOICES:
        raise BadRequest(f"must be one of {', '.join(CHOICES)}; got {choice!r}", field="choice")
    return choice


def check_thumb_value(value: object) -> str:
    if value not in THUMBS:
        raise BadRequest(f"must be 'up' or 'down'; got {value!r}", field="value")
    return value


def check_id_list(ids: object, lo: int, hi: int | None = None) -> list[int]:
    """message_ids: a list of lo..hi distinct ids (hi None = no upper bound)."""
    size = f"exactly {lo}" if hi == lo else f"at least {lo}"
    if not isinstance(ids, list) or len(ids) < lo or (hi is not None and len(ids) > hi):
        raise BadRequest(f"must be a list of {size} message ids; got {ids!r}", field="message_ids")
    if any(isinstance(i, list) for i in ids):
        raise BadRequest("ties are not allowed; list each id once, best first", field="message_ids")
    checked = [check_id(i, "message_ids") for i in ids]
    seen: set[int] = set()
    for i in checked:
        if i in seen:
            raise BadRequest(f"duplicate id {i}; each candidate appears once", field="message_ids")
        seen.add(i)
    return checked


def rated_message(db: Database, user_id: int, message_id: int) -> dict:
    """An assistant answer the user owns: 404 if unknown/foreign, 400 if a user turn."""
    message = conv.get_message(db, user_id, check_id(message_id, "message_id"))
    if message["role"] != "assistant":
        raise BadRequest(f"message {message_id} is a {message['role']} turn; "
                         "only assistant answers can be rated", field="message_id")
    return message


def same_turn(db: Database, user_id: int, ids: list[int]) -> list[dict]:
    """The candidates, checked to be assistant answers to one user turn, in the given order."""
    messages = [rated_message(db, user_id, i) for i in ids]
    if len({m["candidate_group"] for m in messages}) != 1:
        raise BadRequest("the candidates must answer the same user turn", field="message_ids")
    return messages


# ---- the event log -----------------------------------------------------------------------

def _written(row: dict | None) -> dict:
    """The row a function has just written, read back in its transaction."""
    if row is None:
        raise AssertionError("a row written in this transaction is missing")
    return row


def _event(db: Database, user_id: int, kind: str, ids: list[int], value: str | None,
           reasons: list[str] | None = None, comment: str | None = None) -> int:
    return insert(db, "feedback_events", {
        "user_id": user_id, "kind": kind, "message_ids": json.dumps(ids), "value": value,
        "reasons": json.dumps(reasons or []), "comment": comment, "created_at": now(),
        "training_run_id": None,
    })


def _decoded(row: dict, *fields: str) -> dict:
    return dict(row, **{f: json.loads(row[f]) if row[f] else [] for f in fields})


def events(db: Database, user_id: int) -> list[dict]:
    rows = db["feedback_events"].rows_where("user_id = ?", [user_id], order_by="id")
    return [_decoded(r, "message_ids", "reasons") for r in rows]


def has_events(db: Database, user_id: int) -> bool:
    return bool(db["feedback_events"].count_where("user_id = ?", [user_id]))


def new_events(db: Database, user_id: int) -> list[dict]:
    """Events no training run has consumed yet, oldest first."""
    rows = db["feedback_events"].rows_where("user_id = ? and training_run_id is null",
                                            [user_id], order_by="id")
    return [_decoded(r, "message_ids", "reasons") for r in rows]


def mark_events_used(db: Database, user_id: int, event_ids: list[int], run_id: int) -> int:
    """Attach unconsumed events to a training run; returns how many were marked.

    Events already used by an earlier run keep that run (first consumer wins).
    """
    if not event_ids:
        return 0
    marks = ",".join("?" * len(event_ids))
    cursor = db.execute(
        f"update feedback_events set training_run_id = ? where user_id = ? "
        f"and training_run_id is null and id in ({marks})", [run_id, user_id, *event_ids])
    return cursor.rowcount


# ---- thumbs -------------------------------------------------------------------------------

def current_thumbs(db: Database, user_id: int, message_id: int) -> dict | None:
    rows = list(db["thumbs"].rows_where("user_id = ? and message_id = ?", [user_id, message_id]))
    return _decoded(rows[0], "reasons") if rows else None


def set_thumbs(db: Database, user_id: int, message_id: int, value: str, reasons: list[str],
               comment: str | None) -> dict:
    """Make (value, reasons, comment) the user's current vote; log it unless unchanged."""
    value = check_thumb_value(value)
    rated_message(db, user_id, message_id)
    old = current_thumbs(db, user_id, message_id)
    if old and (old["value"], old["reasons"], old["comment"]) == (value, reasons, comment):
        return old
    event_id = _event(db, user_id, "thumbs", [message_id], value, reasons, comment)
    db.table("thumbs").upsert({"user_id": user_id, "message_id": message_id, "value": value,
                         "reasons": json.dumps(reasons), "comment": comment,
                         "event_id": event_id, "updated_at": now()},
                        pk=("user_id", "message_id"))
    return _written(current_thumbs(db, user_id, message_id))


def clear_thumbs(db: Database, user_id: int, message_id: int) -> None:
    """Remove the current vote (logged as a 'thumbs_clear' event); no vote = no-op."""
    rated_message(db, user_id, message_id)
    if current_thumbs(db, user_id, message_id) is None:
        return
    _event(db, user_id, "thumbs_clear", [message_id], None)
    db.execute("delete from thumbs where user_id = ? and message_id = ?", [user_id, message_id])


# ---- comparisons --------------------------------------------------------------------------

def _winner(a: int, b: int, choice: str) -> int | str:
    """The outcome independent of the order the pair was shown in."""
    return {"a": a, "b": b}.get(choice, choice)


def _comparison_of_pair(db: Database, user_id: int, a: int, b: int) -> dict | None:
    rows = list(db["comparisons"].rows_where(
        "user_id = ? and ((message_a = ? and message_b = ?) or (message_a = ? and message_b = ?))",
        [user_id, a, b, b, a]))
    return _decoded(rows[0], "reasons") if rows else None


def compare(db: Database, user_id: int, message_ids: list[int], choice: str,
            reasons: list[str], comment: str | None) -> dict:
    """Record a pairwise judgement; the winner becomes the conversation's branch.

    One current judgement per pair: judging the pair again replaces it (history in events).
    """
    a, b = check_id_list(message_ids, 2, 2)
    choice = check_choice(choice)
    first, second = same_turn(db, user_id, [a, b])
    old = _comparison_of_pair(db, user_id, a, b)
    if old is None or _changed(old, a, b, choice, reasons, comment):
        event_id = _event(db, user_id, "comparison", [a, b], choice, reasons, comment)
        if old is not None:
            db.table("comparisons").delete(old["id"])
        db.table("comparisons").insert({"user_id": user_id, "event_id": event_id, "message_a": a,
                                  "message_b": b, "choice": choice,
                                  "reasons": json.dumps(reasons), "comment": comment,
                                  "created_at": now()})
    if choice in ("a", "b"):
        conv.choose_candidate(db, first if choice == "a" else second)
    return _written(_comparison_of_pair(db, user_id, a, b))


def _changed(old: dict, a: int, b: int, choice: str, reasons: list[str],
             comment: str | None) -> bool:
    before = (_winner(old["message_a"], old["message_b"], old["choice"]), old["reasons"],
              old["comment"])
    return before != (_winner(a, b, choice), reasons, comment)


def comparisons(db: Database, user_id: int) -> list[dict]:
    rows = db["comparisons"].rows_where("user_id = ?", [user_id], order_by="id")
    return [_decoded(r, "reasons") for r in rows]


# ---- rankings -----------------------------------------------------------------------------

def _ranking_of_turn(db: Database, user_id: int, turn_id: int) -> dict | None:
    rows = list(db.query(
        "select r.* from rankings r join messages m "
        f"on m.id = {json_first_int(db, 'r.message_ids')} "
        "where r.user_id = ? and m.candidate_group = ?", [user_id, turn_id]))
    return _decoded(rows[0], "message_ids") if rows else None


def rank(db: Database, user_id: int, message_ids: list[int]) -> dict:
    """Record a full order (best first) over candidates of one turn; the best is chosen.

    One current ranking per turn: ranking it again replaces the old one.
    """
    ids = check_id_list(message_ids, 2)
    messages = same_turn(db, user_id, ids)
    old = _ranking_of_turn(db, user_id, messages[0]["candidate_group"])
    if old is None or old["message_ids"] != ids:
        event_id = _event(db, user_id, "ranking", ids, None)
        if old is not None:
            db.table("rankings").delete(old["id"])
        db.table("rankings").insert({"user_id": user_id, "event_id": event_id,
                               "message_ids": json.dumps(ids), "created_at": now()})
    conv.choose_candidate(db, messages[0])
    return _written(_ranking_of_turn(db, user_id, messages[0]["candidate_group"]))


def rankings(db: Database, user_id: int) -> list[dict]:
    rows = db["rankings"].rows_where("user_id = ?", [user_id], order_by="id")
    return [_decoded(r, "message_ids") for r in rows]


def all_thumbs(db: Database, user_id: int) -> list[dict]:
    rows = db["thumbs"].rows_where("user_id = ?", [user_id], order_by="message_id")
    return [_decoded(r, "reasons") for r in rows]


def thumbs_by_turn(db: Database, user_id: int) -> list[dict]:
    """message_id, value, event_id and candidate_group (the turn) of each current thumb,
    grouped by turn."""
    return list(db.query(
        "select t.message_id, t.value, t.event_id, m.candidate_group from thumbs t "
        "join messages m on m.id = t.message_id and m.user_id = t.user_id "
        "where t.user_id = ? order by m.candidate_group, t.message_id", [user_id]))


# ---- summaries ----------------------------------------------------------------------------

def effective_new_labels(db: Database, user_id: int) -> int:
    """Judgements no training run has consumed, counted as labels, not events.

    A vote toggled up, down and up again is three events but one label (the current one);
    a cleared vote is none; a tie or "both bad" teaches nothing and is not counted. One
    current thumb, decisive comparison or ranking whose latest event is unconsumed = 1.
    """
    fresh = ("join feedback_events e on e.id = x.event_id and e.training_run_id is null "
             "where x.user_id = ?")
    return sum(db.execute(sql.format(fresh), [user_id]).fetchone()[0] for sql in (
        "select count(*) from thumbs x {}",
        "select count(*) from comparisons x {} and x.choice in ('a', 'b')",
        "select count(*) from rankings x {}"))


def counts(db: Database, user_id: int) -> dict:
    one = "select count(*) from {} where user_id = ?"
    up, down = (db.execute(one.format("thumbs") + " and value = ?", [user_id, v]).fetchone()[0]
                for v in THUMBS)
    return {
        "thumbs_up": up, "thumbs_down": down,
        "comparisons": db.execute(one.format("comparisons"), [user_id]).fetchone()[0],
        "rankings": db.execute(one.format("rankings"), [user_id]).fetchone()[0],
        "events_since_last_training": db.execute(
            one.format("feedback_events") + " and training_run_id is null",
            [user_id]).fetchone()[0],
        "effective_new_labels": effective_new_labels(db, user_id),
    }


def message_view(db: Database, user_id: int, message_id: int) -> dict:
    """A message the user owns with their current thumbs."""
    message = conv.get_message(db, user_id, check_id(message_id, "message_id"))
    return dict(message, thumbs=current_thumbs(db, user_id, message_id))


def verdicts_in_conversation(db: Database, user_id: int, conversation_id: int) -> list[dict]:
    """The user's current comparisons and rankings over answers in one conversation, so a
    thread can show each verdict next to its answers: {kind, message_ids, choice}."""
    conv.get_conversation_row(db, user_id, conversation_id)
    ids = "select id from messages where conversation_id = ?"
    pairs = db.query(f"select message_a, message_b, choice from comparisons where user_id = ? "
                     f"and message_a in ({ids}) order by id", [user_id, conversation_id])
    ranks = db.query("select message_ids from rankings where user_id = ? and "
                     f"{json_first_int(db, 'message_ids')} in ({ids}) order by id",
                     [user_id, conversation_id])
    return ([{"kind": "comparison", "message_ids": [p["message_a"], p["message_b"]],
              "choice": p["choice"]} for p in pairs]
            + [{"kind": "ranking", "message_ids": json.loads(r["message_ids"]), "choice": None}
               for r in ranks])


def counts_by_user(db: Database) -> dict[int, dict]:
    """counts() for every user (the admin page's per-user feedback column)."""
    from feedback_store.users import list_users

    return {u["id"]: counts(db, u["id"]) for u in list_users(db)}
