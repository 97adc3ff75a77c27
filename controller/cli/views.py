"""How jobs are shown: the status table, the JSON shapes, `models` output."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from ftctl.controller.engine.reasons import Live, render
from ftctl.models import Job, JobEvent, utcnow

STATE_STYLE = {
    "prepared": "yellow",
    "queued": "cyan",
    "running": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") + "Z" if at else None


def age_text(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


def live_facts(store: Any, config: Any, now: datetime | None = None) -> Live:
    """The numbers a waiting job's reason shows, as they are now: slots busy
    per provider (as the last tick saw them) and money left in the budget."""
    from datetime import timedelta

    from ftctl.controller.engine.policy import Budget

    if store is None:
        return Live()
    slots = {name: (s.slots_used, s.slots_limit) for name, s in store.provider_states().items()
             if s.slots_used is not None and s.slots_limit is not None}
    caps = config.budget
    left = None
    if caps.total is not None:
        now = now or utcnow()
        budget = Budget(caps.per_job, caps.total, store.spent_since(now - timedelta(seconds=caps.period)))
        left = budget.left(store.committed())
    return Live(slots=slots, budget_left=left)


def reason_text(job: Job, live: Live | None = None) -> str | None:
    return render(job.reason_code, job.reason_args, live)


def job_dict(job: Job, now: datetime | None = None, live: Live | None = None) -> dict[str, Any]:
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


def event_dict(ev: JobEvent) -> dict[str, Any]:
    return {
        "at": iso(ev.at),
        "from": ev.from_state,
        "to": ev.to_state,
        "trigger": ev.trigger,
        "reason": ev.reason,
        "provider_status": ev.provider_status,
    }


def status_table(jobs: list[Job], now: datetime | None = None, title: str | None = None,
                 live: Live | None = None) -> Table:
    now = now or utcnow()
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("ID", "AGENT", "PROVIDER", "MODEL", "STATE", "ATT", "AGE", "COST", "REASON / FINE-TUNED MODEL"):
        table.add_column(col, no_wrap=col != "REASON / FINE-TUNED MODEL", justify="right" if col == "COST" else "left")
    for job in jobs:
        style = STATE_STYLE.get(job.state, "")
        detail = job.fine_tuned_model if job.state == "succeeded" else (reason_text(job, live) or "")
        table.add_row(str(job.id), job.agent, job.provider, job.model, f"[{style}]{job.state}[/]",
                      str(job.attempt), age_text((now - job.created_at).total_seconds()), cost_text(job),
                      escape(detail))
    return table


def cost_text(job: Job) -> str:
    """The provider's figure once known, else our estimate (marked ~)."""
    if job.actual_cost is not None:
        return f"${job.actual_cost:,.2f}"
    if job.estimated_cost is not None:
        return f"~${job.estimated_cost:,.2f}"
    return "-"


def latest_models(jobs: list[Job]) -> dict[str, str]:
    """Each agent's newest succeeded job's fine-tuned model id."""
    best: dict[str, Job] = {}
    for job in jobs:
        if job.state == "succeeded" and job.fine_tuned_model:
            if job.agent not in best or (job.updated_at, job.id) > (best[job.agent].updated_at, best[job.agent].id):
                best[job.agent] = job
    return {agent: best[agent].fine_tuned_model for agent in sorted(best)}


def models_text(models: dict[str, str], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(models, indent=2)
    if fmt == "toml":
        lines = ["[models]"] + [f"{json.dumps(a) if not a.replace('_', '').replace('-', '').isalnum() else a} = "
                                f"{json.dumps(m)}" for a, m in models.items()]
        return "\n".join(lines)
    if fmt == "env":
        out = []
        for agent, model in models.items():
            key = "FTCTL_MODEL_" + "".join(c if c.isalnum() else "_" for c in agent.upper())
            out.append(f"{key}={model}")
        return "\n".join(out)
    raise ValueError(fmt)
