"""The daemon: the reconcile step on an APScheduler interval, woken early by
events.

One tick at a time, missed runs coalesced. The poll stays the safety net
(the loop is level-triggered); wake-ups only make it early: a CLI write (a
datagram beside the SQLite file, or NOTIFY on PostgreSQL), SIGHUP, and a
provider's verified webhook (which reconciles just that provider). A lost
wake-up costs latency, never correctness. Beside the loop, on their own
threads: the webhook server, the hooks' dispatcher (events out, from the
outbox) and the training-log reader; none of them ever holds a tick.

SIGTERM and SIGINT let the tick in hand finish, then the process exits 0.
SIGHUP re-reads controller.toml between ticks; a broken file (or a secret
it names that cannot be had) is logged and the running config kept. Under
systemd (Type=notify) it sends READY=1, STATUS= after each tick, WATCHDOG=1
while the loop is healthy and STOPPING=1.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import timezone
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
# with --until-done: how long to wait for the hooks once every job is terminal
DRAIN_SECONDS = 30.0


class Wakes:
    """Wake-ups waiting for a tick: all providers, or some (webhooks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._all = False
        self._providers: set[str] = set()
        self.signal = threading.Event()

    def add(self, provider: str | None) -> None:
        with self._lock:
            if provider is None:
                self._all = True
            else:
                self._providers.add(provider)
        self.signal.set()

    def take(self) -> tuple[bool, frozenset[str] | None]:
        """(anything pending, the providers to reconcile: None for all)."""
        with self._lock:
            pending = self._all or bool(self._providers)
            only = None if self._all else frozenset(self._providers)
            self._all, self._providers = False, set()
        return pending, only


def runtime_secrets(config: Config) -> tuple[str | None, dict[str, str]]:
    """The webhooks' secret and the hooks' signing secrets; ConfigError (one
    line naming the key) when one cannot be had: a start or a reload that
    needs it is refused."""
    from ftctl.controller.service.hooks import hook_secrets
    from ftctl.controller.service.webhooks import webhook_secret

    return webhook_secret(config), hook_secrets(config)


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
        self.wakes = Wakes()
        self.store: Store | None = None
        self.reconciler: Ticker | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.metrics = None
        self.listener = None
        self.webhooks = None
        self.dispatcher = None
        self.trainlogs = None
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

    # -- signals and wake-ups ---------------------------------------------------------

    def _on_stop(self, signum: int, _frame) -> None:
        self.log.info("stopping", signal=signal.Signals(signum).name)
        self.stop_event.set()
        self.wakes.signal.set()

    def _on_hup(self, _signum: int, _frame) -> None:
        self.reload_event.set()

    def wake(self, reason: str, provider: str | None = None) -> None:
        """Reconcile now (`provider`: just that one), not at the next poll."""
        self.log.debug("wake-up", reason=reason, provider=provider)
        self.wakes.add(provider)

    def _lock_lost(self, exc: Exception) -> None:
        # another process may drive the database now: act no more
        self.log.error("daemon lock lost; stopping without acting further", error=str(exc))
        self.notifier.status(f"stopping: {exc}")
        self.exit_code = EXIT_LOCK_LOST
        self.stop_event.set()
        self.wakes.signal.set()

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

    def _waker(self) -> None:
        """Runs a tick for every batch of wake-ups (they coalesce)."""
        while not self.stop_event.is_set():
            if self.wakes.signal.wait(1.0):
                self.wakes.signal.clear()
                self._tick(woken=True)

    def _tick(self, woken: bool = False) -> None:
        if self.stop_event.is_set():
            return
        with self.tick_lock:
            pending, only = self.wakes.take()
            if woken and not pending:
                return  # a tick that just ran covered it
            only = only if woken else None  # the poll looks at everything
            self.tick_started = time.monotonic()
            try:
                self.store.assert_lock_held()
                result = self.reconciler.tick(only=only)
            except LockLost as exc:
                self._lock_lost(exc)
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
            if self.metrics is not None and only is None:
                self.metrics.observe(result, seconds, self.store.totals_by_provider_state())
            self.log.debug("tick", seconds=round(seconds, 3), summary=result.summary(),
                           only=sorted(only) if only is not None else None)
            if self.dispatcher is not None:
                self.dispatcher.kick()  # the tick may have left events in the outbox
            if self.until_done and result.all_terminal and self.done_at is None:
                self.log.info("all jobs are terminal", summary=result.summary())
                self.done_at = time.monotonic()

    def _drained(self) -> bool:
        """--until-done: every job is terminal and the hooks have what they
        asked for (or DRAIN_SECONDS passed: the next daemon delivers the rest)."""
        owed = self.store.undelivered(self.dispatcher.names)["pending"] if self.dispatcher.names else 0
        if owed and time.monotonic() - self.done_at < DRAIN_SECONDS:
            return False
        if owed:
            self.log.warning("stopping with events not yet delivered to the hooks; the next daemon delivers them",
                             undelivered=owed)
        return True

    def _reload(self) -> None:
        self.reload_event.clear()
        path = self.config_file
        if path is None:
            self.log.warning("reload ignored: the config did not come from a file")
            return
        self.notifier.reloading()
        try:
            new = load_config(path)
            webhook_secret, hook_secrets = runtime_secrets(new)
            webhooks = self._webhooks_for(new, webhook_secret)
        except ConfigError as exc:
            self.log.error("reload refused; running on the previous config", error=str(exc))
            self.notifier.reloaded(f"reload refused ({exc}); running on the previous config")
            self.wake("sighup")
            return
        with self.tick_lock:  # never in the middle of a tick
            changes = self.reconciler.reload(new)
            for section in ("webhooks", "hooks", "logs"):
                if getattr(self.config, section) != getattr(new, section):
                    changes.append(section)
            old = self.config
            self.config = new
            if webhooks is not self.webhooks:
                if self.webhooks is not None:
                    self.webhooks.close()
                self.webhooks = webhooks
            if self.webhooks is not None:
                self.webhooks.update(new, webhook_secret)
            self.dispatcher.update(new, hook_secrets)
            self.trainlogs.reload(new)
            if new.controller.poll_interval != old.controller.poll_interval:
                self.scheduler.reschedule_job("reconcile", trigger="interval", seconds=new.controller.poll_interval)
            if new.logs.interval != old.logs.interval:
                self.scheduler.reschedule_job("training-logs", trigger="interval", seconds=new.logs.interval)
        self.log.info("config reloaded", path=str(path), changed=changes or ["nothing"])
        self.notifier.reloaded(f"config reloaded ({', '.join(changes) or 'no change'})")
        self.wake("sighup")

    def _webhooks_for(self, config: Config, secret: str | None):
        """The webhook server a config asks for: the running one when its
        address stays, a new one (bound before anything else changes) when
        it moves; None when webhooks are off. ConfigError when it cannot listen."""
        from ftctl.controller.service.webhooks import WebhookServer, WebhookUnavailable

        listen = config.webhooks.listen
        if not listen:
            return None
        if self.webhooks is not None and self.webhooks.listen == listen:
            return self.webhooks
        try:
            return WebhookServer(config, secret, self.store, lambda name, why: self.wake(why, name))
        except WebhookUnavailable as exc:
            raise ConfigError(str(exc)) from None

    def _listen_for_wakes(self) -> None:
        try:
            self.listener = self.store.wake_listener(lambda reason: self.wake(reason))
        except Exception as exc:  # noqa: BLE001 - a lost wake-up costs latency only: poll on
            self.log.warning("cannot listen for wake-ups; polling only",
                             error=getattr(exc, "strerror", None) or f"{exc.__class__.__name__}: {exc}")
            return
        if self.listener is not None:
            self.log.info("listening for wake-ups", on=self.listener.address)

    def _start_training_logs(self) -> None:
        from ftctl.controller.engine.trainlogs import LogFetcher

        self.trainlogs = LogFetcher(self.config, self.store, should_stop=self.stop_event.is_set)

        def run() -> None:
            if self.stop_event.is_set():
                return
            try:
                self.trainlogs.run_once()
            except Exception as exc:  # noqa: BLE001 - the log is a nicety: never the loop's problem
                self.log.warning("training log pass failed", error=f"{exc.__class__.__name__}: {exc}")

        self.scheduler.add_job(run, "interval", seconds=self.config.logs.interval, id="training-logs",
                               coalesce=True, max_instances=1, misfire_grace_time=None)

    def run(self) -> int:
        """Runs until a signal (or, with until_done, until every job is
        terminal); returns the exit code. ConfigError for a secret that
        cannot be had or a webhook address that cannot listen."""
        from ftctl.controller.service.hooks import Dispatcher

        webhook_secret, hook_secrets = runtime_secrets(self.config)
        self.store = Store(self.config.database_url)
        watchdog = Watchdog(self.notifier, self.healthy)
        waker = threading.Thread(target=self._waker, name="waker", daemon=True)
        try:
            self.store.acquire_daemon_lock()
            self.reconciler = Ticker(self.config, self.store, should_stop=self.stop_event.is_set,
                                     guard=self.store.assert_lock_held)
            if self.config.metrics.listen:
                from ftctl.controller.service.metrics import Metrics

                self.metrics = Metrics(self.config.metrics.listen)
            self.webhooks = self._webhooks_for(self.config, webhook_secret)
            self.dispatcher = Dispatcher(self.store, self.config, hook_secrets, guard=self.store.assert_lock_held,
                                         on_lock_lost=self._lock_lost)
            handlers = {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop, signal.SIGHUP: self._on_hup}
            previous = {s: signal.signal(s, h) for s, h in handlers.items()}
            self.scheduler = BackgroundScheduler(timezone=timezone.utc)
            self.scheduler.add_job(
                self._tick, "interval", seconds=self.config.controller.poll_interval, id="reconcile",
                coalesce=True, max_instances=1, misfire_grace_time=None,
            )
            self._start_training_logs()
            self._listen_for_wakes()
            self.wakes.add(None)  # the first tick, at once
            self.tick_ended = time.monotonic()  # the watchdog's clock starts now
            self.scheduler.start()
            waker.start()
            self.dispatcher.start()
            self.log.info("daemon started", database=self.store.url.split("@")[-1],
                          config=str(self.config.path or ""), poll_interval=self.config.controller.poll_interval,
                          providers=sorted(self.config.providers), metrics=self.config.metrics.listen,
                          webhooks=self.config.webhooks.listen, hooks=len(self.config.hooks))
            self.notifier.ready(f"started; watching {len(self.config.providers)} provider(s)")
            watchdog.start()
            try:
                while not self.stop_event.wait(0.2):
                    if self.reload_event.is_set():
                        self._reload()
                    if self.done_at is not None and self._drained():
                        self.stop_event.set()
            finally:
                self.notifier.stopping()
                self.wakes.signal.set()
                self._close("webhooks", "listener")  # nothing new comes in
                # wait=True: the tick in hand finishes before we exit
                self.scheduler.shutdown(wait=True)
                waker.join(timeout=60)
                self.dispatcher.stop()
                watchdog.stop()
                for s, handler in previous.items():
                    signal.signal(s, handler)
            self.log.info("daemon stopped", ticks=self.ticks, exit_code=self.exit_code)
            return self.exit_code
        finally:
            self._close("webhooks", "listener", "metrics", "reconciler", "trainlogs")
            self.store.close()
            self.notifier.close()

    def _close(self, *parts: str) -> None:
        for name in parts:
            part = getattr(self, name)
            if part is not None:
                setattr(self, name, None)
                part.close()
