"""Per-key rate limit: a token bucket per API key (by its hash), in memory.

Each key may make `burst` requests at once and then `per_minute` a minute on average; over
that it gets 429 with Retry-After (whole seconds until one request is allowed again).
Off (per_minute = 0) by default: one person's assistant on a loopback port needs no limit,
a server shared by many people sets one in config.toml.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from feedback_store.errors import TooManyRequests

MAX_BUCKETS = 10_000    # full buckets are forgotten past this (a full one equals a new one)


class RateLimiter:
    def __init__(self, per_minute: int, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0           # tokens per second
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}   # key hash -> (tokens, stamp)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def charge(self, key_id: str) -> None:
        """Take one request from the key's bucket, or raise TooManyRequests."""
        if not self.enabled:
            return
        with self._lock:
            now = self.clock()
            tokens, stamp = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise TooManyRequests(
                    f"rate limit: at most {self.burst} requests at once and "
                    f"{self.rate * 60:g} a minute per key; retry in {wait} s", wait)
            self._buckets[key_id] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        for key, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * self.rate >= self.burst:
                del self._buckets[key]
