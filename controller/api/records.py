"""The shapes ftctl's data takes outside the database: a job, an event, an
attempt as plain dicts (what `--json` prints and the Python API returns),
and the live facts a waiting job's reason is rendered with."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ftctl.controller.engine.reasons import Live, render
from ftctl.models.schema import utcnow


def iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") + "Z" if at else None


def live_facts(source: Any, config: Any, now: datetime | None = None) -> Live:
    """The numbers a waiting job's reason shows, as they are now: slots busy
    per provider (as the last tick saw them) and money left in the budget.
    `source`: a Store or a models.reads.Reads. Each is read only when a
    reason shown needs it."""
    if source is None:
        return Live()

    def slots() -> dict[str, tuple[int, int]]:
        if hasattr(source, "slots"):
            return source.slots()
        return {name: (s.slots_used, s.slots_limit) for name, s in source.provider_states().items()
                if s.slots_used is not None and s.slots_limit is not None}

    def left() -> float | None:
        from ftctl.controller.engine.policy import Budget

        caps = config.budget
        if caps.total is None:
            return None
        at = now or utcnow()
        return Budget(caps.per_job, caps.total, source.spent_since(at - timedelta(seconds=caps.period))).left(
            source.committed())

    return Live(slots=slots, budget_left=left)


def reason_text(job: Any, live: Live | None = None) -> str | None:
    return render(job.reason_code, job.reason_args, live)


def job_dict(job: Any, now: datetime | None = None, live: Live | None = None) -> dict[str, Any]:
    """A stored job (the ORM's Job or a models.reads.JobRow) as plain data."""
    now = now or utcnow()
    return {
        "id": job.id,
        "agent": job.agent,
        "provider": job.provider,
        "model": job.model,
        "state": job.state,
        "attempt": job.attempt,
        "age_seconds": int((now - job.created_at).total_seconds()),
        "reason": reason_text(job, live),
        "reason_code": job.reason_code,
        "fine_tuned_model": job.fine_tuned_model,
        "provider_job_id": job.provider_job_id,
        "provider_status": job.provider_status,
        "training_file": job.training_file,
        "content_hash": job.content_hash,
        "hyperparameters": job.hyperparameters,
        "estimated_cost": job.estimated_cost,
        "actual_cost": job.actual_cost,
        "data_tokens": job.data_tokens,
        "trained_tokens": job.trained_tokens,
        "last_error": job.last_error,
        "not_before": iso(job.not_before),
        "cancel_pending": job.cancel_pending,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
    }


def event_dict(ev: Any) -> dict[str, Any]:
    return {
        "at": iso(ev.at),
        "from": ev.from_state,
        "to": ev.to_state,
        "trigger": ev.trigger,
        "reason": ev.reason,
        "provider_status": ev.provider_status,
    }


def attempt_dict(a: Any) -> dict[str, Any]:
    return {"number": a.number, "client_token": a.client_token, "provider_job_id": a.provider_job_id,
            "outcome": a.outcome, "counted": a.counted, "submitted_at": iso(a.submitted_at),
            "ended_at": iso(a.ended_at)}


def latest_models(jobs: list[Any]) -> dict[str, str]:
    """Each agent's newest succeeded job's fine-tuned model id."""
    best: dict[str, Any] = {}
    for job in jobs:
        if job.state == "succeeded" and job.fine_tuned_model:
            if job.agent not in best or (job.updated_at, job.id) > (best[job.agent].updated_at, best[job.agent].id):
                best[job.agent] = job
    return {agent: best[agent].fine_tuned_model for agent in sorted(best)}
