"""`ftctl submit | status | show | models | cancel | retry | promote | reject | wait`: the jobs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftctl.controller.cli.app import (DURATION, EXIT_FAILED, EXIT_OK, PHONE_REGION_HELP, _job_id, api, app, die,
                                      duration, emit_json, note, out, stdout_is_terminal)
from ftctl.controller.ledger.closing import header_lines


# -- submit ------------------------------------------------------------------------


def _parse_hp(values: list[str]) -> dict[str, bool | int | float | str]:
    """KEY=VALUE pairs: integers, numbers, true/false, anything else as text
    (e.g. training_method=dpo); the provider's schema is checked at submit."""
    out: dict[str, bool | int | float | str] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            die(f"--hp {item!r}: expected KEY=VALUE, e.g. training_steps=10")
        if raw.lower() in ("true", "false"):
            out[key] = raw.lower() == "true"
            continue
        try:
            out[key] = int(raw)
        except ValueError:
            try:
                out[key] = float(raw)
            except ValueError:
                out[key] = raw
    return out


@app.command()
def submit(
    agents: Annotated[Optional[list[str]], typer.Argument(metavar="AGENT", help="agents from controller.toml")] = None,
    all_agents: Annotated[bool, typer.Option("--all", help="every agent in controller.toml")] = False,
    agent: Annotated[Optional[str], typer.Option("--agent", help="ad hoc: the agent's name")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="ad hoc: the training file")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="ad hoc: the base model")] = None,
    provider: Annotated[Optional[str], typer.Option("--provider", help="ad hoc: a provider from the config")] = None,
    hp: Annotated[Optional[list[str]], typer.Option("--hp", help="ad hoc: a hyperparameter KEY=VALUE")] = None,
    force: Annotated[bool, typer.Option("--force", help="submit even if the same job exists")] = False,
    allow_pii: Annotated[bool, typer.Option("--allow-pii", help="submit data that holds personal data (a secret "
                                            "is never allowed)")] = False,
    phone_region: Annotated[Optional[str], typer.Option("--phone-region", help=PHONE_REGION_HELP)] = None,
    quote: Annotated[bool, typer.Option("--quote", help="also ask the provider for its own quote")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check, estimate and store `prepared` jobs from the config's agents, or one ad hoc job."""
    adhoc = None
    if any(v is not None for v in (agent, file, model, provider)) or hp:
        adhoc = {"agent": agent, "file": file, "model": model, "provider": provider,
                 "hyperparameters": _parse_hp(hp or [])}
    with api() as ft:
        results = ft.submit(agents or [], all_agents=all_agents, adhoc=adhoc, force=force, allow_pii=allow_pii,
                            quote=quote, phone_region=phone_region)
    [note(f"warning: {w}") for w in dict.fromkeys(w for r in results for w in r.warnings)]  # what ends soon
    if as_json:
        emit_json([r.as_dict() for r in results])
        return
    for r in results:
        if r.created:
            cost = f", estimate ${r.estimated_cost:,.2f}" if r.estimated_cost is not None else ""
            more = f" ({r.note})" if r.note else ""
            out.print(f"submitted job {r.job_id} ({r.agent} on {r.provider}, {r.model}{cost}): prepared{more}",
                      markup=False)
        else:
            out.print(f"skipped {r.agent}: {r.note}", markup=False)


# -- read commands -------------------------------------------------------------------

STATES = ("prepared", "queued", "running", "succeeded", "failed", "cancelled")
FINISHED_SHOWN = 50


class Output(str, Enum):
    table = "table"
    wide = "wide"
    json = "json"
    name = "name"


def _listed(values: Optional[list[str]], option: str, known: tuple[str, ...] | None = None) -> list[str] | None:
    """Repeated or comma-separated values (--state queued,running), checked."""
    if not values:
        return None
    found = [v.strip() for value in values for v in value.split(",") if v.strip()]
    for v in found:
        if known is not None and v not in known:
            die(f"{option}: unknown value {v!r} (one of {', '.join(known)})")
    return found


def _print_jobs(found, fmt: str, no_headers: bool, *, title: str | None = None) -> int:
    """One listing in `fmt`; returns the jobs printed. A Rich table only on a
    terminal and up to RICH_MAX_ROWS jobs; else plain columns, streamed."""
    import sys
    from itertools import chain, islice

    from ftctl.controller.cli.views import COLUMNS, RICH_MAX_ROWS, WIDE_COLUMNS, cells, json_rows, plain

    write = sys.stdout.write
    if fmt == "json":
        json_rows(found.rows, found.now, found.live, write)
        return -1
    if fmt == "name":
        n = 0
        for job in found.rows:
            write(f"job/{job.id}\n")
            n += 1
        return n
    wide = fmt == "wide"
    headers = WIDE_COLUMNS if wide else COLUMNS
    rows = (cells(j, found.now, found.live, wide) for j in found.rows)
    first = list(islice(rows, RICH_MAX_ROWS + 1))
    if stdout_is_terminal() and len(first) <= RICH_MAX_ROWS:
        if first:
            from ftctl.controller.cli.views import rich_table

            out.print(rich_table(first, headers, title=title, no_headers=no_headers))
        return len(first)
    if title:
        write(title + "\n")
    return plain(chain(first, rows), headers, write, no_headers=no_headers)


@app.command()
def status(
    output: Annotated[Output, typer.Option("--output", "-o", "--format", help="table, wide, json or name "
                                           "(job/ID a line)")] = Output.table,
    as_json: Annotated[bool, typer.Option("--json", help="same as -o json")] = False,
    no_headers: Annotated[bool, typer.Option("--no-headers", help="no header line")] = False,
    state: Annotated[Optional[list[str]], typer.Option("--state", help="only jobs in these states "
                                                       "(repeat it, or a,b)")] = None,
    provider: Annotated[Optional[list[str]], typer.Option("--provider", help="only jobs on these providers")] = None,
    agent: Annotated[Optional[list[str]], typer.Option("--agent", help="only these agents' jobs")] = None,
    active: Annotated[bool, typer.Option("--active", help="only jobs that are not finished")] = False,
    all_jobs: Annotated[bool, typer.Option("--all", "-A", help="every finished job too")] = False,
    limit: Annotated[int, typer.Option("--limit", min=0, help="finished jobs shown, the last to finish")]
    = FINISHED_SHOWN,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="again every --interval until Ctrl-C: in place on "
                                        "a terminal, a snapshot each time in a pipe")] = False,
    interval: Annotated[float, typer.Option("--interval", parser=duration(0.2), metavar=DURATION,
                                            help="time between refreshes, e.g. 2s, 500ms")] = "2s",
) -> None:
    """Every unfinished job and the last 50 finished: state, attempt, age, cost, why it waits (or its model)."""
    fmt = "json" if as_json else output.value
    states = _listed(state, "--state", STATES)
    finished = 0 if active else (None if all_jobs else limit)
    query = dict(states=states, agents=_listed(agent, "--agent"), providers=_listed(provider, "--provider"),
                 finished=finished)
    if watch:
        if fmt in ("json", "name"):
            die(f"--watch and -o {fmt} do not go together")
        from ftctl.controller.cli.watch import watch as watch_status

        watch_status(query, fmt, no_headers, interval, _print_jobs)
        return
    with api() as ft:
        [note(f"warning: {w}") for w in header_lines(ft.config, query["agents"])]  # what ends soon
        found = ft.listing(**query)
        shown = _print_jobs(found, fmt, no_headers)
        if fmt in ("json", "name"):
            return
        if shown == 0:
            note("no jobs" + (" match" if any(query[k] for k in ("states", "agents", "providers")) else ""))
        if found.hidden:
            note(f"{found.hidden:,} older finished job{'s' if found.hidden != 1 else ''} not shown "
                 f"(--all shows every job, --limit N the last N)")
        if shown and any(s not in ("succeeded", "failed", "cancelled") for s in states or STATES):
            note(daemon_line(ft))
        owed = ft.undelivered()
        if owed["pending"] or owed["gave_up"]:
            from ftctl.controller.records import undelivered_text

            note(undelivered_text(owed, found.now, daemon=bool(ft.daemon())))


