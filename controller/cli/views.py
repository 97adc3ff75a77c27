"""How jobs are shown on a terminal: the status table and `models` output
(the JSON shapes are ftctl.records)."""

from __future__ import annotations

from datetime import datetime

from rich.markup import escape
from rich.table import Table

from ftctl.records import reason_text
from ftctl.controller.engine.reasons import Live
from ftctl.models import Job, utcnow

STATE_STYLE = {
    "prepared": "yellow",
    "queued": "cyan",
    "running": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def age_text(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


def status_table(jobs: list[Job], now: datetime | None = None, title: str | None = None,
                 live: Live | None = None) -> Table:
    now = now or utcnow()
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("ID", "AGENT", "PROVIDER", "MODEL", "STATE", "ATT", "AGE", "COST", "REASON / FINE-TUNED MODEL"):
        table.add_column(col, no_wrap=col != "REASON / FINE-TUNED MODEL", justify="right" if col == "COST" else "left")
    for job in jobs:
        style = STATE_STYLE.get(job.state, "")
        detail = reason_text(job, live) or ""
        if job.state == "succeeded":  # its model, and what the gate made of it
            why = reason_text(job, live) if job.reason_code not in (None, "no_gate") else None
            detail = (job.fine_tuned_model or "") + (f" {why}" if why else f" ({job.promotion})"
                                                     if job.promotion not in (None, "promoted") else "")
        table.add_row(str(job.id), job.agent, job.provider, model_text(job), f"[{style}]{job.state}[/]",
                      str(job.attempt), age_text((now - job.created_at).total_seconds()), cost_text(job),
                      escape(detail))
    return table


def model_text(job: Job) -> str:
    """The model column: a downstream job shows the chain it is part of."""
    text = job.model
    if job.model_job_id is not None:
        text += f" (job {job.model_job_id})"
    others = [i for i in job.upstream_job_ids or () if i != job.model_job_id]
    if others:
        text += f", after job{'s' if len(others) > 1 else ''} {', '.join(str(i) for i in others)}"
    return text


def evaluation_text(ev: dict) -> str:
    """show: both scores, n, and the improvement against what was needed."""
    if ev["improvement"] is None:
        state = f"error: {ev['error']}" if ev["error"] else f"{ev['answered']}/{2 * ev['n']} answers so far"
        return f"{ev['metric']} on n={ev['n']} examples, {state} (estimate ${ev['estimated_cost']:.4f})"
    return (f"{ev['metric']} on n={ev['n']} examples: candidate {ev['candidate_score']:.2f}, "
            f"{ev['compare_model']} {ev['compare_score']:.2f}; improvement {ev['improvement']:+.2f} "
            f"(needed {ev['min_improvement']:+.2f})")


def cost_text(job: Job) -> str:
    """The provider's figure once known, else our estimate (marked ~)."""
    if job.actual_cost is not None:
        return f"${job.actual_cost:,.2f}"
    if job.estimated_cost is not None:
        return f"~${job.estimated_cost:,.2f}"
    return "-"


def models_text(models: dict[str, str], fmt: str) -> str:
    from ftctl.controller.engine.export import render

    return render(models, fmt)
