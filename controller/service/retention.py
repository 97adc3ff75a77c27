"""What the daemon forgets, and when (`[history]`): a finished job's
training log is thinned `keep_logs_for` after it finished, a bounded batch
of logs a pass, on the daemon's own schedule beside the tick. The job row
and its transitions are kept for ever; the hooks' settled outbox rows go
after `[events] keep` (service.hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from ftctl.controller.config import Config
from ftctl.models import Store, utcnow

# a pass every minute, at most this many logs a pass: a few hundred
# milliseconds of writes at most, whatever the history
EVERY_S = 60.0
BATCH = 100


class Retention:
    def __init__(self, config: Config, store: Store, *, clock: Callable[[], datetime] = utcnow, logger: Any = None):
        self.config = config
        self.store = store
        self.clock = clock
        self.log = logger or structlog.get_logger("ftctl")

    def reload(self, config: Config) -> None:
        self.config = config

    def run_once(self, limit: int = BATCH) -> tuple[int, int]:
        """One bounded pass: (logs thinned, points deleted)."""
        conf, now = self.config.history, self.clock()
        logs, points = self.store.thin_logs(now - timedelta(seconds=conf.keep_logs_for), conf.keep_points, now,
                                            limit=limit)
        if logs:
            self.log.info("training logs thinned", logs=logs, points_deleted=points, keep_points=conf.keep_points)
        return logs, points
