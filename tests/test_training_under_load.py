"""Fault test: a training run succeeds while other users chat and vote continuously.

Before the fix, the worker iterated a lazy SELECT (the other users, for the shared prior)
while writing feature vectors on the same connection: as soon as the server committed
anything in between, SQLite answered "database is locked" at once and the run failed.
"""

import threading

import httpx

from tests.conftest import ADMIN_KEY, BOTH
from tests.test_training_flow import give_feedback, serve, train, wait

BACKENDS = BOTH  # the store on SQLite and on PostgreSQL


class Chatter(threading.Thread):
    """A user who chats (two candidates) and votes until told to stop; counts what was acked."""

    def __init__(self, live, key: str, name: str) -> None:
        super().__init__(daemon=True, name=f"chatter-{name}")
        self.live, self.key, self.name = live, key, name
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.acked_messages: set[int] = set()
        self.acked_votes = 0

    def run(self) -> None:
        h = self.live.headers(self.key)
        with httpx.Client(base_url=self.live.url, headers=h, timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                r = client.post("/api/chat", json={"content": f"{self.name} asks {i}", "n": 2,
                                                   "max_tokens": 3})
                if r.status_code != 200:
                    self.errors.append(f"chat {r.status_code} {r.text[:200]}")
                    continue
                a, b = (c["id"] for c in r.json()["candidates"])
                self.acked_messages |= {a, b}
                v = client.post("/api/comparisons", json={"message_ids": [a, b],
                                                          "choice": "ab"[i % 2]})
                if v.status_code != 200:
                    self.errors.append(f"vote {v.status_code} {v.text[:200]}")
                else:
                    self.acked_votes += 1


def test_training_run_succeeds_while_others_chat_and_vote(tmp_path, tiny_dir, store_url):
    server, thread, live = serve(tmp_path, tiny_dir, store_url,
                                 ASSISTANT_TRAINING_PROMOTE_MARGIN=-1e9,
                                 ASSISTANT_TRAINING_KL_BUDGET=1e9)
    chatters: list[Chatter] = []
    try:
        key = live.add_user("alice")
        give_feedback(live, key)
        for name in ("bob", "carol", "dan"):
            other = live.add_user(name)
            give_feedback(live, other, turns=1)    # the shared prior reads their votes
            chatters.append(Chatter(live, other, name))
        for c in chatters:
            c.start()
        runs = [wait(live, train(live, "alice", force=True)["id"]) for _ in range(3)]
    finally:
        for c in chatters:
            c.stop.set()
        for c in chatters:
            c.join(timeout=60)
        server.should_exit = True
        thread.join(timeout=10)
    for run in runs:
        assert run["status"] == "succeeded", (run["error"], run["log_tail"])
    assert not [e for c in chatters for e in c.errors]
    assert all(c.acked_votes > 0 for c in chatters)
    # every acknowledged write is in the database
    from feedback_store.db import connect

    db = connect(live.config.store_target)
    acked = set().union(*(c.acked_messages for c in chatters))
    stored = {r[0] for r in db.execute("select id from messages where role = 'assistant'")}
    assert acked <= stored
    for c in chatters:
        votes = db.execute("select count(*) from comparisons c join users u on u.id = c.user_id"
                           " where u.name = ?", [c.name]).fetchone()[0]
        assert votes == c.acked_votes + 1        # + the one from give_feedback
    db.close()
    # and the admin key was never written to disk (the worker's config came on stdin)
    for path in live.config.data_dir.rglob("*"):
        if path.is_file() and not path.is_symlink() and "cache" not in path.parts:
            assert ADMIN_KEY.encode() not in path.read_bytes(), path
