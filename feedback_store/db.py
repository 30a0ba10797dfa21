"""Opening the database, real transactions, and the one-writer owner used by the server.

The store is a SQLite file (the default) or a PostgreSQL database (`[store] url =
"postgresql://..."`, through psycopg 3); either way the code above this module gets a
feedback_store.sql.Database and writes its SQL once. What differs lives here: SQLite's
PRAGMAs and WAL checkpoints, and how a write transaction excludes other writers (SQLite's
BEGIN IMMEDIATE; on PostgreSQL a transaction-scoped advisory lock, so the code keeps the
one-writer-at-a-time semantics it was written against, across every process and server).

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
import itertools
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

from feedback_store.migrations import migrate
from feedback_store.sql import POSTGRES, SQLITE, Database

T = TypeVar("T")


PRIVATE_FILE = 0o600       # the database holds people's conversations: owner only
PRIVATE_DIR = 0o700
BUSY_TIMEOUT_MS = 30000
# PostgreSQL: the advisory lock every write transaction takes (any constant; the store's
# database holds nothing else), and how long a statement may wait for a lock.
WRITE_LOCK = 0x5EED_F00D
_savepoints = itertools.count()


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def insert(db: Database, table: str, row: dict) -> int:
    """Insert one row and return its id (every table keyed by `id` numbers its rows)."""
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


def connect(target: str | Path, *, check_same_thread: bool = True) -> Database:
    """A connection to the store: a postgresql:// URL, or the path of the SQLite file."""
    if is_postgres_url(target):
        return _connect_postgres(str(target))
    return _connect_sqlite(Path(target), check_same_thread)


def _connect_sqlite(path: Path, check_same_thread: bool) -> Database:
    """SQLite in WAL mode with foreign keys on and a busy timeout."""
    private_dir(path.parent)
    _private_files(path)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=check_same_thread, isolation_level=None)
    db = Database(conn, SQLITE)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # Deleted rows are overwritten with zeros, so erased text does not linger in free pages.
    db.execute("PRAGMA secure_delete=ON")
    return db


def _connect_postgres(url: str) -> Database:
    """psycopg 3 in autocommit mode: as with SQLite's isolation_level=None, a transaction
    exists only where `transaction()` (or `snapshot()`) begins one."""
    import psycopg

    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise ConnectionError(f"cannot connect to the store at {redacted(url)}: {exc}"
                              ) from exc
    return Database(conn, POSTGRES)


def redacted(target: str | Path) -> str:
    """The store's path or URL without a password (messages and logs never show one)."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(target))


def open_db(target: str | Path) -> Database:
    """Connect and bring the schema up to date."""
    db = connect(target)
    migrate(db)
    return db


@contextmanager
def _savepoint(db: Database) -> Iterator[Database]:
    name = f"sp{next(_savepoints)}"
    db.execute(f"SAVEPOINT {name}")
    try:
        yield db
    except BaseException:
        db.execute(f"ROLLBACK TO {name}")
        db.execute(f"RELEASE {name}")
        raise
    db.execute(f"RELEASE {name}")


@contextmanager
def _transaction(db: Database, exclusive: bool = True) -> Iterator[Database]:
    """BEGIN ... COMMIT, or ROLLBACK on any exception. Nested use becomes a savepoint.

    One writer at a time. SQLite: BEGIN IMMEDIATE (the write lock at once, waiting up to
    the busy timeout), always. PostgreSQL: the transaction-scoped advisory lock WRITE_LOCK
    (released by COMMIT or ROLLBACK), unless exclusive=False: then row locks only (the
    training-run claim, FOR UPDATE SKIP LOCKED, which must not queue behind other writes)."""
    if db.in_transaction:
        with _savepoint(db):
            yield db
        return
    if db.is_postgres:
        db.execute("BEGIN")
        if exclusive:
            db.execute("select pg_advisory_xact_lock(?)", [WRITE_LOCK])
    else:
        db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:      # an error may have ended the transaction already
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@overload
def transaction(db: Database) -> Any: ...
@overload
def transaction(db: Database, fn: Callable[..., T], *args: Any, exclusive: bool = True
                ) -> T: ...


def transaction(db: Database, fn: Callable[..., T] | None = None, *args: Any,
                exclusive: bool = True) -> Any:
    """One real transaction: `with transaction(db): ...` or `transaction(db, fn, *args)`,
    which runs fn(db, *args) inside it and returns its result."""
    if fn is None:
        return _transaction(db, exclusive)
    with _transaction(db, exclusive):
        return fn(db, *args)


@contextmanager
def snapshot(db: Database) -> Iterator[Database]:
    """Several reads that see one state of the store (an export is self-consistent)."""
    if db.in_transaction:
        yield db
        return
    db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if db.is_postgres
               else "BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")


# PostgreSQL errors worth retrying: serialization failure, deadlock, lock not available.
_PG_TRANSIENT = {"40001", "40P01", "55P03"}


def is_busy(exc: BaseException) -> bool:
    """Whether a store error means "busy, try again" (not a bug or bad data)."""
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    return getattr(exc, "sqlstate", None) in _PG_TRANSIENT


def retrying(db: Database, fn: Callable[..., T], *args: Any, attempts: int = 8,
             first_wait: float = 0.5, exclusive: bool = True) -> T:
    """transaction(db, fn, *args), retried with backoff while the store says it is busy.

    For writes that must land (a run's final status and error): a long-held lock in another
    process must not turn "this run failed because X" into an unexplained failure.
    """
    wait = first_wait
    for attempt in range(attempts):
        try:
            return transaction(db, fn, *args, exclusive=exclusive)
        except Exception as exc:
            if not is_busy(exc) or attempt == attempts - 1:
                raise
            time.sleep(wait)
            wait = min(wait * 2, 10.0)
    raise AssertionError("unreachable")


def wal_checkpoint(db: Database) -> tuple[int, int, int]:
    """PRAGMA wal_checkpoint(TRUNCATE): (busy, WAL frames, frames checkpointed). It waits
    (busy timeout) for readers; busy = 1 means a reader kept it from finishing. SQLite
    only: PostgreSQL has no WAL file of ours to truncate, (0, 0, 0)."""
    if db.is_postgres:
        return (0, 0, 0)
    busy, frames, done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy, frames, done


class Store:
    """Async access for the server: `await store.read(fn, ...)`, `await store.write(fn, ...)`.

    fn always receives a feedback_store.sql.Database as its first argument. `target` is the
    SQLite file's path or a postgresql:// URL.
    """

    def __init__(self, target: str | Path, read_threads: int = 4) -> None:
        self.path: str | Path = target if is_postgres_url(target) else Path(target)
        open_db(self.path).close()
        self._local = threading.local()
        self._opened: list[Database] = []       # the readers' connections, closed by close()
        self._readers = ThreadPoolExecutor(read_threads, thread_name_prefix="db-read")
        self._writes: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="db-write", daemon=True)
        self._writer.start()

    def _reader_db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path, check_same_thread=False)
            self._opened.append(db)
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
        self._readers.shutdown(wait=True)
        for db in self._opened:
            db.close()
