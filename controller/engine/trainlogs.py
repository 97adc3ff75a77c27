"""Training logs: the providers' job events and metrics (loss by step),
read for running jobs at a bounded rate and stored, so `ftctl logs` and
`ftctl show` answer from the database.

Beside the tick, not in it: the daemon runs a pass every `[logs] interval`
on its own schedule, and a pass reads at most `[logs] batch` jobs, the
least recently read first, each at most once an interval. A job that
finished gets one more read (its last points), then none. A provider that
is paused, or whose descriptor says it reports no training log, is not
asked. Reading is never a mutation: it needs no lock proof, and a failure
only leaves the log as it was.

A job someone follows (`ftctl logs JOB --follow` wakes the daemon with
`logs:JOB` while it follows) is read every FOLLOWED_EVERY seconds instead,
by `run_followed`, until its last read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog

from ftctl.controller.config import Config
from ftctl.models import Store, utcnow
from ftctl.providers.base import Provider, ProviderError
from ftctl.providers.keys import clip
from ftctl.providers.registry import KINDS

# a job that finished this long ago without its last read gets none
FINAL_WINDOW = timedelta(days=1)
TERMINAL = ("succeeded", "failed", "cancelled")
# how often a followed job's log is read (or `[logs] interval`, if shorter)
FOLLOWED_EVERY = 2.0


class LogFetcher:
    def __init__(self, config: Config, store: Store, *, clock: Callable[[], datetime] = utcnow,
                 providers: dict[str, Provider] | None = None, logger: Any = None,
                 should_stop: Callable[[], bool] = lambda: False):
        self.config = config
        self.store = store
        self.clock = clock
        # checked between reads: a stopping daemon waits for one read at most
        self.should_stop = should_stop
        # its own clients: a pass may run while a tick uses the tick's
        self.providers: dict[str, Provider] = dict(providers or {})
        self.log = logger or structlog.get_logger("ftctl")
        # one pass at a time (the interval's and a follower's): a job is not
        # read twice at once, and the clients are not shared between threads
        self._lock = threading.Lock()

    def _provider(self, name: str) -> Provider:
        if name not in self.providers:
            from ftctl.providers import build_provider

            def epoch() -> float:
                return self.clock().replace(tzinfo=timezone.utc).timestamp()

            self.providers[name] = build_provider(name, self.config.providers[name], self.config.provider_env(epoch))
        return self.providers[name]

    def reload(self, config: Config) -> None:
        for name in list(self.providers):
            if config.providers.get(name) != self.config.providers.get(name):
                self.providers.pop(name).close()
        self.config = config

    def close(self) -> None:
        for p in self.providers.values():
            p.close()
        self.providers.clear()

    def run_once(self) -> int:
        """One pass; returns how many new points were stored."""
        conf = self.config.logs
        if not conf.enabled:
            return 0
        with self._lock:
            now = self.clock()
            targets = self.store.log_targets(now, fetched_before=now - timedelta(seconds=conf.interval),
                                             finished_since=now - FINAL_WINDOW, limit=conf.batch)
            return self._read_all([job for job, _ in targets], now)

    def run_followed(self, job_ids: Iterable[int]) -> int:
        """A pass over the jobs someone follows: each read again once
        FOLLOWED_EVERY has passed since its last read, while it is at its
        provider, and once more after it finished; returns the new points."""
        conf = self.config.logs
        if not conf.enabled:
            return 0
        with self._lock:
            now = self.clock()
            due = now - timedelta(seconds=min(conf.interval, FOLLOWED_EVERY) * 0.9)
            jobs = []
            for job in self.store.jobs_by_id(sorted(set(job_ids))).values():
                if not job.provider_job_id or job.state not in ("queued", "running", *TERMINAL):
                    continue
                cursor = self.store.log_cursor(job.provider_job_id)
                if cursor is not None and (cursor.fetched_at > due or (job.state in TERMINAL and cursor.final)):
                    continue
                jobs.append(job)
            return self._read_all(jobs[:conf.batch], now)

    def _read_all(self, jobs: list[Any], now: datetime) -> int:
        paused = {n for n, st in self.store.provider_states().items()
                  if st.paused_why and (st.paused_until is None or now < st.paused_until)}
        stored = 0
        for job in jobs:
            if self.should_stop():
                break
            stored += self._read(job, now, paused)
        return stored

    def _read(self, job: Any, now: datetime, paused: set[str]) -> int:
        final = job.state in TERMINAL
        section = self.config.providers.get(job.provider)
        why = None
        if section is None:
            why = "provider not configured"
        elif not KINDS[section.kind].training_log:
            why = f"{section.kind} reports no training log"
        elif job.provider in paused:
            why = "provider paused"
        if why is not None:
            # remembered as read: it waits its interval like the others
            self.store.add_log_points(job.id, job.provider_job_id, [], now, final=final or section is None,
                                      error=why)
            return 0
        try:
            entries = self._provider(job.provider).training_log(job.provider_job_id)
        except Exception as exc:  # noqa: BLE001 - a read that failed leaves the log as it was
            error = exc.message if isinstance(exc, ProviderError) else f"{exc.__class__.__name__}: {exc}"
            self.log.info("training log not read", job_id=job.id, agent=job.agent, provider=job.provider,
                          state=job.state, error=clip(error, 200))
            self.store.add_log_points(job.id, job.provider_job_id, [], now, final=False, error=clip(error, 200))
            return 0
        new = self.store.add_log_points(job.id, job.provider_job_id, entries, now, final=final)
        if new:
            self.log.debug("training log", job_id=job.id, agent=job.agent, provider=job.provider,
                           state=job.state, new_points=new)
        return new
