"""Opening the database, real transactions, and the one-writer owner used by the server.

Following datasette's pattern: every write goes through one thread that owns the only
write connection, so writes never contend for SQLite's lock and each runs in exactly one
transaction; reads use per-thread connections (WAL lets them run beside the writer).

Connections are opened with isolation_level=None (the sqlite3 module never opens a
transaction behind our back), so a transaction exists only where `transaction()` begins one.
Never iterate a lazy SELECT while writing on the same connection: the open statement pins
the read snapshot, and once another process has committed, the write cannot take the lock
("database is locked" at once, the busy timeout does not apply). Materialize with list().
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, overload

from sqlite_utils import Database

from feedback_store.migrations import migrate

T = TypeVar("T")


PRIVATE_FILE = 0o600       # the database holds people's conversations: owner only
PRIVATE_DIR = 0o700
BUSY_TIMEOUT_MS = 30000


def insert(db: Database, table: str, row: dict) -> int:
    """Insert one row and return its id. sqlite-utils types `last_pk` as Any | None (None
    only for a table without a rowid; every table here has an integer id)."""
    pk = db.table(table).insert(row).last_pk
    if not isinstance(pk, int):
        raise TypeError(f"{table} has no integer id (last_pk {pk!r})")
    return pk


def private_dir(path: Path) -> None:
    """Create the directory (and parents) readable by the owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)


def _private_files(path: Path) -> None:
    """Create the database file owner-only before SQLite opens it: SQLite gives its -wal and
    -shm files the database file's mode. Files from older releases are tightened too.

    Only a missing file is opened here: closing any descriptor of an open database drops
    the POSIX locks of every SQLite connection in this process (and corrupts it)."""
    if not path.exists():
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE))
        except FileExistsError:
            pass
    for suffix in ("", "-wal", "-shm"):
        f = Path(f"{path}{suffix}")
        if f.exists() and f.stat().st_mode & 0o077:
            os.chmod(f, PRIVATE_FILE)


def connect(path: str | Path, *, check_same_thread: bool = True) -> Database:
    """A sqlite-utils Database in WAL mode with foreign keys on and a busy timeout."""
    path = Path(path)
    private_dir(path.parent)
    _private_files(path)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=check_same_thread, isolation_level=None)
    db = Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # Deleted rows are overwritten with zeros, so erased text does not linger in free pages.
    db.execute("PRAGMA secure_delete=ON")
    # sqlite-utils probes upsert support once per connection with CREATE + DROP TABLE; the
    # DROP fails ("database table is locked") under an open statement. SQLite >= 3.24 has
    # ON CONFLICT upserts, so answer the probe here.
    db._supports_on_conflict = sqlite3.sqlite_version_info >= (3, 24, 0)
    return db


def open_db(path: str | Path) -> Database:
    """Connect and bring the schema up to date."""
    db = connect(path)
    migrate(db)
    return db


@contextmanager
def _transaction(db: Database, mode: str = "IMMEDIATE") -> Iterator[Database]:
    """BEGIN (IMMEDIATE takes the write lock at once, waiting up to the busy timeout) ...
    COMMIT, or ROLLBACK on any exception. Nested use becomes a savepoint."""
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    conn.execute(f"BEGIN {mode}")
    try:
        yield db
    except BaseException:
        if conn.in_transaction:      # an error may have ended the transaction already
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@overload
def transaction(db: Database) -> Any: ...
@overload
def transaction(db: Database, fn: Callable[..., T], *args: Any) -> T: ...


def transaction(db: Database, fn: Callable[..., T] | None = None, *args: Any) -> Any:
    """One real transaction: `with transaction(db): ...` or `transaction(db, fn, *args)`,
    which runs fn(db, *args) inside it and returns its result."""
    if fn is None:
        return _transaction(db)
    with _transaction(db):
        return fn(db, *args)


def retrying(db: Database, fn: Callable[..., T], *args: Any, attempts: int = 8,
             first_wait: float = 0.5) -> T:
    """transaction(db, fn, *args), retried with backoff while SQLite says it is busy.

    For writes that must land (a run's final status and error): a long-held lock in another
    process must not turn "this run failed because X" into an unexplained failure.
    """
    wait = first_wait
    for attempt in range(attempts):
        try:
            return transaction(db, fn, *args)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(wait)
            wait = min(wait * 2, 10.0)
    raise AssertionError("unreachable")


def wal_checkpoint(db: Database) -> tuple[int, int, int]:
    """PRAGMA wal_checkpoint(TRUNCATE): (busy, WAL frames, frames checkpointed). It waits
    (busy timeout) for readers; busy = 1 means a reader kept it from finishing."""
    return tuple(db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())


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
            future, fn, args, in_transaction = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(transaction(db, fn, *args) if in_transaction
                                  else fn(db, *args))
            except BaseException as exc:  # handed to the awaiting caller
                future.set_exception(exc)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader_db(), *args))

    def _submit(self, fn: Callable[..., Any], args: tuple, in_transaction: bool = True) -> Future:
        future: Future = Future()
        self._writes.put((future, fn, args, in_transaction))
        return future

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write through the writer thread from synchronous code."""
        return self._submit(fn, args).result()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, args))

    async def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database file and truncate it (after an erase: the erased
        text must not stay in the WAL). Runs on the writer thread, outside a transaction."""
        return await asyncio.wrap_future(self._submit(wal_checkpoint, (), in_transaction=False))

    def close(self) -> None:
        self._writes.put(None)
        self._writer.join(timeout=10)
        self._readers.shutdown(wait=False)
