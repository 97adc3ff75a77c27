"""Moving jobs: a transition and its history row in one transaction; notes
(facts that move no state) many to a transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from ftctl.controller.ledger.creation import Twin
from ftctl.controller.ledger.events import record
from ftctl.controller.ledger.reasons import Reason
from ftctl.controller.ledger.states import (CANDIDATE, EVALUATING, PROMOTED, SUCCEEDED, InvalidTransition,
                                            next_promotion, next_state)
from ftctl.models import Attempt, Evaluation, Job, Store, utcnow


# job ids a note statement names at most (SQLite allows 32,766 parameters)
NOTE_BATCH = 500


class JobNotFound(Exception):
    def __init__(self, job_id: Any):
        super().__init__(f"no job {job_id}")


class StaleState(Exception):
    """The job changed under us (e.g. cancelled from the CLI mid-tick)."""


def fire(store: Store, job_id: int, trigger: str, *, now: datetime | None = None, reason: Reason | None = None,
         expect: str | None = None, updates: dict[str, Any] | None = None, provider_status: str | None = None,
         attempt_outcome: tuple[str, bool] | None = None, promotion: str | None = None) -> tuple[str, Job]:
    """Move a job by `trigger`; returns (previous state, job).

    The state check, the row update, the history row and the event owed to
    the hooks happen in one transaction, so a refused or stale transition
    changes nothing and a stored one is never lost for the hooks. A job
    that succeeds gets its model's promotion state (`candidate`), moved at
    once by `promotion` where given ("skip": the agent has no evaluation).
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
        record(s, job, before=before, after=after.value, trigger=trigger, now=now,
               reason=reason.text() if reason else None, provider_status=provider_status)
        if after == SUCCEEDED and job.promotion is None:
            job.promotion = CANDIDATE.value
            if promotion is not None:
                _promote_in(s, job, promotion, Reason("no_gate") if promotion == "skip" else None, now)
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


def _promote_in(session: Any, job: Job, trigger: str, reason: Reason | None, now: datetime) -> str:
    """Move a succeeded job's model by `trigger` (the promotion machine) and
    write its history row, in the caller's transaction; returns the state before."""
    before = job.promotion or CANDIDATE.value
    after = next_promotion(before, trigger)
    job.promotion = after.value
    if after == PROMOTED:
        job.promoted_at = now
    job.updated_at = now
    session.add(job)
    # a promotion or a rejection is an event too (the hooks' `promoted`, `rejected`)
    record(session, job, before=before, after=after.value, trigger=trigger, now=now,
           reason=reason.text() if reason else None)
    return before


def fire_promotion(store: Store, job_id: int, trigger: str, *, reason: Reason | None = None,
                   expect: str | None = None, evaluation: dict[str, Any] | None = None,
                   now: datetime | None = None) -> tuple[str, Job]:
    """A succeeded job's model moves (promotion machine): its reason, its
    history row and its evaluation's record (started with `evaluate`, its
    final figures with a verdict) in one transaction. StaleState if its
    promotion is no longer `expect`; InvalidTransition if not allowed."""
    now = now or utcnow()
    with store.write() as s:
        job = store.lock_job(s, job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job.state != SUCCEEDED.value or job.promotion is None:
            raise InvalidTransition(trigger, job.state)
        if expect is not None and job.promotion != expect:
            raise StaleState(f"job {job_id}'s model is {job.promotion}, not {expect}")
        chosen = (evaluation or {}).get("chosen_model")
        if trigger == "accept" and chosen and chosen != job.fine_tuned_model:
            job.fine_tuned_model = chosen  # checkpoints = "best" chose a checkpoint: that is the agent's model
        before = _promote_in(s, job, trigger, reason, now)
        job.reason_code, job.reason_args = (reason.code, dict(reason.args)) if reason else (None, None)
        row = s.exec(select(Evaluation).where(Evaluation.job_id == job_id)).first()
        if trigger == "evaluate" and row is None and evaluation:
            s.add(Evaluation(job_id=job_id, started_at=now, **evaluation))
        elif row is not None and (evaluation or (before == EVALUATING and row.finished_at is None)):
            for key, value in (evaluation or {}).items():
                setattr(row, key, value)
            # an evaluation left by a verdict or a person's override is over:
            # its estimate no longer holds money back
            if before == EVALUATING and row.finished_at is None:
                row.finished_at = now
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
        record(s, job, before=job.state, after=job.state, trigger=trigger, reason=text,
               provider_status=job.provider_status, now=now)
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
        updates.update(RETRY_RESET)
    reason = Reason({"cancel": "cancelled_user", "retry": "retried"}.get(trigger, "text"),
                    {} if trigger in ("cancel", "retry") else {"text": f"{trigger} by the user"})
    try:
        result = fire(store, job_id, trigger, reason=reason, expect=job.state, updates=updates)
    except IntegrityError:
        # back to waiting while an identical job is live: that would be a twin
        raise Twin(store.live_twin(job.identity)) from None
    if trigger == "retry":
        retry_downstream(store, job_id)
    return result


RETRY_RESET = dict(attempt=0, client_token=None, provider_job_id=None, intent_at=None, not_before=None,
                   fine_tuned_model=None, last_error=None, cancel_pending=False, provider_status=None,
                   base_model=None)


def retry_downstream(store: Store, job_id: int) -> list[int]:
    """The jobs that failed because `job_id` (or one of them) ended badly go
    back to `prepared` with it: retrying an upstream job brings its chain back."""
    revived: list[int] = []
    todo = [job_id]
    while todo:
        upstream = todo.pop()
        for job in store.list_jobs(states=["failed"]):
            if job.reason_code == "upstream_failed" and upstream in (job.upstream_job_ids or ()):
                try:
                    fire(store, job.id, "retry", reason=Reason("retried_upstream", {"job": job_id}),
                         expect="failed", updates=dict(RETRY_RESET))
                except (StaleState, InvalidTransition, IntegrityError):
                    continue
                revived.append(job.id)
                todo.append(job.id)
    return revived


__all__ = ["InvalidTransition", "JobNotFound", "StaleState", "cancelled_at_provider", "fire", "fire_promotion", "note",
           "note_many", "note_many_in", "retry_downstream", "user_transition"]