class ModelOutput(str, Enum):
    table = "table"
    wide = "wide"
    json = "json"
    name = "name"
    toml = "toml"
    env = "env"


@app.command()
def models(
    output: Annotated[ModelOutput, typer.Option("--output", "-o", "--format", help="table, wide, json, name (the "
                                                "model ids), toml or env")] = ModelOutput.table,
    as_json: Annotated[bool, typer.Option("--json", help="same as -o json")] = False,
    no_headers: Annotated[bool, typer.Option("--no-headers", help="no header line")] = False,
    agent: Annotated[Optional[list[str]], typer.Option("--agent", help="only these agents")] = None,
    provider: Annotated[Optional[list[str]], typer.Option("--provider", help="only models from these "
                                                          "providers")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="every succeeded job's model with its promotion "
                                           "(candidates, rejected ...), not only the promoted ones")] = False,
) -> None:
    """Each agent's newest promoted model id, ready to paste into its config."""
    import sys

    from ftctl.controller.cli.views import models_text, plain

    fmt = "json" if as_json else output.value
    agents, providers = _listed(agent, "--agent"), _listed(provider, "--provider")
    if show_all:
        if fmt in ("toml", "env"):
            die(f"--all lists every model with its promotion: use -o table, wide, json or name, not -o {fmt}")
        with api() as ft:
            every = ft.all_models(agents=agents, providers=providers)
        if fmt == "json":
            emit_json(every)
            return
        if fmt == "name":
            for r in every:
                print(r["model"])
            return
        if not every:
            note("no succeeded jobs yet")
            return
        headers = ("AGENT", "JOB", "PROMOTION", "FINE-TUNED MODEL")
        rows = [[r["agent"], str(r["job_id"]), r["promotion"] or "-", r["model"] or "-"] for r in every]
    else:
        with api() as ft:
            found = ft.model_rows(agents=agents, providers=providers)
            if fmt == "json":  # an array of model records, as --all prints them
                emit_json(ft.model_records(found))
                return
        if fmt in ("toml", "env"):
            print(models_text({m.agent: m.model for m in found}, fmt))
            return
        if fmt == "name":
            for m in found:
                print(m.model)
            return
        if not found:
            note("no promoted models yet (`ftctl models --all` shows candidates too)")
            return
        wide = fmt == "wide"
        headers = (("AGENT", "PROVIDER", "JOB", "PROMOTED", "FINE-TUNED MODEL") if wide
                   else ("AGENT", "FINE-TUNED MODEL"))
        rows = [[m.agent, m.provider, str(m.job_id), f"{m.finished_at:%Y-%m-%d %H:%M:%S}", m.model] if wide
                else [m.agent, m.model] for m in found]
    if stdout_is_terminal():
        from ftctl.controller.cli.views import rich_table

        out.print(rich_table(rows, headers, no_headers=no_headers))
    else:
        plain(rows, headers, sys.stdout.write, no_headers=no_headers)


