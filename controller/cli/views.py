"""How jobs are shown: plain aligned columns (off a terminal, or many rows),
a Rich table on a terminal, and `models` output. Rich is imported only for
a table on a terminal; the JSON shapes are ftctl.records."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from ftctl.models.schema import utcnow
from ftctl.records import job_dict, reason_text

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


def cost_text(job: Any) -> str:
    """The provider's figure once known, else our estimate (marked ~)."""
    if job.actual_cost is not None:
        return f"${job.actual_cost:,.2f}"
    if job.estimated_cost is not None:
        return f"~${job.estimated_cost:,.2f}"
    return "-"


def cells(job: Any, now: datetime, live: Any = None, wide: bool = False) -> list[str]:
    """One job's row; an empty value is "-", so the columns stay columns for awk."""
    detail = job.fine_tuned_model if job.state == "succeeded" else reason_text(job, live)
    row = [str(job.id), job.agent, job.provider, job.model, job.state, str(job.attempt),
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
