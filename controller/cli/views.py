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


BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 48) -> str:
    """A curve in one line of block characters (averaged down to `width`)."""
    if not values:
        return ""
    if len(values) > width:
        n = len(values)
        chunks = [values[i * n // width:(i + 1) * n // width] for i in range(width)]
        values = [sum(c) / len(c) for c in chunks if c]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - low) / span * (len(BARS) - 1) + 0.5))] for v in values)


def curve_line(name: str, points: list[list[float]]) -> str | None:
    """`train_loss  ▇▆▅▄▃▂▁  2.41 -> 0.35 (steps 1-10)`, or None without points."""
    if not points:
        return None
    values = [v for _, v in points]
    first, last = points[0], points[-1]
    steps = f"step {int(first[0])}" if len(points) == 1 else f"steps {int(first[0])}-{int(last[0])}"
    return f"{name:<11} {sparkline(values)}  {first[1]:.4g} -> {last[1]:.4g} (min {min(values):.4g}, {steps})"


def point_text(p: dict) -> str:
    """One stored training-log point, on one line."""
    when = (p["at"] or "").replace("T", " ").rstrip("Z") or "-"
    step = f"step {p['step']}" if p["step"] is not None else ""
    metrics = "  ".join(f"{k} {v:.4g}" for k, v in (p["metrics"] or {}).items())
    text = "  ".join(x for x in (p["message"] or "", metrics) if x)
    return f"{when:<19}  {p['kind']:<10}  {step:<10}  {text}".rstrip()


def event_text(e: dict) -> str:
    """One event, on one line, as `kubectl get events -w` prints them."""
    when = e["at"].replace("T", " ").rstrip("Z")
    move = f"{e['from'] or '-'} -> {e['to']}" if e["from"] != e["to"] else e["to"]
    detail = e["reason"] or ""
    if e.get("provider_status"):
        detail = f"{detail} [{e['provider_status']}]".strip()
    return (f"{when}  job {e['job_id']:<5} {e.get('agent') or '':<12} {e['event']:<16} {move:<22} "
            f"{detail}").rstrip()

