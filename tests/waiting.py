"""Awaiting a condition in tests (a poll with a deadline, never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(value: Callable[[], T | None], what: str = "condition", timeout: float = 30.0) -> T:
    """Poll until value() is truthy and return it; fail naming `what` after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = value()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
