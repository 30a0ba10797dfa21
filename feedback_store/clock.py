"""Timestamps as ISO-8601 UTC strings (sortable as text)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def later(seconds: float) -> str:
    """now() plus `seconds`, in the same sortable form (a lease's end)."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")
