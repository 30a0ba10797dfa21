"""When a user's adapter cannot be loaded: which version serves instead, and the record the
admin sees.

A version whose files are missing or corrupt must not turn that user's chat into a 500.
The answer comes from the newest earlier version that loads (never a newer one: a rollback
away from it was deliberate), else from the base, and says so. The failure is remembered
for this process, so later requests skip the broken version without touching the disk
again (a failed load runs on the generation thread and would stall everyone each time),
and it is listed for the admin (GET /admin/users, /health with the admin key) until a
restart; promoting or rolling back to another version is the fix.
"""

from __future__ import annotations

import threading
from pathlib import Path

from adapters import registry
from assistant.engine import AdapterRef
from feedback_store.clock import now
from feedback_store.errors import public_message
from feedback_store.sql import Database


class AdapterFailures:
    """Adapter versions that failed to load in this process, by (user id, version)."""

    def __init__(self) -> None:
        self._failed: dict[tuple[int, int], dict] = {}
        self._lock = threading.Lock()

    def record(self, ref: AdapterRef, exc: BaseException) -> None:
        with self._lock:
            self._failed[(ref.user_id, ref.version)] = {
                "user_id": ref.user_id, "version": ref.version,
                "error": public_message(exc), "failed_at": now()}

    def failed(self, ref: AdapterRef) -> bool:
        with self._lock:
            return (ref.user_id, ref.version) in self._failed

    def for_user(self, user_id: int) -> list[dict]:
        with self._lock:
            return [f for (uid, _), f in sorted(self._failed.items()) if uid == user_id]

    def report(self) -> list[dict]:
        with self._lock:
            return [self._failed[k] for k in sorted(self._failed)]


def earlier_versions(db: Database, adapters_dir: Path, user_id: int,
                     version: int) -> list[AdapterRef]:
    """The user's versions older than `version`, newest first: the fallbacks, in order."""
    return [AdapterRef(user_id, r["version"], adapters_dir / r["path"])
            for r in registry.earlier_rows(db, user_id, version)]


def notice(failed_version: int | None, served: AdapterRef | None) -> str | None:
    """What an answer served by a fallback says about it (None for a normal answer)."""
    if failed_version is None:
        return None
    source = f"adapter version {served.version}" if served else "the base model"
    return (f"your adapter version {failed_version} could not be loaded; this answer came "
            f"from {source}")
