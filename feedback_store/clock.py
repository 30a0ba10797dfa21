"""Timestamps as ISO-8601 UTC strings (sortable as text)."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
