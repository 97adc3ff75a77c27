"""Writing jobs: a transition and its history row in one transaction; notes
(facts that move no state) many to a transaction."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select

from ftctl.controller.engine.reasons import Reason
from ftctl.controller.engine.states import PREPARED, InvalidTransition, next_state
from ftctl.models import Attempt, Job, JobEvent, Store, utcnow
from ftctl.models.tables import LIVE_STATES, job_identity


# job ids a note statement names at most (SQLite allows 32,766 parameters)
NOTE_BATCH = 500


class JobNotFound(Exception):
    def __init__(self, job_id: Any):
        super().__init__(f"no job {job_id}")


class StaleState(Exception):
    """The job changed under us (e.g. cancelled from the CLI mid-tick)."""


class Twin(Exception):
    """An identical job is live already (waiting, running or succeeded)."""

    def __init__(self, job: Job):
        # plain values: the row may be expired once its transaction rolls back
        self.job_id, self.state = job.id, job.state
        super().__init__(f"job {self.job_id} has the same data and settings and is {self.state}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_client_token(agent: str) -> str:
    """A token the provider echoes back (Mistral's suffix allows 18 chars)."""
    slug = re.sub(r"[^a-z0-9]", "", agent.lower())[:9] or "job"
    return f"{slug}-{secrets.token_hex(4)}"


def create_job(store: Store, *, agent: str, provider: str, model: str, training_file: Path,
               content_hash: str, hyperparameters: dict[str, Any], now: datetime | None = None,
               estimated_cost: float | None = None, data_tokens: int | None = None, force: bool = True) -> Job:
    """Store a new `prepared` job. Unless `force`, Twin if an identical job
    is live: the check and the insert are one transaction, and a unique
    index on (identity, replica) among live jobs backs it against a
    concurrent submit. With `force` the job takes the next replica."""
    now = now or utcnow()
    for _ in range(3):
        try:
            with store.write() as s:
                job = new_job_row(agent=agent, provider=provider, model=model, training_file=training_file,
                                  content_hash=content_hash, hyperparameters=hyperparameters, now=now,
                                  estimated_cost=estimated_cost, data_tokens=data_tokens)
                live = s.exec(select(Job).where(Job.identity == job.identity, Job.state.in_(LIVE_STATES))
                              .order_by(Job.id)).first()
                if live is not None and not force:
                    raise Twin(live)
                if live is not None:
                    top = s.exec(select(func.max(Job.replica)).where(Job.identity == job.identity)).one()
                    job.replica = (top or 0) + 1
                add_job(s, job, now)
            return job
        except IntegrityError:
            continue  # another submit stored the same job meanwhile: look again
    raise Twin(store.live_twin(job.identity))


def new_job_row(*, agent: str, provider: str, model: str, training_file: Path, content_hash: str,
                hyperparameters: dict[str, Any], now: datetime, estimated_cost: float | None = None,
                data_tokens: int | None = None) -> Job:
    return Job(agent=agent, provider=provider, model=model, training_file=str(training_file),
               content_hash=content_hash, hyperparameters=dict(hyperparameters), state=PREPARED.value,
               identity=job_identity(agent, provider, model, content_hash, dict(hyperparameters)),
               estimated_cost=estimated_cost, data_tokens=data_tokens, **Reason("daemon").stored(),
               created_at=now, updated_at=now)


def add_job(session: Any, job: Job, now: datetime) -> None:
    """Insert a new job and its first history row in the caller's transaction."""
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, at=now, from_state=None, to_state=PREPARED.value, trigger="create",
                         reason="submitted"))


def fire(store: Store, job_id: int, trigger: str, *, now: datetime | None = None, reason: Reason | None = None,
         expect: str | None = None, updates: dict[str, Any] | None = None, provider_status: str | None = None,
         attempt_outcome: tuple[str, bool] | None = None) -> tuple[str, Job]:
    """Move a job by `trigger`; returns (previous state, job).

    The state check, the row update and the history row happen in one
    transaction, so a refused or stale transition changes nothing.
    """
    now = now or utcnow()
    with store.write() as s:
        job = store.lock_job(s, job_id)
        if job is None:
            raise JobNotFound(job_id)
        if expect is not None and job.state != expect:
            raise StaleState(f"job {job_id} is {job.state}, not {expect}")
        before = job.state
        after = next_state(before, trigger)
        token_before = job.client_token
        for key, value in (updates or {}).items():
            setattr(job, key, value)
        job.state = after.value
        job.reason_code, job.reason_args = (reason.code, dict(reason.args)) if reason else (None, None)
        job.updated_at = now
        if provider_status is not None:
            job.provider_status = provider_status
        s.add(job)
        s.add(JobEvent(job_id=job.id, at=now, from_state=before, to_state=after.value, trigger=trigger,
                       reason=reason.text() if reason else None, provider_status=provider_status))
        if trigger == "submit" and job.client_token:
            s.add(Attempt(job_id=job.id, number=job.attempt, client_token=job.client_token, submitted_at=now))
        elif attempt_outcome is not None and token_before:
            row = s.exec(select(Attempt).where(Attempt.client_token == token_before)).first()
            if row is not None:
                row.outcome, row.counted = attempt_outcome
                row.ended_at = now
                row.provider_job_id = row.provider_job_id or job.provider_job_id or (updates or {}).get(
                    "provider_job_id")
                s.add(row)
    return before, job


