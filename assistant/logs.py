"""Logging, configured once per process: by the `assistant` command (the server) and by the
training worker, at their entry points, never on import.

Python's default shows only warnings and above, without a time or a logger name, so the
project's log.info lines (an erase, a run's steps) were lost. The project's own loggers log
at server.log_level to stderr; third-party libraries stay at WARNING.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OURS = ("assistant", "adapters", "feedback_store")
LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "info") -> None:
    """Idempotent: a handler already on the root logger (pytest's, an embedding app's) is
    kept, and only the levels are set."""
    logging.basicConfig(format=FORMAT, level=logging.WARNING)
    for name in OURS:
        logging.getLogger(name).setLevel(level.upper())
