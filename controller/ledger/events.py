"""Events: every transition and promotion of a job, with a stable id.

A history row (models.JobEvent) is written in the transaction of the change
it records, and an outbox row goes with it, in the same transaction,
carrying what the hooks are told: every kind of event `ftctl events` shows
(a transition, a promotion, a note) is one a hook can ask for. So an event the
database holds is never lost for the hooks, whenever the process dies: the
daemon's dispatcher (service.hooks) delivers it at least once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ftctl.models import Job, JobEvent, OutboxEvent

TERMINAL_EVENTS = ("succeeded", "failed", "cancelled")


def _iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") + "Z" if at else None


def payload(job: Job, ev: JobEvent) -> dict[str, Any]:
    """What a hook is told about an event (the same for a command's
    environment and a URL's JSON body)."""
    return {
        "id": ev.event_id,
        "event": ev.name,
        "at": _iso(ev.at),
        "job_id": job.id,
        "agent": job.agent,
        "provider": job.provider,
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model,
        "from": ev.from_state,
        "to": ev.to_state,
        "trigger": ev.trigger,
        "reason": ev.reason,
        "attempt": job.attempt,
        "provider_job_id": job.provider_job_id,
        "error": job.last_error if ev.name == "failed" else None,
    }


def record(session: Any, job: Job, *, before: str | None, after: str, trigger: str, now: datetime,
           reason: str | None = None, provider_status: str | None = None, name: str | None = None) -> JobEvent:
    """A history row in the caller's transaction, and its outbox row (each
    event is one a hook can ask for, by its name or by "*")."""
    if name is None:
        name = after if before != after else trigger
    ev = JobEvent(job_id=job.id, at=now, from_state=before, to_state=after, trigger=trigger, reason=reason,
                  provider_status=provider_status, name=name)
    session.add(ev)
    session.add(OutboxEvent(event_id=ev.event_id, job_id=job.id, name=name, payload=payload(job, ev),
                            created_at=now, next_at=now))
    return ev