def _note_in(store: Store, s: Any, job_id: int, updates: dict[str, Any], *, expect: str | None,
             expect_token: str | None, event: tuple[str, str] | None, now: datetime) -> Job | None:
    job = store.lock_job(s, job_id)
    if job is None or (expect is not None and job.state != expect):
        return None
    if expect_token is not None and job.client_token != expect_token:
        return None
    for key, value in updates.items():
        setattr(job, key, value)
    job.updated_at = now
    s.add(job)
    if event is not None:
        trigger, text = event
        s.add(JobEvent(job_id=job.id, at=now, from_state=job.state, to_state=job.state, trigger=trigger,
                       reason=text, provider_status=job.provider_status))
    if "provider_job_id" in updates and job.client_token:
        row = s.exec(select(Attempt).where(Attempt.client_token == job.client_token)).first()
        if row is not None and row.provider_job_id is None:
            row.provider_job_id = updates["provider_job_id"]
            s.add(row)
    return job


def note(store: Store, job_id: int, updates: dict[str, Any], *, expect: str | None = None,
         expect_token: str | None = None, event: tuple[str, str] | None = None,
         now: datetime | None = None) -> Job | None:
    """Record facts about a job without moving it; None if it moved meanwhile."""
    now = now or utcnow()
    with store.write() as s:
        return _note_in(store, s, job_id, updates, expect=expect, expect_token=expect_token, event=event, now=now)


def note_many(store: Store, notes: Iterable[Any], now: datetime) -> int:
    """Several notes (decide.Note) in one write transaction; returns how many
    still applied (a job that moved meanwhile is left alone)."""
    notes = list(notes)
    if not notes:
        return 0
    with store.write() as s:
        return note_many_in(store, s, notes, now)


def note_many_in(store: Store, s: Any, notes: list[Any], now: datetime) -> int:
    """Notes inside the caller's write transaction. Notes that set the same
    values on jobs in the same state (every job told to wait for a slot) are
    one `UPDATE ... WHERE id IN (...) AND state = ?` a few hundred jobs, the
    row count saying how many still applied; a note that also writes history
    or binds a provider job goes row by row."""
    from sqlalchemy import update

    jobs = Job.__table__
    groups: dict[tuple, tuple[dict[str, Any], list[int]]] = {}
    applied = 0
    for n in notes:
        if n.expect_token is None and n.event is None and "provider_job_id" not in n.updates:
            key = (n.expect, tuple(sorted((k, repr(v)) for k, v in n.updates.items())))
            groups.setdefault(key, (n.updates, []))[1].append(n.job_id)
        elif _note_in(store, s, n.job_id, n.updates, expect=n.expect, expect_token=n.expect_token, event=n.event,
                      now=now) is not None:
            applied += 1
    conn = s.connection()
    for (expect, _), (updates, ids) in groups.items():
        for i in range(0, len(ids), NOTE_BATCH):
            stmt = update(jobs).where(jobs.c.id.in_(ids[i:i + NOTE_BATCH]))
            if expect is not None:
                stmt = stmt.where(jobs.c.state == expect)
            applied += conn.execute(stmt.values(**updates, updated_at=now)).rowcount
    return applied


def cancelled_at_provider(store: Store, job_id: int, provider_job_id: str, provider_status: str,
                          now: datetime | None = None) -> Job | None:
    """The provider confirmed a cancel: nothing more is owed to it."""
    return note(store, job_id, {"cancel_pending": False, "provider_job_id": provider_job_id,
                                "provider_status": provider_status},
                event=("provider-cancel", f"cancelled at the provider ({provider_status})"), now=now)


def user_transition(store: Store, job_id: int, trigger: str) -> tuple[str, Job]:
    """A transition asked for from the CLI (cancel, retry)."""
    updates: dict[str, Any] = {}
    job = store.get_job(job_id)
    if job is None:
        raise JobNotFound(job_id)
    if trigger == "cancel" and (job.provider_job_id or job.client_token):
        updates["cancel_pending"] = True
    if trigger == "retry":
        updates.update(attempt=0, client_token=None, provider_job_id=None, intent_at=None, not_before=None,
                       fine_tuned_model=None, last_error=None, cancel_pending=False, provider_status=None)
    reason = Reason({"cancel": "cancelled_user", "retry": "retried"}.get(trigger, "text"),
                    {} if trigger in ("cancel", "retry") else {"text": f"{trigger} by the user"})
    try:
        return fire(store, job_id, trigger, reason=reason, expect=job.state, updates=updates)
    except IntegrityError:
        # back to waiting while an identical job is live: that would be a twin
        raise Twin(store.live_twin(job.identity)) from None


__all__ = ["InvalidTransition", "JobNotFound", "StaleState", "Twin", "add_job", "cancelled_at_provider", "create_job",
           "file_sha256", "fire", "new_client_token", "new_job_row", "note", "note_many", "note_many_in", "user_transition"]
