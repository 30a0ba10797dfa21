"""One training run at a time per data directory, across server restarts.

The worker holds an exclusive `flock` on `<data_dir>/training.lock` for the whole run. The
OS releases it when the process dies however it dies (kill -9 included), so the lock can
never go stale, and a restarted server that finds it held knows a worker is still alive
(an orphan of the previous server) and starts no second one.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

LOCK_NAME = "training.lock"


class RunLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self.fd: int | None = None
        self._probe = threading.Lock()       # server threads probe it concurrently

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self, block: bool = False) -> bool:
        """Take the lock (waiting for it if `block`); False if another process holds it."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())    # who holds it, for people reading the dir
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)                        # closing the descriptor unlocks
            self.fd = None

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now."""
        with self._probe:
            if self.fd is not None:
                return False
            if not self.acquire():
                return True
            self.release()
            return False

    def wait_free(self) -> None:
        """Block until no other process holds the lock (without keeping it)."""
        if self.acquire(block=True):
            self.release()

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def __enter__(self) -> RunLock:
        self.acquire(block=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