class ShowOutput(str, Enum):
    text = "text"
    json = "json"


@app.command()
def show(
    job: Annotated[str, typer.Argument(metavar="JOB", help="job id (3, or job/3)")],
    output: Annotated[Optional[ShowOutput], typer.Option("--output", "-o", help="text or json")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="same as -o json")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="the examples where the candidate did worse than the "
                                       "comparison: prompt, both answers, both scores")] = False,
) -> None:
    """A job and its full transition history."""
    import sys

    from ftctl.controller.cli.views import HISTORY_COLUMNS, criteria_lines, curve_line, diff_lines, \
        evaluation_text, history_rows, plain, show_fields

    with api() as ft:
        d = ft.show(_job_id(job), diff=diff)
    if diff and not d.get("evaluation"):
        die(f"show --diff: job {d['job_id']} has no evaluation")
    if as_json or output == ShowOutput.json:
        emit_json(d)
        return
    fields = show_fields(d)
    if d.get("evaluation"):
        fields.append(("evaluation", evaluation_text(d["evaluation"])))
        fields += [("criterion", text) for text in criteria_lines(d["evaluation"])]
        if diff:
            fields += [("diff", text) for text in diff_lines(d["evaluation"])]
    rows = history_rows(d["events"])
    if stdout_is_terminal():
        from rich.markup import escape

        from ftctl.controller.cli.views import rich_table

        for key, text in fields:
            out.print(f"[bold]{key:>17}[/]  {escape(text)}")
        out.print(rich_table(rows, HISTORY_COLUMNS, title="history"))
    else:  # a pipe or a log: plain lines and columns, no box characters
        write = sys.stdout.write
        for key, text in fields:
            write(f"{key:>17}  {text}\n")
        write("\nhistory\n")
        plain(rows, HISTORY_COLUMNS, write)
    if d["training"]:
        for name in ("train_loss", "valid_loss"):
            line = curve_line(name, d["training"][name])
            if line:
                (out.print(line, markup=False, highlight=False) if stdout_is_terminal() else print(line))


