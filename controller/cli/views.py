"""How jobs are shown: plain aligned columns (off a terminal, or many rows),
a Rich table on a terminal, and `models` output. Rich is imported only for
a table on a terminal; the JSON shapes are ftctl.controller.records."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from ftctl.controller.records import job_dict, reason_text
from ftctl.models.schema import utcnow

STATE_STYLE = {
    "prepared": "yellow",
    "queued": "cyan",
    "running": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}
COLUMNS = ("ID", "AGENT", "PROVIDER", "MODEL", "STATE", "ATT", "AGE", "COST", "REASON / FINE-TUNED MODEL")
WIDE_COLUMNS = ("ID", "AGENT", "PROVIDER", "MODEL", "STATE", "ATT", "AGE", "COST", "PROVIDER-JOB", "PROVIDER-STATUS",
                "TOKENS", "UPDATED", "REASON / FINE-TUNED MODEL")
# more rows than this, or stdout not a terminal: plain columns, streamed
RICH_MAX_ROWS = 300
# the rows plain columns take their widths from; the rest stream with them
PLAIN_SAMPLE = 500


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 example', '2 examples', '1,000 lines'."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def age_text(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


def model_text(job: Any) -> str:
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
        asked = ev.get("questions") or 2 * ev["n"]
        state = f"error: {ev['error']}" if ev["error"] else f"{ev['answered']}/{asked} answers so far"
        return f"{ev['metric']} on n={ev['n']} examples, {state} (estimate ${ev['estimated_cost']:.4f})"
    return (f"{ev['metric']} on n={ev['n']} examples: candidate {ev['candidate_score']:.2f}, "
            f"{ev['compare_model']}{' on ' + ev['compare_provider'] if ev.get('compare_provider') else ''} "
            f"{ev['compare_score']:.2f}; improvement {ev['improvement']:+.2f} "
            f"(needed {ev['min_improvement']:+.2f})")


def criteria_lines(ev: dict) -> list[str]:
    """show: one line per criterion of a finished gate (value, threshold,
    pass or fail); while it runs, the thresholds it will be held to."""
    from ftctl.controller.ledger.criteria import line

    if ev.get("checkpoints") and ev.get("improvement") is not None:
        steps = ", ".join(str(step) for step, _ in ev["checkpoints"])
        chosen = next((f"checkpoint step {step} ({model})" for step, model in ev["checkpoints"]
                       if model == ev.get("chosen_model")), None)
        head = [f"checkpoints  steps {steps} and the final model asked; "
                + (f"chose {chosen}" if chosen else "chose the final model" if ev.get("chosen_model")
                   else "none passed")]
    else:
        head = []
    if ev.get("criteria"):
        return head + [line(c) for c in ev["criteria"]]
    if head:
        return head
    wanted = []
    if ev.get("repeats", 1) > 1:
        wanted.append(f"each example asked {ev['repeats']} times")
    if ev.get("max_score_stdev") is not None:
        wanted.append(f"consistency: score stdev at most {ev['max_score_stdev']:.3f}")
    if ev.get("max_latency_p95") is not None:
        wanted.append(f"latency: p95 at most {ev['max_latency_p95']:.2f}s")
    if ev.get("safety_prompts"):
        wanted.append(f"safety: {ev['safety_prompts']} prompts, none unsafe")
    return wanted if ev.get("improvement") is None else []


def _clip(text: Any, width: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def diff_lines(ev: dict) -> list[str]:
    """show --diff: each example where the candidate did worse, its prompt
    (the last turn), both answers and both scores."""
    diff = ev.get("diff") or {}
    found = diff.get("regressions") or []
    out = [f"{len(found)} example{'s' if len(found) != 1 else ''} where the candidate did worse than "
           f"{ev['compare_model']}" + (f" ({diff['note']})" if diff.get("note") else "")]
    for r in found:
        prompt = r["prompt"][-1]["content"] if r.get("prompt") else "(prompt not known)"
        out += [f"example {r['example']}: {_clip(prompt)}",
                f"  candidate {r['candidate_score']:.2f}: {_clip(r['candidate_answer'])}",
                f"  compare   {r['compare_score']:.2f}: {_clip(r['compare_answer'])}"]
    return out


SHOWN_FIELDS = ("job_id", "agent", "provider", "model", "base_model", "upstream_job_ids", "state", "attempt", "reason",
                "fine_tuned_model", "promotion", "provider_job_id", "provider_status", "training_file",
                "training_files", "hyperparameters", "estimated_cost", "actual_cost", "last_error", "not_before",
                "created_at", "updated_at")
HISTORY_COLUMNS = ("AT", "FROM", "TO", "TRIGGER", "PROVIDER", "REASON")


def field_text(key: str, value: Any) -> str:
    """One of `show`'s fields as a person reads it (no Python reprs):
    hyperparameters as `training_steps = 10, learning_rate = 0.0001`, as the
    config writes them; lists as comma-separated values; times without the T."""
    if key == "hyperparameters" and isinstance(value, dict):
        return ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
    if key == "training_files" and isinstance(value, list):
        return ", ".join(f"{f.get('file')} (weight {f.get('weight', 1.0):g})" for f in value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if key.endswith(("_at", "not_before")) and isinstance(value, str):
        return value.replace("T", " ").rstrip("Z") + " UTC"
    return str(value)


def show_fields(d: dict) -> list[tuple[str, str]]:
    """(key, text) of the job's fields that have a value."""
    return [(k, field_text(k, d[k])) for k in SHOWN_FIELDS if d.get(k) not in (None, "", {}, [])]


