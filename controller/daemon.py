"""The daemon: the reconcile step on an APScheduler interval.

One instance of the tick at a time, missed runs coalesced. SIGTERM and
SIGINT let the tick in hand finish, then the process exits 0.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timezone

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from controller.config import Config
from controller.reconciler import Reconciler
from models import Store


class Daemon:
    def __init__(self, config: Config, *, until_done: bool = False):
        self.config = config
        self.until_done = until_done
        self.log = structlog.get_logger("ftctl")
        self.stop_event = threading.Event()
        self.store: Store | None = None
        self.reconciler: Reconciler | None = None
        self.ticks = 0
        self.last_tick_ok: float | None = None

    def _on_signal(self, signum: int, _frame) -> None:
        self.log.info("stopping", signal=signal.Signals(signum).name)
        self.stop_event.set()

    def _tick(self) -> None:
        if self.stop_event.is_set():
            return
        started = time.monotonic()
        try:
            result = self.reconciler.tick()
        except Exception as exc:  # a bad tick must never kill the daemon
            self.log.error("tick failed", error=f"{exc.__class__.__name__}: {exc}")
            return
        self.ticks += 1
        self.last_tick_ok = time.monotonic()
        self.log.debug("tick", seconds=round(time.monotonic() - started, 3), summary=result.summary())
        if self.until_done and result.all_terminal:
            self.log.info("all jobs are terminal", summary=result.summary())
            self.stop_event.set()

    def run(self) -> int:
        """Runs until a signal; returns the exit code. The caller has already
        acquired nothing: the store lock is taken here."""
        self.store = Store(self.config.database_url)
        try:
            self.store.acquire_daemon_lock()
            self.reconciler = Reconciler(self.config, self.store, should_stop=self.stop_event.is_set)
            previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            scheduler = BackgroundScheduler(timezone=timezone.utc)
            scheduler.add_job(
                self._tick, "interval", seconds=self.config.controller.poll_interval, id="reconcile",
                next_run_time=datetime.now(timezone.utc), coalesce=True, max_instances=1,
                misfire_grace_time=None,
            )
            scheduler.start()
            self.log.info("daemon started", database=self.store.url.split("@")[-1],
                          poll_interval=self.config.controller.poll_interval,
                          providers=sorted(self.config.providers))
            try:
                while not self.stop_event.wait(0.2):
                    pass
            finally:
                # wait=True: the tick in hand finishes before we exit
                scheduler.shutdown(wait=True)
                for s, handler in previous.items():
                    signal.signal(s, handler)
            self.log.info("daemon stopped", ticks=self.ticks)
            return 0
        finally:
            if self.reconciler is not None:
                self.reconciler.close()
            self.store.close()
