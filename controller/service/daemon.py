"""The daemon: the reconcile step on an APScheduler interval, while it leads.

Several daemons may run against one database (on several hosts, or twice on
one): exactly one leads (models.leadership), the others stand by, beat
their heart into the database and take over when the leader's lease runs
out. A leader renews its lease every third of it; one that cannot (paused,
cut off) stops acting by itself and stands by again. `--no-standby` keeps
the single-daemon behaviour: exit 3 if another leads, 6 if leadership is
lost.

While leading: one tick at a time, missed runs coalesced. SIGTERM and SIGINT
let the tick in hand finish, then the process exits 0. SIGHUP re-reads
controller.toml between ticks; a broken file is logged and the running
config kept. Under systemd (Type=notify) it sends READY=1, STATUS= after
each tick (or the standby's line), WATCHDOG=1 while the loop is healthy and
STOPPING=1.
"""

from __future__ import annotations

import contextlib
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
from ftctl.models import LockHeld, LockLost, Store

# exit status (with --no-standby) when this daemon finds it no longer leads:
# systemd restarts it (Restart=on-failure), and the new process waits its turn
EXIT_LOCK_LOST = 6


class Daemon:
    def __init__(self, config: Config, *, until_done: bool = False, notifier: Notifier | None = None,
                 standby: bool = True):
        self.config = config
        self.standby = standby
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
        self.lost: str | None = None  # why leadership was lost (set from the tick or the renewer)
        self.outage = False  # the database does not answer (one log line per outage)
        self.outage_logged = -1e9
        self.renewer: threading.Thread | None = None
        self._announced: str | None = None

    # -- signals -------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame) -> None:
        self.log.info("stopping", signal=signal.Signals(signum).name)
        self.stop_event.set()

    def _on_hup(self, _signum: int, _frame) -> None:
        self.reload_event.set()

    # -- the loop ----------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.scheduler is not None

    def healthy(self) -> bool:
        """The loop is alive: a tick is not stuck, ticks keep coming (or, on a
        standby, its loop turns), and not every one of the last few failed."""
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
                self.lost = str(exc)
                self.tick_ended = time.monotonic()
                return
            except Exception as exc:  # a bad tick must never kill the daemon
                self.failed_ticks += 1
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                limit = self.config.controller.failed_ticks_limit
                if not self._unreachable(exc):
                    self.log.error("tick failed", error=self.last_error, failed_in_a_row=self.failed_ticks)
                if self.failed_ticks >= limit:
                    self.notifier.status(f"unhealthy: {self.failed_ticks} ticks failed in a row "
                                         f"(last: {exc.__class__.__name__}); watchdog pings stopped")
                else:
                    self.notifier.status(f"last tick failed: {exc.__class__.__name__}")
                self.tick_ended = time.monotonic()
                return
            self.failed_ticks = 0
            self._reachable()
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
            self.store.leadership.lease = new.controller.lease
            changes = self.reconciler.reload(new)
            old_poll = self.config.controller.poll_interval
            self.config = new
            if new.controller.poll_interval != old_poll:
                self.scheduler.reschedule_job("reconcile", trigger="interval", seconds=new.controller.poll_interval)
        self.log.info("config reloaded", path=str(path), changed=changes or ["nothing"])
        self.notifier.reloaded(f"config reloaded ({', '.join(changes) or 'no change'})")

    # -- a database that goes away --------------------------------------------------

    def _unreachable(self, exc: BaseException) -> bool:
        """True (and one log line per outage) if `exc` says the database does
        not answer; the daemon stands and waits for it."""
        from sqlalchemy.exc import OperationalError

        if self.store is None or self.store.is_sqlite or not isinstance(exc, OperationalError):
            return False
        if not self.outage:
            self.outage = True
            # a server going down answers once or twice more on its way out:
            # one line per outage, not one per flicker
            if time.monotonic() - self.outage_logged > 60:
                first = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
                self.log.warning("database unreachable; acting no more until it answers (standing by)",
                                 error=first[0] if first else exc.__class__.__name__)
                self.notifier.status("database unreachable; standing by")
            self.outage_logged = time.monotonic()
        return True

    def _reachable(self) -> None:
        if self.outage:
            self.outage = False
            self.log.info("database reachable again")

    # -- leading and standing by ------------------------------------------------------

    def _lead(self) -> None:
        """Leadership was just acquired: start acting."""
        leadership = self.store.leadership
        self.store.fenced = True
        self.lost = None
        self.reconciler = Ticker(self.config, self.store, should_stop=self.stop_event.is_set,
                                 guard=self.store.assert_lock_held)
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.scheduler.add_job(
            self._tick, "interval", seconds=self.config.controller.poll_interval, id="reconcile",
            next_run_time=datetime.now(timezone.utc), coalesce=True, max_instances=1, misfire_grace_time=None,
        )
        self.tick_ended = time.monotonic()  # the watchdog's clock starts now
        self.scheduler.start()
        self.renewer = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
        self.renewer.start()
        self._announced = None
        self.log.info("leading", epoch=leadership.epoch, host=leadership.host, pid=leadership.pid)
        if self.metrics is not None:
            self.metrics.leader(leadership.host, True)

    def _renew(self) -> None:
        """Renew the lease every third of it; a database that does not answer
        is logged once per outage, and the lease runs out locally."""
        leadership = self.store.leadership
        while self.leading and self.lost is None and not self.stop_event.wait(max(0.1, leadership.lease / 3)):
            try:
                renewed = leadership.renew()
            except Exception as exc:  # noqa: BLE001 - the database is away: the lease says what follows
                if not self._unreachable(exc):
                    self.log.warning("lease renewal failed; acting until the lease runs out",
                                     error=f"{exc.__class__.__name__}")
                try:
                    leadership.check()
                except LockLost as lost:
                    self.lost = str(lost)
                continue
            self._reachable()
            if not renewed:
                self.lost = "another daemon took over the lease"
            elif self.metrics is not None:
                self.metrics.renewed()

    def _step_down(self) -> None:
        """Leadership is lost: stop acting at once, and stand by (or exit)."""
        self.scheduler.shutdown(wait=True)
        self.scheduler = None
        self.failed_ticks = 0
        self.store.fenced = False
        self.store.leadership.release()
        if self.reconciler is not None:
            self.reconciler.close()
            self.reconciler = None
        if not self.outage:  # an outage said so once already
            self.log.error("leadership lost; acting no more", error=self.lost)
            self.notifier.status(f"leadership lost ({self.lost}); standing by")
        if self.metrics is not None:
            self.metrics.leader(self.store.leadership.host, False)

    def _stand_by(self) -> None:
        """A turn of the standby loop: say who leads, beat the heart."""
        leadership = self.store.leadership
        self.tick_ended = time.monotonic()  # the standby loop turns: the watchdog is fed
        try:
            leader = leadership.holder()
            leadership.heartbeat("standby")
        except Exception as exc:  # noqa: BLE001 - the database is away: keep standing
            if not self._unreachable(exc):
                self.log.warning("standby heartbeat failed", error=exc.__class__.__name__)
            return
        self._reachable()
        line = f"standby: {leader or 'no daemon'} leads"
        if line != self._announced:
            self.log.info("standing by", leader=leader, lease=leadership.lease)
            self.notifier.status(line)
            self._announced = line

    def _try_lead(self) -> bool:
        try:
            return self.store.leadership.acquire()
        except Exception as exc:  # noqa: BLE001 - the database is away: keep standing
            if not self._unreachable(exc):
                self.log.warning("cannot take the lead", error=f"{exc.__class__.__name__}")
            return False

    def run(self) -> int:
        """Runs until a signal (or, with until_done, until every job is
        terminal); returns the exit code."""
        self.store = Store(self.config.database_url)
        leadership = self.store.leadership
        leadership.lease = self.config.controller.lease
        watchdog = Watchdog(self.notifier, self.healthy)
        previous = {}
        try:
            if not self._try_lead():
                if not self.standby:
                    who = leadership.holder()
                    raise LockHeld(f"another ftctl daemon is driving {leadership.where}" + (f" ({who})" if who else ""))
            if self.config.metrics.listen:
                from ftctl.controller.service.metrics import Metrics

                self.metrics = Metrics(self.config.metrics.listen)
            handlers = {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop, signal.SIGHUP: self._on_hup}
            previous = {s: signal.signal(s, h) for s, h in handlers.items()}
            self.tick_ended = time.monotonic()
            role = "leader" if leadership.leading else "standby"
            self.log.info("daemon started", role=role, database=self.store.url.split("@")[-1],
                          config=str(self.config.path or ""), poll_interval=self.config.controller.poll_interval,
                          providers=sorted(self.config.providers), metrics=self.config.metrics.listen)
            if leadership.leading:
                self._lead()
            self.notifier.ready(f"started as {role}; watching {len(self.config.providers)} provider(s)")
            watchdog.start()
            self._loop(leadership)
            self.notifier.stopping()
            if self.scheduler is not None:
                # wait=True: the tick in hand finishes before we exit
                self.scheduler.shutdown(wait=True)
                self.scheduler = None
            watchdog.stop()
            self.log.info("daemon stopped", ticks=self.ticks, exit_code=self.exit_code)
            return self.exit_code
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.metrics is not None:
                self.metrics.close()
            if self.reconciler is not None:
                self.reconciler.close()
            self.store.leadership.leave()
            self.store.close()
            self.notifier.close()

    def _loop(self, leadership) -> None:
        next_try = 0.0
        while not self.stop_event.wait(0.2):
            if self.leading:
                if self.reload_event.is_set():
                    self._reload()
                if self.lost is not None:
                    self._step_down()
                    if not self.standby:
                        self.exit_code = EXIT_LOCK_LOST
                        return
                    next_try = time.monotonic() + leadership.lease / 3
                elif time.monotonic() >= next_try:
                    next_try = time.monotonic() + max(0.5, leadership.lease / 3)
                    with contextlib.suppress(Exception):
                        leadership.heartbeat("leader")
                continue
            if self.reload_event.is_set():
                self._reload_standby()
            if time.monotonic() >= next_try:
                # often enough that a takeover comes within a lease plus a poll interval
                every = min(leadership.lease / 3, self.config.controller.poll_interval / 2)
                next_try = time.monotonic() + max(0.2, every)
                if self._try_lead():
                    self._lead()
                else:
                    self._stand_by()

    def _reload_standby(self) -> None:
        self.reload_event.clear()
        if self.config_file is None:
            return
        try:
            self.config = load_config(self.config_file)
        except ConfigError as exc:
            self.log.error("reload refused; running on the previous config", error=str(exc))
            return
        self.store.leadership.lease = self.config.controller.lease
        self.log.info("config reloaded", path=str(self.config_file), changed=["standing by"])