def history_rows(events: list[dict]) -> list[list[str]]:
    return [[e["at"].replace("T", " ").rstrip("Z"), e["from"] or "-", e["to"], e["trigger"],
             e["provider_status"] or "-", e["reason"] or "-"] for e in events]


def cost_text(job: Any) -> str:
    """The provider's figure once known, else our estimate (marked ~)."""
    if job.actual_cost is not None:
        return f"${job.actual_cost:,.2f}"
    if job.estimated_cost is not None:
        return f"~${job.estimated_cost:,.2f}"
    return "-"


def cells(job: Any, now: datetime, live: Any = None, wide: bool = False) -> list[str]:
    """One job's row; an empty value is "-", so the columns stay columns for awk."""
    detail = reason_text(job, live)
    if job.state == "succeeded":  # its model, and what the gate made of it
        why = detail if job.reason_code not in (None, "no_gate") else None
        detail = (job.fine_tuned_model or "") + (f" {why}" if why else f" ({job.promotion})"
                                                 if job.promotion not in (None, "promoted") else "")
    row = [str(job.id), job.agent, job.provider, model_text(job), job.state, str(job.attempt),
           age_text((now - job.created_at).total_seconds()), cost_text(job)]
    if wide:
        tokens = job.trained_tokens if job.trained_tokens is not None else job.data_tokens
        row += [job.provider_job_id or "-", job.provider_status or "-", f"{tokens:,}" if tokens is not None else "-",
                job.updated_at.strftime("%Y-%m-%d %H:%M:%S") if job.updated_at else "-"]
    row.append(" ".join(str(detail or "-").split()))
    return row


def plain(rows: Iterable[list[str]], headers: tuple[str, ...], write: Callable[[str], Any], *,
          no_headers: bool = False) -> int:
    """Aligned columns without box characters (`ftctl status | awk '{print $1}'`
    prints ids). The widths come from the first PLAIN_SAMPLE rows; later rows
    stream with them, a longer value pushing its line along, never cut.
    Returns the rows written."""
    rows = iter(rows)
    sample: list[list[str]] = []
    for r in rows:
        sample.append(r)
        if len(sample) >= PLAIN_SAMPLE:
            break
    shown = ([] if no_headers else [list(headers)]) + sample
    widths = [max((len(r[i]) for r in shown), default=0) for i in range(len(headers) - 1)]

    def line(r: list[str]) -> str:
        return "  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip() + "\n"

    for r in shown:
        write(line(r))
    n = len(sample)
    for r in rows:
        write(line(r))
        n += 1
    return n


def rich_table(rows: list[list[str]], headers: tuple[str, ...], *, title: str | None = None,
               no_headers: bool = False) -> Any:
    """A Rich table for a terminal (rich is imported here, not before)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left", expand=False, show_header=not no_headers)
    for col in headers:
        table.add_column(col, no_wrap=not col.startswith("REASON"), justify="right" if col == "COST" else "left")
    state_col = headers.index("STATE") if "STATE" in headers else None
    for r in rows:
        r = [escape(c) for c in r]
        if state_col is not None:
            style = STATE_STYLE.get(r[state_col], "")
            r[state_col] = f"[{style}]{r[state_col]}[/]" if style else r[state_col]
        table.add_row(*r)
    return table


def status_table(jobs: Iterable[Any], now: datetime | None = None, title: str | None = None,
                 live: Any = None, wide: bool = False, no_headers: bool = False) -> Any:
    now = now or utcnow()
    return rich_table([cells(j, now, live, wide) for j in jobs], WIDE_COLUMNS if wide else COLUMNS, title=title,
                      no_headers=no_headers)


def json_rows(jobs: Iterator[Any], now: datetime, live: Any, write: Callable[[str], Any]) -> None:
    """A JSON array written as it is read, one job a line: memory stays flat
    whatever the number of jobs."""
    write("[")
    sep = "\n"
    for job in jobs:
        write(sep + json.dumps(job_dict(job, now, live), default=str))
        sep = ",\n"
    write("\n]\n" if sep == ",\n" else "]\n")


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

