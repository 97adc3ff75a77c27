"""The daemon: the reconcile step on an APScheduler interval.

One instance of the tick at a time, missed runs coalesced. SIGTERM and
SIGINT let the tick in hand finish, then the process exits 0. SIGHUP
re-reads controller.toml between ticks; a broken file is logged and the
running config kept. Under systemd (Type=notify) it sends READY=1, STATUS=
after each tick, WATCHDOG=1 while the loop is healthy and STOPPING=1.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from ftctl.controller.config import Config, ConfigError, load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.service.notify import Notifier, Watchdog
from ftctl.models import LockLost, Store

# exit status when this daemon finds it no longer holds the database's lock:
# systemd restarts it (Restart=on-failure), and the new process waits its turn
EXIT_LOCK_LOST = 6


class Daemon:
    def __init__(self, config: Config, *, until_done: bool = False, notifier: Notifier | None = None):
        self.config = config
        # SIGHUP re-reads this file, wherever the daemon's working directory is
        self.config_file = Path(config.path).resolve() if config.path else None
        self.until_done = until_done
        self.notifier = notifier or Notifier()
        self.log = structlog.get_logger("ftctl")
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.tick_lock = threading.Lock()
        self.store: Store | None = None
        self.reconciler: Ticker | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.metrics = None
        self.ticks = 0
        # ticks that raised in a row: past [controller] failed_ticks_limit the
        # watchdog pings stop, so systemd restarts a daemon that only fails
        self.failed_ticks = 0
        self.last_error: str | None = None
        self.exit_code = 0
        # monotonic times the watchdog judges the loop by
        self.tick_started: float | None = None
        self.tick_ended: float | None = None

    # -- signals -------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame) -> None:
        self.log.info("stopping", signal=signal.Signals(signum).name)
        self.stop_event.set()

    def _on_hup(self, _signum: int, _frame) -> None:
        self.reload_event.set()

    # -- the loop ----------------------------------------------------------------------

    def healthy(self) -> bool:
        """The loop is alive: a tick is not stuck, ticks keep coming, and not
        every one of the last few failed."""
        if self.failed_ticks >= self.config.controller.failed_ticks_limit:
            return False
        grace = self.notifier.watchdog_seconds or 60.0
        now = time.monotonic()
        started, ended = self.tick_started, self.tick_ended
        if started is not None and (ended is None or ended < started):
            return now - started < grace
        return ended is not None and now - ended < self.config.controller.poll_interval + grace

    def _tick(self) -> None:
        if self.stop_event.is_set():
            return
        with self.tick_lock:
            self.tick_started = time.monotonic()
            try:
                self.store.assert_lock_held()
                result = self.reconciler.tick()
            except LockLost as exc:
                # another process may drive the database now: act no more
                self.log.error("daemon lock lost; stopping without acting further", error=str(exc))
                self.notifier.status(f"stopping: {exc}")
                self.exit_code = EXIT_LOCK_LOST
                self.stop_event.set()
                self.tick_ended = time.monotonic()
                return
            except Exception as exc:  # a bad tick must never kill the daemon
                self.failed_ticks += 1
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                limit = self.config.controller.failed_ticks_limit
                self.log.error("tick failed", error=self.last_error, failed_in_a_row=self.failed_ticks)
                if self.failed_ticks >= limit:
                    self.notifier.status(f"unhealthy: {self.failed_ticks} ticks failed in a row "
                                         f"(last: {exc.__class__.__name__}); watchdog pings stopped")
                else:
                    self.notifier.status(f"last tick failed: {exc.__class__.__name__}")
                self.tick_ended = time.monotonic()
                return
            self.failed_ticks = 0
            self.tick_ended = time.monotonic()
            seconds = self.tick_ended - self.tick_started
            self.ticks += 1
            self.notifier.status(result.summary())
            if self.metrics is not None:
                self.metrics.observe(result, seconds, self.store.totals_by_provider_state())
            self.log.debug("tick", seconds=round(seconds, 3), summary=result.summary())
            if self.until_done and result.all_terminal:
                self.log.info("all jobs are terminal", summary=result.summary())
                self.stop_event.set()

    def _reload(self) -> None:
        self.reload_event.clear()
        path = self.config_file
        if path is None:
            self.log.warning("reload ignored: the config did not come from a file")
            return
        self.notifier.reloading()
        try:
            new = load_config(path)
        except ConfigError as exc:
            self.log.error("reload refused; running on the previous config", error=str(exc))
            self.notifier.reloaded(f"reload refused ({exc}); running on the previous config")
            return
        with self.tick_lock:  # never in the middle of a tick
            changes = self.reconciler.reload(new)
            old_poll = self.config.controller.poll_interval
            self.config = new
            if new.controller.poll_interval != old_poll:
                self.scheduler.reschedule_job("reconcile", trigger="interval", seconds=new.controller.poll_interval)
        self.log.info("config reloaded", path=str(path), changed=changes or ["nothing"])
        self.notifier.reloaded(f"config reloaded ({', '.join(changes) or 'no change'})")

    def run(self) -> int:
        """Runs until a signal (or, with until_done, until every job is
        terminal); returns the exit code."""
        self.store = Store(self.config.database_url)
        watchdog = Watchdog(self.notifier, self.healthy)
        try:
            self.store.acquire_daemon_lock()
            self.reconciler = Ticker(self.config, self.store, should_stop=self.stop_event.is_set,
                                     guard=self.store.assert_lock_held)
            if self.config.metrics.listen:
                from ftctl.controller.service.metrics import Metrics

                self.metrics = Metrics(self.config.metrics.listen)
            handlers = {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop, signal.SIGHUP: self._on_hup}
            previous = {s: signal.signal(s, h) for s, h in handlers.items()}
            self.scheduler = BackgroundScheduler(timezone=timezone.utc)
            self.scheduler.add_job(
                self._tick, "interval", seconds=self.config.controller.poll_interval, id="reconcile",
                next_run_time=datetime.now(timezone.utc), coalesce=True, max_instances=1,
                misfire_grace_time=None,
            )
            self.tick_ended = time.monotonic()  # the watchdog's clock starts now
            self.scheduler.start()
            self.log.info("daemon started", database=self.store.url.split("@")[-1],
                          config=str(self.config.path or ""), poll_interval=self.config.controller.poll_interval,
                          providers=sorted(self.config.providers), metrics=self.config.metrics.listen)
            self.notifier.ready(f"started; watching {len(self.config.providers)} provider(s)")
            watchdog.start()
            try:
                while not self.stop_event.wait(0.2):
                    if self.reload_event.is_set():
                        self._reload()
            finally:
                self.notifier.stopping()
                # wait=True: the tick in hand finishes before we exit
                self.scheduler.shutdown(wait=True)
                watchdog.stop()
                for s, handler in previous.items():
                    signal.signal(s, handler)
            self.log.info("daemon stopped", ticks=self.ticks, exit_code=self.exit_code)
            return self.exit_code
        finally:
            if self.metrics is not None:
                self.metrics.close()
            if self.reconciler is not None:
                self.reconciler.close()
            self.store.close()
            self.notifier.close()
