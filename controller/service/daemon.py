"""The daemon: leads the database and reconciles, or stands by.

Several daemons may run against one database (on several hosts, or twice on
one): exactly one leads (models.leadership), the others stand by, beat
their heart into the database and take over when the leader's lease runs
out. A leader renews its lease every third of it; one that cannot (paused,
cut off) stops acting by itself and stands by again. `--no-standby` keeps
the single-daemon behaviour: exit 3 if another leads, 6 if the lead is lost.
What runs while leading (the tick, its wake-ups, webhooks, hooks, training
logs) is `service.leading`.

SIGTERM and SIGINT let the tick in hand finish, then the process exits 0.
SIGHUP re-reads controller.toml; a broken file (or a secret it names that
cannot be had) is logged and the running config kept. Under systemd
(Type=notify) it sends READY=1, STATUS= after each tick (or the standby's
line), WATCHDOG=1 while the loop is healthy and STOPPING=1.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from ftctl.controller.config import Config, ConfigError, load_config
from ftctl.controller.service.leading import Leading, runtime_secrets
from ftctl.controller.service.notify import Notifier, Watchdog
from ftctl.models import LockHeld, Store

# exit status (with --no-standby) when this daemon finds it no longer leads:
# systemd restarts it (Restart=on-failure), and the new process waits its turn
EXIT_LOCK_LOST = 6
# with --until-done: how long to wait for the hooks once every job is terminal
DRAIN_SECONDS = 30.0


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
        self.leading: Leading | None = None
        self.metrics = None
        self.dashboard = None
        self.secrets: tuple[str | None, dict[str, str]] = (None, {})
        self.ticks = 0
        # ticks that raised in a row: past [controller] failed_ticks_limit the
        # watchdog pings stop, so systemd restarts a daemon that only fails
        self.failed_ticks = 0
        self.last_error: str | None = None
        self.exit_code = 0
        self.done_at: float | None = None
        # monotonic times the watchdog judges the loop by
        self.tick_started: float | None = None
        self.tick_ended: float | None = None
        self.lost: str | None = None  # why the lead was lost (set by the tick, the renewer, the hooks)
        self.outage = False  # the database does not answer (one log line per outage)
        self.outage_logged = -1e9
        self._announced: str | None = None

    # -- signals ---------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame) -> None:
        self.log.info("stopping", signal=signal.Signals(signum).name)
        self.stop_event.set()
        if self.leading is not None:
            self.leading.wakes.signal.set()

    def _on_hup(self, _signum: int, _frame) -> None:
        self.reload_event.set()

    def lose(self, why: str) -> None:
        """Another process may lead now: act no more (the main loop steps down)."""
        if self.lost is None:
            self.lost = why

    # -- the tick's outcome (the tick itself runs in service.leading) ----------------------

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

    def tick_failed(self, exc: Exception) -> None:
        self.failed_ticks += 1
        self.last_error = f"{exc.__class__.__name__}: {exc}"
        limit = self.config.controller.failed_ticks_limit
        if not self.unreachable(exc):
            self.log.error("tick failed", error=self.last_error, failed_in_a_row=self.failed_ticks)
        if self.failed_ticks >= limit:
            self.notifier.status(f"unhealthy: {self.failed_ticks} ticks failed in a row "
                                 f"(last: {exc.__class__.__name__}); watchdog pings stopped")
        else:
            self.notifier.status(f"last tick failed: {exc.__class__.__name__}")
        self.tick_ended = time.monotonic()

    def tick_done(self, result: Any, only: frozenset[str] | None) -> None:
        self.failed_ticks = 0
        self.reachable()
        self.tick_ended = time.monotonic()
        seconds = self.tick_ended - self.tick_started
        self.ticks += 1
        self.notifier.status(result.summary())
        if self.metrics is not None and only is None:
            self.metrics.observe(result, seconds, self.store.totals_by_provider_state())
        self.log.debug("tick", seconds=round(seconds, 3), summary=result.summary(),
                       only=sorted(only) if only is not None else None)
        if self.until_done and result.all_terminal and self.done_at is None:
            self.log.info("all jobs are terminal", summary=result.summary())
            self.done_at = time.monotonic()

    def _drained(self) -> bool:
        """--until-done: every job is terminal and the hooks have what they
        asked for (or DRAIN_SECONDS passed: the next daemon delivers the rest)."""
        names = self.leading.dispatcher.names if self.leading is not None else set()
        owed = self.store.undelivered(names)["pending"] if names else 0
        if owed and time.monotonic() - self.done_at < DRAIN_SECONDS:
            return False
        if owed:
            self.log.warning("stopping with events not yet delivered to the hooks; the next daemon delivers them",
                             undelivered=owed)
        return True

    # -- a database that goes away --------------------------------------------------

    def unreachable(self, exc: BaseException) -> bool:
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

    def reachable(self) -> None:
        if self.outage:
            self.outage = False
            self.log.info("database reachable again")

    # -- leading and standing by ------------------------------------------------------

    def _lead(self) -> None:
        """The lead was just won: start acting."""
        leadership = self.store.leadership
        self.store.fenced = True
        self.lost = None
        self.done_at = None
        self.leading = Leading(self, *self.secrets)
        self.tick_ended = time.monotonic()  # the watchdog's clock starts now
        self.leading.start()
        self._announced = None
        self.log.info("leading", epoch=leadership.epoch, host=leadership.host, pid=leadership.pid)
        if self.metrics is not None:
            self.metrics.leader(leadership.host, True)

    def _step_down(self) -> None:
        """The lead is lost: stop acting at once, and stand by (or exit)."""
        leading, self.leading = self.leading, None
        leading.stop()
        self.failed_ticks = 0
        self.store.fenced = False
        self.store.leadership.release()
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
            if not self.unreachable(exc):
                self.log.warning("standby heartbeat failed", error=exc.__class__.__name__)
            return
        self.reachable()
        line = f"standby: {leader or 'no daemon'} leads"
        if line != self._announced:
            self.log.info("standing by", leader=leader, lease=leadership.lease)
            self.notifier.status(line)
            self._announced = line

    def _try_lead(self) -> bool:
        try:
            return self.store.leadership.acquire()
        except Exception as exc:  # noqa: BLE001 - the database is away: keep standing
            if not self.unreachable(exc):
                self.log.warning("cannot take the lead", error=f"{exc.__class__.__name__}")
            return False

    # -- the process ---------------------------------------------------------------------

    def run(self) -> int:
        """Runs until a signal (or, with until_done, until every job is
        terminal); returns the exit code. LockHeld with --no-standby when
        another daemon leads; ConfigError for a secret that cannot be had or
        a webhook address that cannot listen."""
        self.secrets = runtime_secrets(self.config)
        self.store = Store(self.config.database_url)
        leadership = self.store.leadership
        leadership.lease = self.config.controller.lease
        watchdog = Watchdog(self.notifier, self.healthy)
        previous: dict[Any, Any] = {}
        try:
            if not self._try_lead() and not self.standby:
                who = leadership.holder()
                raise LockHeld(f"another ftctl daemon is driving {leadership.where}" + (f" ({who})" if who else ""))
            if self.config.metrics.listen:
                from ftctl.controller.service.metrics import Metrics

                self.metrics = Metrics(self.config.metrics.listen)
            if self.config.dashboard.listen:  # served on a standby too: it reads the database alone
                from ftctl.controller.service.dashboard.server import start_dashboard

                self.dashboard = start_dashboard(self.config, logger=self.log)
            handlers = {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop, signal.SIGHUP: self._on_hup}
            previous = {s: signal.signal(s, h) for s, h in handlers.items()}
            self.tick_ended = time.monotonic()
            role = "leader" if leadership.leading else "standby"
            if leadership.leading:
                self._lead()
            self.log.info("daemon started", role=role, database=self.store.url.split("@")[-1],
                          config=str(self.config.path or ""), poll_interval=self.config.controller.poll_interval,
                          providers=sorted(self.config.providers), metrics=self.config.metrics.listen,
                          webhooks=self.config.webhooks.listen, dashboard=self.config.dashboard.listen,
                          hooks=len(self.config.hooks))
            self.notifier.ready(f"started as {role}; watching {len(self.config.providers)} provider(s)")
            watchdog.start()
            try:
                self._loop(leadership)
            finally:
                self.notifier.stopping()
                if self.leading is not None:
                    # the tick in hand finishes before we exit
                    self.leading.stop()
                    self.leading = None
                watchdog.stop()
            self.log.info("daemon stopped", ticks=self.ticks, exit_code=self.exit_code)
            return self.exit_code
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.leading is not None:
                self.leading.stop()
            if self.metrics is not None:
                self.metrics.close()
            if self.dashboard is not None:
                self.dashboard.close()
            # a clean exit hands the lead over at once, not when the lease runs out
            self.store.fenced = False
            self.store.leadership.release()
            self.store.leadership.leave()
            self.store.close()
            self.notifier.close()

    def _loop(self, leadership: Any) -> None:
        next_try = 0.0
        while not self.stop_event.wait(0.2):
            if self.reload_event.is_set():
                self._reload()
            if self.leading is not None:
                if self.lost is not None:
                    self._step_down()
                    if not self.standby:
                        self.exit_code = EXIT_LOCK_LOST
                        return
                    next_try = time.monotonic() + leadership.lease / 3
                elif self.done_at is not None and self._drained():
                    return
                elif time.monotonic() >= next_try:
                    next_try = time.monotonic() + max(0.5, leadership.lease / 3)
                    with contextlib.suppress(Exception):
                        leadership.heartbeat("leader")
                continue
            if time.monotonic() >= next_try:
                # often enough that a takeover comes within a lease plus a poll interval
                every = min(leadership.lease / 3, self.config.controller.poll_interval / 2)
                next_try = time.monotonic() + max(0.2, every)
                if self._try_lead():
                    self._lead()
                else:
                    self._stand_by()

    def _reload(self) -> None:
        self.reload_event.clear()
        path = self.config_file
        if path is None:
            self.log.warning("reload ignored: the config did not come from a file")
            return
        self.notifier.reloading()
        leading = self.leading
        try:
            new = load_config(path)
            secrets = runtime_secrets(new)
            webhooks = leading.webhooks_for(new, secrets[0]) if leading is not None else None
        except ConfigError as exc:
            self.log.error("reload refused; running on the previous config", error=str(exc))
            self.notifier.reloaded(f"reload refused ({exc}); running on the previous config")
            if leading is not None:
                leading.wake("sighup")
            return
        with self.tick_lock:  # never in the middle of a tick
            old, self.config, self.secrets = self.config, new, secrets
            if self.dashboard is not None:  # new agents and providers on the pages; the address stays
                self.dashboard.config = new
            self.store.leadership.lease = new.controller.lease
            changes = leading.reload(old, new, *secrets, webhooks) if leading is not None else ["standing by"]
        self.log.info("config reloaded", path=str(path), changed=changes or ["nothing"])
        self.notifier.reloaded(f"config reloaded ({', '.join(changes) or 'no change'})")
        if leading is not None:
            leading.wake("sighup")
