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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ftctl.controller.config import Config
    from ftctl.controller.preflight.submit import Result
    from ftctl.models import Job, Store

MAX_JOB_ID = 2**63 - 1


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
        store = self.store(create=True)
        results = store_submissions(store, plans, force=force)
        if any(r.created for r in results):
            self.wake("submit")
        return results

    def wake(self, reason: str = "cli") -> bool:
        """Tell the daemon to reconcile now rather than at its next poll
        (every write here does it; False when no daemon listens)."""
        store = self.store()
        return store.wake(reason) if store is not None else False

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
        self.wake(trigger)
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

    def jobs(self, *, agent: str | None = None, active: bool = False) -> list["Job"]:
        from ftctl.controller.engine.states import TERMINAL

        store = self.store()
        rows = store.list_jobs(agent=agent) if store is not None else []
        return [j for j in rows if j.state not in TERMINAL] if active else rows

    def live(self) -> Any:
        """The facts reasons are rendered with now (slots busy, money left)."""
        from ftctl.records import live_facts

        return live_facts(self.store(), self.config)

    def status(self, *, agent: str | None = None, active: bool = False) -> list[dict[str, Any]]:
        from ftctl.models import utcnow
        from ftctl.records import job_dict

        rows, live, now = self.jobs(agent=agent, active=active), self.live(), utcnow()
        return [job_dict(j, now, live) for j in rows]

    def show(self, job_id: int) -> dict[str, Any]:
        """A job, its history and its attempts."""
        from ftctl.records import attempt_dict, event_dict, job_dict, training_summary

        row = self._row(job_id)
        store = self.store()
        data = job_dict(row, live=self.live())
        data["events"] = [event_dict(e) for e in store.events(job_id)]
        data["attempts"] = [attempt_dict(a) for a in store.attempts(job_id)]
        data["training"] = training_summary(store.log_points(job_id, row.provider_job_id)) \
            if row.provider_job_id else None
        run = store.evaluations([job_id]).get(job_id)
        if run is not None:
            from ftctl.records import evaluation_dict

            answered = sum(n for n, _ in store.eval_progress([run.id]).get(run.id, {}).values())
            data["evaluation"] = evaluation_dict(run, answered)
        return data

    def events(self, *, job_id: int | None = None, after: int = 0, limit: int | None = None,
               newest: bool = False) -> list[dict[str, Any]]:
        """Every transition, promotion and note (oldest first), each with its
        stable `id` and its `seq` (pass the last seq as `after` to follow);
        `newest`: only the last `limit`."""
        from ftctl.records import event_dict

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
        from ftctl.controller.engine.states import TERMINAL
        from ftctl.records import point_dict

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
        from ftctl.controller.engine.states import EVENTS

        names = [e for e in EVENTS if any(h.wants(e) for h in self.config.hooks)]
        store = self.store()
        if store is None or not names:
            return {"pending": 0, "gave_up": 0, "oldest": None, "last_error": None}
        return store.undelivered(names)

    def models(self) -> dict[str, str]:
        """Each agent's newest promoted model id (what [export] writes)."""
        store = self.store()
        return store.promoted_models() if store is not None else {}

    def all_models(self) -> list[dict[str, Any]]:
        """Every succeeded job's model with its promotion: candidates,
        models being evaluated, promoted and rejected ones."""
        from ftctl.records import model_dict

        store = self.store()
        return [model_dict(j) for j in store.list_jobs(states=["succeeded"])] if store is not None else []

    # -- the gate, overridden -----------------------------------------------------------

    def promote(self, job_id: int) -> dict[str, Any]:
        """Make a succeeded job's model its agent's, whatever its evaluation
        said (or before it ends); recorded in the job's history."""
        return self._gate(job_id, "promote")

    def reject(self, job_id: int) -> dict[str, Any]:
        """Never deliver a succeeded job's model (it leaves the export file)."""
        return self._gate(job_id, "reject")

    def _gate(self, job_id: int, trigger: str) -> dict[str, Any]:
        from ftctl.controller.engine.jobs import StaleState, fire_promotion
        from ftctl.controller.engine.reasons import Reason
        from ftctl.controller.engine.states import InvalidTransition
        from ftctl.records import job_dict

        row = self._row(job_id)
        if row.state != "succeeded" or row.promotion is None:
            raise Refused(f"job {job_id} is {row.state}: only a succeeded job's model can be {trigger}d")
        reason = Reason("promoted_user" if trigger == "promote" else "rejected_user")
        try:
            fire_promotion(self.store(), job_id, trigger, reason=reason, expect=row.promotion)
        except InvalidTransition as exc:
            raise Refused(f"job {job_id}: {exc}") from None
        except StaleState:
            raise Refused(f"job {job_id} changed while this command ran; look at `ftctl show {job_id}` "
                          f"and try again") from None
        self.export()
        return job_dict(self._row(job_id))

    def export(self) -> bool:
        """Rewrite [export]'s file if the set of promoted models changed (the
        daemon does it too, every tick); True if it was written."""
        conf = self.config.export
        store = self.store()
        if conf is None or store is None:
            return False
        from ftctl.controller.engine.export import sync

        try:
            return sync(self.config.resolve(conf.path), conf.fmt, store.promoted_models())
        except OSError as exc:
            raise FtctlError(f"export.path: cannot write {conf.path} ({exc.__class__.__name__})") from None

    def daemon(self) -> str | None:
        """Who drives this database now ("pid 123"), or None."""
        store = self.store()
        return store.daemon_holder() if store is not None else None

    def daemons(self) -> dict[str, Any]:
        """The daemon that leads (host, pid, since, epoch) and those standing
        by with their last heartbeat, from any host."""
        from ftctl.records import iso

        store = self.store()
        if store is None:
            return {"leader": None, "standbys": []}
        leadership = store.leadership
        leader = leadership.leader()
        members = leadership.members()
        if leader is not None:
            leader = {"host": leader["host"], "pid": leader["pid"], "epoch": leader["epoch"],
                      "since": iso(leader["since"])}
        standbys = [{"host": m["host"], "pid": m["pid"], "heartbeat_at": iso(m["heartbeat_at"])}
                    for m in members if m["role"] == "standby"]
        return {"leader": leader, "standbys": standbys}

    def wait(self, job_ids: Iterable[int], *, timeout: float | None = None,
             interval: float = 5.0) -> list[dict[str, Any]]:
        """Block until every job is finished, a succeeded job's model promoted
        or rejected too (its evaluation over); TimedOut after `timeout` seconds."""
        from ftctl.controller.engine.states import PROMOTION_OPEN, TERMINAL
        from ftctl.records import job_dict

        def finished(r: "Job") -> bool:
            return r.state in TERMINAL and r.promotion not in PROMOTION_OPEN

        ids = list(job_ids)
        for job_id in ids:
            self._row(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rows = [self._row(i) for i in ids]
            if all(finished(r) for r in rows):
                return [job_dict(r) for r in rows]
            if deadline is not None and time.monotonic() >= deadline:
                waiting = ", ".join(f"{r.id} {r.promotion if r.state == 'succeeded' else r.state}"
                                    for r in rows if not finished(r))
                from ftctl.providers.settings import duration_text

                raise TimedOut(f"timed out after {duration_text(timeout)} waiting for {waiting}")
            time.sleep(interval)
