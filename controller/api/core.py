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

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class Ftctl:
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
            raise (DatabaseUnavailable if create else BadInput)(str(exc)) from None
        return self._store

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
        if not isinstance(job_id, int) or not 1 <= job_id <= MAX_JOB_ID:
            raise NotFound(f"no such job {job_id!r} (job ids run from 1 to {MAX_JOB_ID})")
        store = self.store()
        row = store.get_job(job_id) if store is not None else None
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
                                     quote=quote, phone_region=phone_region)
        except SubmitError as exc:
            raise BadInput(str(exc)) from None
        return store_submissions(self.store(create=True), plans, force=force)

    def _move(self, job_id: int, trigger: str) -> "Job":
        from ftctl.controller.engine.jobs import JobNotFound, StaleState, Twin, user_transition
        from ftctl.controller.engine.states import InvalidTransition

        current = self._row(job_id)
        if trigger == "retry" and current.cancel_pending:
            raise Refused(f"job {job_id}: its cancellation at the provider is still pending; "
                          f"retry after the next tick")
        try:
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
        return row

    def cancel(self, job_id: int) -> Cancelled:
        """Cancel a job, and at its provider at once when it is there already
        (the daemon does it otherwise, and retries until the provider confirms)."""
        from ftctl.records import job_dict

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
        from ftctl.records import job_dict

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
                raise BadInput(str(exc)) from None
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
        done = reads.last_finished(where, finished) if finished > 0 and done_states else []
        hidden = (reads.count(where, states=done_states) - len(done)) if done_states else 0
        return Listing(heapq.merge(active, done, key=lambda j: j.id), hidden, self.live(), now)

    def jobs(self, *, agent: str | None = None, active: bool = False) -> list[Any]:
        """Every job (`active`: the unfinished ones), as rows read by attribute."""
        return list(self.listing(agents=[agent] if agent else None, finished=0 if active else None).rows)

    def live(self) -> Any:
        """The facts reasons are rendered with now (slots busy, money left),
        each read the first time a reason shown needs it."""
        from ftctl.records import live_facts

        return live_facts(self.reads(), self.config)

    def status(self, *, agent: str | None = None, active: bool = False, states: Sequence[str] | None = None,
               providers: Sequence[str] | None = None, finished: int | None = None) -> list[dict[str, Any]]:
        """The jobs as dicts: every one by default; `active` (or `finished=0`)
        the unfinished ones only, `finished=N` those plus the last N to finish."""
        from ftctl.records import job_dict

        found = self.listing(states=states, agents=[agent] if agent else None, providers=providers,
                             finished=0 if active else finished)
        return [job_dict(j, found.now, found.live) for j in found.rows]

    def _read(self, job_id: int) -> Any:
        if not isinstance(job_id, int) or not 1 <= job_id <= MAX_JOB_ID:
            raise NotFound(f"no such job {job_id!r} (job ids run from 1 to {MAX_JOB_ID})")
        reads = self.reads()
        row = reads.job(job_id) if reads is not None else None
        if row is None:
            raise NotFound(f"no job {job_id} (see `ftctl status`)")
        return row

    def job(self, job_id: int) -> dict[str, Any]:
        """One job (NotFound if there is none)."""
        from ftctl.records import job_dict

        return job_dict(self._read(job_id), live=self.live())

    def show(self, job_id: int) -> dict[str, Any]:
        """A job, its history and its attempts."""
        from ftctl.records import attempt_dict, event_dict, job_dict

        row = self._read(job_id)
        reads = self.reads()
        data = job_dict(row, live=self.live())
        data["events"] = [event_dict(e) for e in reads.events(job_id)]
        data["attempts"] = [attempt_dict(a) for a in reads.attempts(job_id)]
        return data

    def models(self, *, agents: Sequence[str] | None = None,
               providers: Sequence[str] | None = None) -> dict[str, str]:
        """Each agent's newest fine-tuned model id (one grouped query)."""
        return {m.agent: m.model for m in self.model_rows(agents=agents, providers=providers)}

    def model_rows(self, *, agents: Sequence[str] | None = None, providers: Sequence[str] | None = None) -> list[Any]:
        """Each agent's newest succeeded job: (agent, model, job_id, provider, finished_at), by agent."""
        from ftctl.models.reads import Filter

        reads = self.reads()
        return reads.latest_models(Filter(None, agents, providers)) if reads is not None else []

    def daemon(self) -> str | None:
        """Who drives this database now ("pid 123"), or None."""
        reads = self.reads()
        return reads.daemon_holder() if reads is not None else None

    def wait(self, job_ids: Iterable[int], *, timeout: float | None = None,
             interval: float = 5.0) -> list[dict[str, Any]]:
        """Block until every job is finished; TimedOut after `timeout` seconds."""
        from ftctl.models.schema import FINISHED_STATES
        from ftctl.records import job_dict

        ids = list(job_ids)
        for job_id in ids:
            self._read(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rows = [self._read(i) for i in ids]
            if all(r.state in FINISHED_STATES for r in rows):
                return [job_dict(r) for r in rows]
            if deadline is not None and time.monotonic() >= deadline:
                waiting = ", ".join(f"{r.id} {r.state}" for r in rows if r.state not in FINISHED_STATES)
                from ftctl.providers.settings import duration_text

                raise TimedOut(f"timed out after {duration_text(timeout)} waiting for {waiting}")
            time.sleep(interval)
