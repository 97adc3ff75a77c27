"""The Python API: what the `ftctl` command line does, as calls.

    import ftctl

    with ftctl.open("controller.toml") as ft:
        for r in ft.submit(["qa"]):
            print(r.job_id, r.created, r.note)
        done = ft.wait([1], timeout=3600)
        print(ft.models())

Every method answers from the database alone except `cancel` (which also
asks the provider) and `submit --quote`. Errors are FtctlError subclasses,
each with the exit code the CLI uses for it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.delivery import Delivery
from ftctl.rehome import Rehoming

if TYPE_CHECKING:  # pragma: no cover
    from ftctl.controller.config import Config
    from ftctl.controller.preflight.submit import Result
    from ftctl.models import Job, Store
    from ftctl.models.reads import Reads

MAX_JOB_ID = 2**63 - 1
UNFINISHED = ("prepared", "queued", "running")


class FtctlError(Exception):
    """A one-line, user-facing error; `exit_code` is what the CLI exits with."""

    exit_code = 1


class BadInput(FtctlError):
    """Config, arguments, an unknown job or agent, a missing file."""

    exit_code = 2


class NotFound(BadInput):
    pass


class Refused(FtctlError):
    """Not allowed now: a transition from this state, an identical live job."""

    exit_code = 3


class DatabaseUnavailable(FtctlError):
    exit_code = 4


class TimedOut(FtctlError):
    exit_code = 5


@dataclass
class Listing:
    """Jobs by id, streamed (`rows`, read once), how many finished ones were
    left out, and what their reasons are rendered with."""

    rows: Iterator[Any]
    hidden: int
    live: Any
    now: datetime


@dataclass(frozen=True)
class Cancelled:
    job: dict[str, Any]
    # what the provider said, when it was asked at once
    provider_status: str | None = None
    provider_error: str | None = None


def open(config: str | Path | None = None) -> "Ftctl":  # noqa: A001 - ftctl.open reads as it should
    """The controller.toml at `config`, else $FTCTL_CONFIG, ./controller.toml,
    /etc/ftctl/controller.toml."""
    from ftctl.controller.config import ConfigError, load_config

    try:
        return Ftctl(load_config(config))
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


class Ftctl(Delivery, Rehoming):
    def __init__(self, config: "Config"):
        self.config = config
        self._store: "Store | None" = None
        self._reads: "Reads | None" = None

    # -- the database ----------------------------------------------------------------

    def store(self, *, create: bool = False) -> "Store | None":
        """The store; None for a read when no SQLite database exists yet."""
        if self._store is not None:
            return self._store
        if not create and self.config.sqlite_file is not None and not self.config.sqlite_file.exists():
            return None
        from ftctl.models import Store, StoreError

        try:
            self._store = Store(self.config.database_url, create=create)
        except StoreError as exc:
            raise DatabaseUnavailable(str(exc)) from None  # one cause, one code, whatever the command
        return self._store

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write whose database cannot take it (a full disk, a read-only or
        corrupt file) is DatabaseUnavailable, in one line naming the database."""
        from ftctl.models.schema import database_problem, redact_url

        try:
            yield
        except Exception as exc:
            problem = database_problem(exc, str(self.config.sqlite_file or redact_url(self.config.database_url)))
            if problem is None:
                raise
            raise DatabaseUnavailable(problem) from None

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
            self._reads = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "Ftctl":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _row(self, job_id: int) -> "Job":
        """The job's whole ORM row, for a write (NotFound if there is none)."""
        return self._found(job_id, self.store, lambda store: store.get_job(job_id))

    @staticmethod
    def _found(job_id: int, opener: Any, get: Any) -> Any:
        """The job `get` reads from what `opener` opens; the id is checked first
        (a bad id is a bad id, whatever the database)."""
        if not isinstance(job_id, int) or not 1 <= job_id <= MAX_JOB_ID:
            raise NotFound(f"no such job {job_id!r} (job ids run from 1 to {MAX_JOB_ID})")
        source = opener()
        row = get(source) if source is not None else None
        if row is None:
            raise NotFound(f"no job {job_id} (see `ftctl status`)")
        return row

    # -- writes ------------------------------------------------------------------------

    def submit(self, agents: Sequence[str] = (), *, all_agents: bool = False, adhoc: dict[str, Any] | None = None,
               force: bool = False, allow_pii: bool = False, quote: bool = False,
               phone_region: str | None = None) -> list["Result"]:
        """Check, estimate and store `prepared` jobs (nothing is stored unless
        every one passed). `adhoc`: agent, file, model, provider, hyperparameters.
        `phone_region`: where numbers without a country code are from."""
        from ftctl.controller.preflight.submit import SubmitError, plan_submissions, store_submissions

        adhoc = dict(adhoc or {})
        try:
            plans = plan_submissions(self.config, list(agents), all_agents=all_agents, adhoc=bool(adhoc),
                                     agent=adhoc.get("agent"), file=adhoc.get("file"), model=adhoc.get("model"),
                                     provider=adhoc.get("provider"),
                                     hyperparameters=adhoc.get("hyperparameters") or {}, allow_pii=allow_pii,
                                     quote=quote, phone_region=phone_region, force=force)
        except SubmitError as exc:
            raise BadInput(str(exc)) from None
        with self._writing():
            results = store_submissions(self.store(create=True), plans, force=force)
        if any(r.created for r in results):
            self.wake("submit")
        return results

    def wake(self, reason: str = "cli") -> bool:
        """Tell the daemon to reconcile now rather than at its next poll
        (every write here does it; False when no daemon listens)."""
        store = self.store()
        return store.wake(reason) if store is not None else False

    def _move(self, job_id: int, trigger: str) -> "Job":
        from ftctl.controller.ledger.creation import Twin
        from ftctl.controller.engine.jobs import JobNotFound, StaleState, user_transition
        from ftctl.controller.ledger.states import InvalidTransition

        current = self._row(job_id)
        if trigger == "retry" and current.cancel_pending:
            raise Refused(f"job {job_id}: its cancellation at the provider is still pending; "
                          f"retry after the next tick")
        try:
            with self._writing():
                _, row = user_transition(self.store(), job_id, trigger)
        except JobNotFound:
            raise NotFound(f"no job {job_id} (see `ftctl status`)") from None
        except Twin as twin:
            raise Refused(f"job {job_id}: {twin}; retrying it would train the same job twice") from None
        except InvalidTransition as exc:
            raise Refused(f"job {job_id}: {exc}") from None
        except StaleState:
            raise Refused(f"job {job_id} changed while this command ran; look at `ftctl show {job_id}` "
                          f"and try again") from None
        self.wake(trigger)
        return row

    def cancel(self, job_id: int) -> Cancelled:
        """Cancel a job, and at its provider at once when it is there already
        (the daemon does it otherwise, and retries until the provider confirms)."""
        from ftctl.controller.records import job_dict

        row = self._move(job_id, "cancel")
        status = error = None
        if row.cancel_pending and row.provider_job_id and row.provider in self.config.providers:
            from ftctl.controller.engine.jobs import cancelled_at_provider
            from ftctl.providers import build_provider
            from ftctl.providers.base import ProviderError

            try:
                provider = build_provider(row.provider, self.config.providers[row.provider],
                                          self.config.provider_env())
                try:
                    pj = provider.cancel_job(row.provider_job_id)
                finally:
                    provider.close()
                cancelled_at_provider(self.store(), row.id, pj.id, pj.raw_status)
                status = pj.raw_status
            except ProviderError as exc:
                error = f"{exc.kind} error: {exc.message}"
        return Cancelled(job_dict(self._row(job_id)), status, error)

    def retry(self, job_id: int) -> dict[str, Any]:
        """A failed or cancelled job back to `prepared`, with fresh attempts."""
        from ftctl.controller.records import job_dict

        return job_dict(self._move(job_id, "retry"))

    # -- reads -------------------------------------------------------------------------
    # Reads go through models.reads: a few indexed queries, rows streamed, no ORM.

    def reads(self) -> "Reads | None":
        """The database for reading; None when no SQLite database exists yet."""
        if self._reads is None:
            from ftctl.models import StoreError
            from ftctl.models.reads import open_reads

            try:
                self._reads = open_reads(self.config.database_url)
            except StoreError as exc:
                raise DatabaseUnavailable(str(exc)) from None
        return self._reads

    def listing(self, *, states: Sequence[str] | None = None, agents: Sequence[str] | None = None,
                providers: Sequence[str] | None = None, finished: int | None = None) -> Listing:
        """Jobs by id, streamed: every unfinished one `states`, `agents` and
        `providers` select (None: any), and of the finished ones the last
        `finished` to finish (None: all of them)."""
        import heapq

        from ftctl.models import utcnow
        from ftctl.models.reads import Filter
        from ftctl.models.schema import FINISHED_STATES

        now, reads = utcnow(), self.reads()
        if reads is None:
            return Listing(iter(()), 0, self.live(), now)
        where = Filter(states, agents, providers)
        if finished is None:
            return Listing(reads.jobs(where), 0, self.live(), now)
        done_states = [s for s in FINISHED_STATES if states is None or s in states]
        active = reads.jobs(where, states=[s for s in UNFINISHED if states is None or s in states])
        # a succeeded job whose model is still at the gate is live, however long ago it finished
        gated = list(reads.open_promotions(where)) if finished > 0 and "succeeded" in done_states else []
        open_ids = {j.id for j in gated}
        done = [j for j in (reads.last_finished(where, finished) if finished > 0 and done_states else [])
                if j.id not in open_ids]
        hidden = (reads.count(where, states=done_states) - len(done) - len(gated)) if done_states else 0
        return Listing(heapq.merge(active, gated, done, key=lambda j: j.id), hidden, self.live(), now)

    def jobs(self, *, agent: str | None = None, active: bool = False) -> list[Any]:
        """Every job (`active`: the unfinished ones), as rows read by attribute."""
        return list(self.listing(agents=[agent] if agent else None, finished=0 if active else None).rows)

    def live(self) -> Any:
        """The facts reasons are rendered with now (slots busy, money left),
        each read the first time a reason shown needs it."""
        from ftctl.controller.records import live_facts

        return live_facts(self.reads(), self.config)

    def status(self, *, agent: str | None = None, active: bool = False, states: Sequence[str] | None = None,
               providers: Sequence[str] | None = None, finished: int | None = None) -> list[dict[str, Any]]:
        """The jobs as dicts: every one by default; `active` (or `finished=0`)
        the unfinished ones only, `finished=N` those plus the last N to finish."""
        from ftctl.controller.records import job_dict

        found = self.listing(states=states, agents=[agent] if agent else None, providers=providers,
                             finished=0 if active else finished)
        return [job_dict(j, found.now, found.live) for j in found.rows]

    def _read(self, job_id: int) -> Any:
        """The job as the reads give it (models.reads.JobRow; NotFound if there is none)."""
        return self._found(job_id, self.reads, lambda reads: reads.job(job_id))

    def job(self, job_id: int) -> dict[str, Any]:
        """One job (NotFound if there is none)."""
        from ftctl.controller.records import job_dict

        return job_dict(self._read(job_id), live=self.live())

    def show(self, job_id: int, diff: bool = False) -> dict[str, Any]:
        """A job, its history and its attempts; `diff`: the examples its model did worse on."""
        from ftctl.controller.records import attempt_dict, event_dict, job_dict, training_summary

        row = self._read(job_id)
        reads = self.reads()
        data = job_dict(row, live=self.live())
        data["events"] = [event_dict(e) for e in reads.events(job_id)]
        data["attempts"] = [attempt_dict(a) for a in reads.attempts(job_id)]
        # the read connection only: no ORM, no Store (a second of imports)
        data["training"] = training_summary(reads.log_points(job_id, row.provider_job_id)) \
            if row.provider_job_id else None
        run = reads.evaluation(job_id) if row.promotion is not None else None
        if run is not None:
            from ftctl.controller.records import evaluation_dict, evaluation_diff

            data["evaluation"] = evaluation_dict(*run)
            if diff:
                data["evaluation"]["diff"] = evaluation_diff(reads, run[0])
        return data

    def events(self, *, job_id: int | None = None, after: int = 0, limit: int | None = None,
               newest: bool = False) -> list[dict[str, Any]]:
        """Every transition, promotion and note (oldest first), each with its
        stable `id` and its `seq` (pass the last seq as `after` to follow);
        `newest`: only the last `limit`."""
        from ftctl.controller.records import event_dict

        if job_id is not None:
            self._row(job_id)
        store = self.store()
        if store is None:
            return []
        return [event_dict(e, agent, provider)
                for e, agent, provider in store.events_after(after, job_id=job_id, limit=limit, newest=newest)]

    def logs(self, job_id: int, *, after: int = 0) -> dict[str, Any]:
        """A job's training log as stored: its provider's events and metrics
        (points with `kind`, `step`, `metrics` such as train_loss), for its
        current provider job; `done` once nothing more will come."""
        from ftctl.controller.ledger.states import TERMINAL
        from ftctl.controller.records import point_dict

        row = self._row(job_id)
        store = self.store()
        rows = store.log_points(job_id, row.provider_job_id, after_id=after) if row.provider_job_id else []
        cursor = store.log_cursor(row.provider_job_id) if row.provider_job_id else None
        return {"job_id": row.id, "agent": row.agent, "provider": row.provider, "state": row.state,
                "provider_job_id": row.provider_job_id, "points": [point_dict(p) for p in rows],
                "last_id": max([p.id for p in rows], default=after),
                "read_at": cursor.fetched_at.isoformat(timespec="seconds") + "Z" if cursor else None,
                "note": cursor.error if cursor else None,
                "done": row.state in TERMINAL and (not row.provider_job_id or bool(cursor and cursor.final))}

    def undelivered(self) -> dict[str, Any]:
        """Events owed to the configured hooks: pending (with the oldest and
        the last error) and given up."""
        if not self.config.hooks:
            return {"pending": 0, "gave_up": 0, "oldest": None, "last_error": None}
        from ftctl.controller.ledger.states import EVENTS

        names = [e for e in EVENTS if any(h.wants(e) for h in self.config.hooks)]
        reads = self.reads() if names else None
        if reads is None:
            return {"pending": 0, "gave_up": 0, "oldest": None, "last_error": None}
        return reads.undelivered(names)

    def daemon(self) -> str | None:
        """Who drives this database now ("pid 123"), or None."""
        reads = self.reads()
        return reads.daemon_holder() if reads is not None else None

    def daemons(self) -> dict[str, Any]:
        """The daemon that leads (host, pid, since, epoch) and those standing
        by with their last heartbeat, from any host."""
        from ftctl.controller.records import iso

        reads = self.reads()
        if reads is None:
            return {"leader": None, "standbys": []}
        seen = reads.daemons()
        leader = seen["leader"]
        if leader is not None:
            leader = {"host": leader["host"], "pid": leader["pid"], "epoch": leader["epoch"],
                      "since": iso(leader["since"])}
        standbys = [{"host": m["host"], "pid": m["pid"], "heartbeat_at": iso(m["heartbeat_at"])}
                    for m in seen["standbys"]]
        return {"leader": leader, "standbys": standbys}

    def wait(self, job_ids: Iterable[int], *, timeout: float | None = None,
             interval: float = 5.0) -> list[dict[str, Any]]:
        """Block until every job is finished, a succeeded job's model promoted
        or rejected too (its evaluation over); TimedOut after `timeout` seconds."""
        from ftctl.controller.ledger.states import PROMOTION_OPEN, TERMINAL
        from ftctl.controller.records import job_dict

        def finished(r: Any) -> bool:
            return r.state in TERMINAL and r.promotion not in PROMOTION_OPEN

        ids = list(job_ids)
        for job_id in ids:
            self._read(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rows = [self._read(i) for i in ids]
            if all(finished(r) for r in rows):
                return [job_dict(r) for r in rows]
            if deadline is not None and time.monotonic() >= deadline:
                waiting = ", ".join(f"{r.id} {r.promotion if r.state == 'succeeded' else r.state}"
                                    for r in rows if not finished(r))
                from ftctl.providers.settings import duration_text

                raise TimedOut(f"timed out after {duration_text(timeout)} waiting for {waiting}")
            time.sleep(interval)
