"""What every request handler can reach: config, store, engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from assistant.adapter_fallback import AdapterFailures
from assistant.config import Config
from assistant.engine import Engine
from assistant.ratelimit import RateLimiter
from assistant.scheduler import TrainingScheduler
from feedback_store.db import Store


@dataclass
class AppState:
    config: Config
    store: Store
    engine: Engine
    started: float = field(default_factory=time.time)
    admin_user_id: int | None = None     # who ASSISTANT_ADMIN_KEY acts as
    scheduler: TrainingScheduler | None = None      # the training scheduler, once started
    adapter_failures: AdapterFailures = field(default_factory=AdapterFailures)
    rate_limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        s = self.config.server
        self.rate_limiter = RateLimiter(s.rate_limit_per_minute, s.rate_limit_burst)

    @property
    def adapters_dir(self) -> Path:
        return self.config.adapters_dir
