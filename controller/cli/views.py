"""How jobs are shown on a terminal: the status table and `models` output
(the JSON shapes are ftctl.records)."""

from __future__ import annotations

import json
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