def daemon_line(ft) -> str:
    """`daemon: running (...)`, with the leader and its standbys where known."""
    from ftctl.controller.cli.views import age_text
    from ftctl.models import utcnow

    holder = ft.daemon()
    if not holder:
        return "daemon: not running: nothing moves until `ftctl daemon` (or the systemd unit) runs"
    seen = ft.daemons()
    leader, standbys = seen["leader"], seen["standbys"]
    text = f"daemon: running ({holder})"
    if leader is not None:
        text = (f"daemon: running (leader host {leader['host']} pid {leader['pid']} since "
                f"{leader['since'].replace('T', ' ').rstrip('Z')} UTC, epoch {leader['epoch']})")
    if standbys:
        now = utcnow()

        def ago(at: str) -> str:
            from datetime import datetime

            return age_text((now - datetime.fromisoformat(at.rstrip("Z"))).total_seconds())

        text += "; standing by: " + ", ".join(f"host {s['host']} pid {s['pid']} (heartbeat {ago(s['heartbeat_at'])} "
                                              f"ago)" for s in standbys)
    return text


# -- write commands ---------------------------------------------------------------------


@app.command()
def cancel(job: Annotated[str, typer.Argument(metavar="JOB", help="job id (3, or job/3)")]) -> None:
    """Cancel a job (at the provider too)."""
    with api() as ft:
        done = ft.cancel(_job_id(job))
    message = f"job {done.job['job_id']} cancelled"
    if done.provider_status:
        message += f"; provider job {done.job['provider_job_id']} is {done.provider_status}"
    elif done.provider_error:
        message += f"; the daemon will cancel it at the provider ({done.provider_error})"
    elif done.job["cancel_pending"]:
        message += "; the daemon will cancel it at the provider"
    out.print(message, markup=False)


@app.command()
def promote(job: Annotated[str, typer.Argument(metavar="JOB", help="job id (3, or job/3)")]) -> None:
    """Make a succeeded job's model its agent's, overriding the evaluation gate (recorded in its history)."""
    with api() as ft:
        row = ft.promote(_job_id(job))
    out.print(f"job {row['job_id']} ({row['agent']}): {row['fine_tuned_model']} promoted", markup=False)


@app.command()
def reject(job: Annotated[str, typer.Argument(metavar="JOB", help="job id (3, or job/3)")]) -> None:
    """Never deliver a succeeded job's model, overriding the evaluation gate (recorded in its history)."""
    with api() as ft:
        row = ft.reject(_job_id(job))
    out.print(f"job {row['job_id']} ({row['agent']}): {row['fine_tuned_model']} rejected", markup=False)


@app.command()
def retry(job: Annotated[str, typer.Argument(metavar="JOB", help="job id (3, or job/3)")]) -> None:
    """Put a failed or cancelled job back to `prepared`, with fresh attempts."""
    with api() as ft:
        row = ft.retry(_job_id(job))
    out.print(f"job {row['job_id']} is prepared again (attempts reset)")


@app.command()
def wait(
    jobs: Annotated[list[str], typer.Argument(metavar="JOB", help="job ids")],
    timeout: Annotated[Optional[float], typer.Option("--timeout", parser=duration(0.0, 365 * 86400.0),
                                                     metavar=DURATION, help="give up after this long, e.g. 2h")] = None,
    interval: Annotated[float, typer.Option("--interval", parser=duration(0.1), metavar=DURATION,
                                            help="time between looks, e.g. 5s")] = "5s",
) -> None:
    """Block until the jobs are finished (and their models promoted or rejected); exit 0 only if all succeeded
    (1 if not, 5 on timeout)."""
    ids = [_job_id(j) for j in jobs]
    limit = timeout
    with api() as ft:
        def moving(j: dict) -> bool:  # what only a daemon moves on: unfinished jobs, models still at the gate
            return (j["state"] not in ("succeeded", "failed", "cancelled")
                    or j["promotion"] in ("candidate", "evaluating"))

        waiting = [i for i in ids if moving(ft.job(i))]
        if waiting and ft.daemon() is None:
            note(f"ftctl: note: no daemon drives {ft.config.database_url.split('@')[-1]}: job"
                 f"{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))} will not move until "
                 f"`ftctl daemon` (or the systemd unit) runs")
        rows = ft.wait(ids, timeout=limit, interval=interval)
    for r in rows:
        detail = r["reason"] or ""
        if r["state"] == "succeeded":
            detail = f"{r['fine_tuned_model']} ({r['promotion']})"
        print(f"job {r['job_id']} ({r['agent']}): {r['state']} {detail}".rstrip())
    raise typer.Exit(EXIT_OK if all(r["state"] == "succeeded" for r in rows) else EXIT_FAILED)
