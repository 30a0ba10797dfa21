"""What every request handler can reach: config, store, engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from assistant.config import Config
from assistant.engine import Engine
from feedback_store.db import Store


@dataclass
class AppState:
    config: Config
    store: Store
    engine: Engine
    started: float = field(default_factory=time.time)
    admin_user_id: int | None = None     # who ASSISTANT_ADMIN_KEY acts as
    scheduler: object | None = None      # the training scheduler, once started

    @property
    def adapters_root(self) -> Path:
        return self.config.adapters_dir
