"""Opening the database, and the one-writer owner used by the async server.

Following datasette's pattern: every write goes through one thread that owns the only
write connection, so writes never contend for SQLite's lock and each runs in exactly one
transaction; reads use per-thread connections (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from feedback_store.migrations import migrate

T = TypeVar("T")


def connect(path: str | Path, *, check_same_thread: bool = True) -> Database:
    """A sqlite-utils Database in WAL mode with foreign keys on and a busy timeout."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=check_same_thread,
                           isolation_level=None)
    db = Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=30000")
    return db


def open_db(path: str | Path) -> Database:
    """Connect and bring the schema up to date."""
    db = connect(path)
    migrate(db)
    return db


def transaction(db: Database, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(db, *args) inside one transaction (BEGIN IMMEDIATE takes the write lock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db, *args)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


class Store:
    """Async access for the server: `await store.read(fn, ...)`, `await store.write(fn, ...)`.

    fn always receives a sqlite_utils.Database as its first argument.
    """

    def __init__(self, path: str | Path, read_threads: int = 4) -> None:
        self.path = Path(path)
        open_db(self.path).close()
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(read_threads, thread_name_prefix="db-read")
        self._writes: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="db-write", daemon=True)
        self._writer.start()

    def _reader_db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path)
        return db

    def _write_loop(self) -> None:
        db = connect(self.path)
        while True:
            item = self._writes.get()
            if item is None:
                db.close()
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(transaction(db, fn, *args))
            except BaseException as exc:  # handed to the awaiting caller
                future.set_exception(exc)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader_db(), *args))

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write through the writer thread from synchronous code."""
        future: Future = Future()
        self._writes.put((future, fn, args))
        return future.result()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        future: Future = Future()
        self._writes.put((future, fn, args))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._writes.put(None)
        self._writer.join(timeout=10)
        self._readers.shutdown(wait=False)
