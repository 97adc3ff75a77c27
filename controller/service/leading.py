"""What a daemon runs while it leads, and only then.

The reconcile tick on an APScheduler interval (one at a time, missed runs
coalesced), woken early by events: a CLI write (a datagram beside the SQLite
file, or NOTIFY on PostgreSQL), SIGHUP, and a provider's verified webhook
(which reconciles just that provider). The poll stays the safety net: a
lost wake-up costs latency, never correctness. Beside the tick, on their own
threads: the lease renewer, the webhook server, the hooks' dispatcher
(events out, from the outbox) and the training-log reader (every job on its
interval, a followed one every few seconds: `logs:JOB` wake-ups); none of
them ever holds a tick. All of it starts when leadership is won and stops the moment
it is lost.
"""

from __future__ import annotations

import threading
import time
from datetime import timezone
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler

from ftctl.controller.config import Config, ConfigError
from ftctl.controller.engine.tick import Ticker
from ftctl.models import LockLost

if TYPE_CHECKING:  # pragma: no cover
    from ftctl.controller.service.daemon import Daemon

# a follower of a job's log (`ftctl logs JOB --follow`) says so again every
# few seconds; it counts as gone after this long without a word
FOLLOW_HOLD = 15.0


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


class Leading:
    def __init__(self, daemon: "Daemon", webhook_secret: str | None, hook_secrets: dict[str, str]):
        from ftctl.controller.service.hooks import Dispatcher

        self.daemon = daemon
        self.store = daemon.store
        self.log = daemon.log
        self.stopped = threading.Event()
        self.wakes = Wakes()
        self.reconciler = Ticker(daemon.config, self.store, should_stop=self.should_stop,
                                 guard=self.store.assert_lock_held)
        self.webhooks = self.webhooks_for(daemon.config, webhook_secret)
        self.dispatcher = Dispatcher(self.store, daemon.config, hook_secrets, guard=self.store.assert_lock_held,
                                     on_lock_lost=lambda exc: daemon.lose(str(exc)))
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.scheduler.add_job(self.tick, "interval", seconds=daemon.config.controller.poll_interval,
                               id="reconcile", coalesce=True, max_instances=1, misfire_grace_time=None)
        self.trainlogs = None
        self.retention = None
        self.gc = None
        self.followed: dict[int, float] = {}  # job id -> when its follower counts as gone (monotonic)
        self.listener = None
        self.threads: list[threading.Thread] = []

    def should_stop(self) -> bool:
        return self.stopped.is_set() or self.daemon.stop_event.is_set()

    # -- starting and stopping -------------------------------------------------------

    def start(self) -> None:
        self._start_training_logs()
        self._start_retention()
        self._start_gc()
        self._listen_for_wakes()
        self.wakes.add(None)  # the first tick, at once
        self.scheduler.start()
        for target, name in ((self._waker, "waker"), (self._renew, "lease-renewer")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        self.dispatcher.start()

    def stop(self) -> None:
        """Act no more: nothing new comes in, the tick in hand finishes."""
        self.stopped.set()
        self.wakes.signal.set()
        self._close("webhooks", "listener")
        self.scheduler.shutdown(wait=True)
        for thread in self.threads:
            thread.join(timeout=60)
        self.dispatcher.stop()
        self._close("reconciler", "trainlogs", "gc")

    def _close(self, *parts: str) -> None:
        for name in parts:
            part = getattr(self, name)
            if part is not None:
                setattr(self, name, None)
                part.close()

    # -- the tick and its wake-ups ------------------------------------------------------

    def wake(self, reason: str, provider: str | None = None) -> None:
        """Reconcile now (`provider`: just that one), not at the next poll;
        `logs:JOB`: someone follows that job's training log (no tick)."""
        self.log.debug("wake-up", reason=reason, provider=provider)
        what, _, job = reason.partition(":")
        if what == "logs" and job.isdigit():
            self.followed[int(job)] = time.monotonic() + FOLLOW_HOLD
            return
        self.wakes.add(provider)

    def _waker(self) -> None:
        """Runs a tick for every batch of wake-ups (they coalesce)."""
        while not self.should_stop():
            if self.wakes.signal.wait(1.0):
                self.wakes.signal.clear()
                self.tick(woken=True)

    def tick(self, woken: bool = False) -> None:
        daemon = self.daemon
        if self.should_stop():
            return
        with daemon.tick_lock:
            pending, only = self.wakes.take()
            if woken and not pending:
                return  # a tick that just ran covered it
            only = only if woken else None  # the poll looks at everything
            daemon.tick_started = time.monotonic()
            try:
                self.store.assert_lock_held()
                result = self.reconciler.tick(only=only)
            except LockLost as exc:
                daemon.lose(str(exc))
                daemon.tick_ended = time.monotonic()
                return
            except Exception as exc:  # a bad tick must never kill the daemon
                daemon.tick_failed(exc)
                return
            daemon.tick_done(result, only)
            if self.dispatcher is not None:
                self.dispatcher.kick()  # the tick may have left events in the outbox

    def _renew(self) -> None:
        """Renew the lease every third of it; a database that does not answer
        is logged once per outage, and the lease runs out locally."""
        daemon, leadership = self.daemon, self.store.leadership
        while not self.should_stop() and not self.stopped.wait(max(0.1, leadership.lease / 3)):
            try:
                renewed = leadership.renew()
            except Exception as exc:  # noqa: BLE001 - the database is away: the lease says what follows
                if not daemon.unreachable(exc):
                    self.log.warning("lease renewal failed; acting until the lease runs out",
                                     error=exc.__class__.__name__)
                try:
                    leadership.check()
                except LockLost as lost:
                    daemon.lose(str(lost))
                continue
            daemon.reachable()
            if not renewed:
                daemon.lose(leadership.why_lost or "another daemon took over the lease")
            elif daemon.metrics is not None:
                daemon.metrics.renewed()

    # -- config -------------------------------------------------------------------------

    def reload(self, old: Config, new: Config, webhook_secret: str | None, hook_secrets: dict[str, str],
               webhooks: Any) -> list[str]:
        changes = self.reconciler.reload(new)
        for section in ("webhooks", "hooks", "events", "logs", "history", "retention"):
            if getattr(old, section) != getattr(new, section):
                changes.append(section)
        if webhooks is not self.webhooks:
            if self.webhooks is not None:
                self.webhooks.close()
            self.webhooks = webhooks
        if self.webhooks is not None:
            self.webhooks.update(new, webhook_secret)
        self.dispatcher.update(new, hook_secrets)
        self.trainlogs.reload(new)
        self.retention.reload(new)
        self.gc.reload(new)
        if gc_every(new) != gc_every(old):
            self.scheduler.reschedule_job("gc", trigger="interval", seconds=gc_every(new))
        if new.controller.poll_interval != old.controller.poll_interval:
            self.scheduler.reschedule_job("reconcile", trigger="interval", seconds=new.controller.poll_interval)
        if new.logs.interval != old.logs.interval:
            self.scheduler.reschedule_job("training-logs", trigger="interval", seconds=new.logs.interval)
        return changes

    def webhooks_for(self, config: Config, secret: str | None) -> Any:
        """The webhook server a config asks for: the running one when its
        address stays, a new one (bound before anything else changes) when
        it moves; None when webhooks are off. ConfigError when it cannot listen."""
        from ftctl.controller.service.webhooks import WebhookServer, WebhookUnavailable

        listen = config.webhooks.listen
        if not listen:
            return None
        current = getattr(self, "webhooks", None)
        if current is not None and current.listen == listen:
            return current
        try:
            return WebhookServer(config, secret, self.store, lambda name, why: self.wake(why, name))
        except WebhookUnavailable as exc:
            raise ConfigError(str(exc)) from None

    # -- beside the tick -----------------------------------------------------------------

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
        from ftctl.controller.engine.trainlogs import FOLLOWED_EVERY, LogFetcher

        self.trainlogs = LogFetcher(self.daemon.config, self.store, should_stop=self.should_stop)

        def run() -> None:
            if self.should_stop():
                return
            try:
                self.trainlogs.run_once()
            except Exception as exc:  # noqa: BLE001 - the log is a nicety: never the loop's problem
                self.log.warning("training log pass failed", error=f"{exc.__class__.__name__}: {exc}")

        self.scheduler.add_job(run, "interval", seconds=self.daemon.config.logs.interval, id="training-logs",
                               coalesce=True, max_instances=1, misfire_grace_time=None)

        def followed() -> None:
            now = time.monotonic()
            for job_id, until in list(self.followed.items()):
                if until < now:
                    self.followed.pop(job_id, None)
            if not self.followed or self.should_stop():
                return
            try:
                self.trainlogs.run_followed(list(self.followed))
            except Exception as exc:  # noqa: BLE001 - the log is a nicety: never the loop's problem
                self.log.warning("training log pass failed", error=f"{exc.__class__.__name__}: {exc}")

        self.scheduler.add_job(followed, "interval", seconds=FOLLOWED_EVERY, id="followed-logs", coalesce=True,
                               max_instances=1, misfire_grace_time=None)

    def _start_retention(self) -> None:
        from ftctl.controller.service.retention import EVERY_S, Retention

        self.retention = Retention(self.daemon.config, self.store)

        def run() -> None:
            if self.should_stop():
                return
            try:
                self.store.assert_lock_held()
                self.retention.run_once()
            except Exception as exc:  # noqa: BLE001 - forgetting can wait for the next pass
                self.log.warning("history retention pass failed", error=f"{exc.__class__.__name__}: {exc}")

        self.scheduler.add_job(run, "interval", seconds=EVERY_S, id="history", coalesce=True, max_instances=1,
                               misfire_grace_time=None)

    def _start_gc(self) -> None:
        """`[retention]`: deletions at the providers, on their own interval,
        never while a tick runs (a tick may be about to use what a pass deletes)."""
        from ftctl.controller.service.gc import Collector

        self.gc = Collector(self.daemon.config, self.store, guard=self.store.assert_lock_held)

        def run() -> None:
            if self.should_stop() or self.daemon.config.retention is None:
                return
            try:
                with self.daemon.tick_lock:
                    self.store.assert_lock_held()
                    self.gc.run_once()
            except LockLost as exc:
                self.daemon.lose(str(exc))
            except Exception as exc:  # noqa: BLE001 - a deletion can wait for the next pass
                self.log.warning("retention pass failed", error=f"{exc.__class__.__name__}: {exc}")

        self.scheduler.add_job(run, "interval", seconds=gc_every(self.daemon.config), id="gc", coalesce=True,
                               max_instances=1, misfire_grace_time=None, next_run_time=_soon())


def gc_every(config: Config) -> float:
    return config.retention.interval if config.retention is not None else 600.0


def _soon() -> Any:
    """A first pass right after leadership is won (an intent a killed leader left is finished first)."""
    from datetime import datetime

    return datetime.now(timezone.utc)
