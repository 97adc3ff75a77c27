"""`ftctl submit | status | show | models | cancel | retry | promote | reject | wait`: the jobs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from rich.markup import escape

from ftctl.controller.cli.app import EXIT_FAILED, EXIT_OK, PHONE_REGION_HELP, _job_id, api, app, die, emit_json, out


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
    agents: Annotated[Optional[list[str]], typer.Argument(help="agents from controller.toml")] = None,
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
    if as_json:
        emit_json([r.as_dict() for r in results])
        return
    for r in results:
        if r.created:
            cost = f", estimate ${r.estimated_cost:,.2f}" if r.estimated_cost is not None else ""
            note = f" ({r.note})" if r.note else ""
            out.print(f"submitted job {r.job_id} ({r.agent} on {r.provider}, {r.model}{cost}): prepared{note}",
                      markup=False)
        else:
            out.print(f"skipped {r.agent}: {r.note}", markup=False)


# -- read commands -------------------------------------------------------------------


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    agent: Annotated[Optional[str], typer.Option("--agent", help="only this agent's jobs")] = None,
    active: Annotated[bool, typer.Option("--active", help="only jobs that are not finished")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="refresh in place until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option("--interval", help="seconds between refreshes", min=0.2)] = 2.0,
) -> None:
    """One line a job: state, attempt, age, and why it waits (or its model)."""
    from ftctl.controller.engine.states import TERMINAL
    from ftctl.controller.cli.views import status_table
    from ftctl.models import utcnow
    from ftctl.records import job_dict, undelivered_text

    if watch:
        if as_json:
            die("--watch and --json do not go together")
        import time

        from rich.live import Live as LiveDisplay

        def table(title: str):
            with api() as ft:
                return status_table(ft.jobs(agent=agent, active=active), title=title, live=ft.live())

        with LiveDisplay(table("ftctl status"), console=out, auto_refresh=False) as display:
            try:
                while True:
                    time.sleep(interval)
                    display.update(table(f"ftctl status  {utcnow():%H:%M:%S} UTC"), refresh=True)
            except KeyboardInterrupt:
                return
    with api() as ft:
        jobs, live, now = ft.jobs(agent=agent, active=active), ft.live(), utcnow()
        if as_json:
            emit_json([job_dict(j, now, live) for j in jobs])
            return
        if not jobs:
            out.print("no jobs")
            return
        out.print(status_table(jobs, now, live=live))
        holder = ft.daemon()
        if any(j.state not in TERMINAL for j in jobs):
            out.print(daemon_line(ft), markup=False)
        owed = ft.undelivered()
        if owed["pending"] or owed["gave_up"]:
            out.print(undelivered_text(owed, now, daemon=bool(holder)), markup=False)


class ModelFormat(str, Enum):
    table = "table"
    json = "json"
    toml = "toml"
    env = "env"


@app.command()
def models(
    fmt: Annotated[ModelFormat, typer.Option("--format", help="table, json, toml or env")] = ModelFormat.table,
    as_json: Annotated[bool, typer.Option("--json", help="same as --format json")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="every succeeded job's model with its promotion "
                                           "(candidates, rejected ...), not only the promoted ones")] = False,
) -> None:
    """Each agent's newest promoted model id, ready to paste into its config."""
    from rich.table import Table

    from ftctl.controller.cli.views import models_text

    fmt_name = "json" if as_json else fmt.value
    if show_all:
        if fmt_name not in ("table", "json"):
            die(f"--all lists every model with its promotion: use the table or --json, not --format {fmt_name}")
        with api() as ft:
            rows = ft.all_models()
        if fmt_name == "json":
            emit_json(rows)
            return
        table = Table()
        for col in ("AGENT", "JOB", "PROMOTION", "FINE-TUNED MODEL"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["agent"], str(r["job_id"]), r["promotion"] or "-", r["model"] or "")
        out.print(table if rows else "no succeeded jobs yet")
        return
    with api() as ft:
        found = ft.models()
    if fmt_name == "table":
        table = Table()
        table.add_column("AGENT")
        table.add_column("FINE-TUNED MODEL")
        for a, m in found.items():
            table.add_row(a, m)
        out.print(table if found else "no promoted models yet (`ftctl models --all` shows candidates too)")
        return
    print(models_text(found, fmt_name))


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="job id")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A job and its full transition history."""
    from rich.table import Table

    with api() as ft:
        d = ft.show(_job_id(job))
    if as_json:
        emit_json(d)
        return
    for key in ("id", "agent", "provider", "model", "base_model", "upstream_job_ids", "state", "attempt", "reason",
                "fine_tuned_model", "promotion", "provider_job_id", "provider_status", "training_file",
                "training_files", "hyperparameters", "estimated_cost", "actual_cost", "last_error", "not_before",
                "created_at", "updated_at"):
        if d[key] not in (None, "", {}, []):
            out.print(f"[bold]{key:>17}[/]  {escape(str(d[key]))}")
    if d.get("evaluation"):
        from ftctl.controller.cli.views import evaluation_text

        out.print(f"[bold]{'evaluation':>17}[/]  {escape(evaluation_text(d['evaluation']))}")
    table = Table(title="history", title_justify="left")
    for col in ("AT", "FROM", "TO", "TRIGGER", "PROVIDER", "REASON"):
        table.add_column(col)
    for e in d["events"]:
        table.add_row(e["at"].replace("T", " ").rstrip("Z"), e["from"] or "-", e["to"], e["trigger"],
                      e["provider_status"] or "", escape(e["reason"] or ""))
    out.print(table)
    if d["training"]:
        from ftctl.controller.cli.views import curve_line

        for name in ("train_loss", "valid_loss"):
            line = curve_line(name, d["training"][name])
            if line:
                out.print(line, markup=False, highlight=False)


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
def cancel(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Cancel a job (at the provider too)."""
    with api() as ft:
        done = ft.cancel(_job_id(job))
    message = f"job {done.job['id']} cancelled"
    if done.provider_status:
        message += f"; provider job {done.job['provider_job_id']} is {done.provider_status}"
    elif done.provider_error:
        message += f"; the daemon will cancel it at the provider ({done.provider_error})"
    elif done.job["cancel_pending"]:
        message += "; the daemon will cancel it at the provider"
    out.print(message, markup=False)


@app.command()
def promote(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Make a succeeded job's model its agent's, overriding the evaluation gate (recorded in its history)."""
    with api() as ft:
        row = ft.promote(_job_id(job))
    out.print(f"job {row['id']} ({row['agent']}): {row['fine_tuned_model']} promoted", markup=False)


@app.command()
def reject(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Never deliver a succeeded job's model, overriding the evaluation gate (recorded in its history)."""
    with api() as ft:
        row = ft.reject(_job_id(job))
    out.print(f"job {row['id']} ({row['agent']}): {row['fine_tuned_model']} rejected", markup=False)


@app.command()
def retry(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Put a failed or cancelled job back to `prepared`, with fresh attempts."""
    with api() as ft:
        row = ft.retry(_job_id(job))
    out.print(f"job {row['id']} is prepared again (attempts reset)")


@app.command()
def wait(
    jobs: Annotated[list[str], typer.Argument(help="job ids")],
    timeout: Annotated[Optional[str], typer.Option("--timeout", help="give up after this long, e.g. 2h")] = None,
    interval: Annotated[float, typer.Option("--interval", help="seconds between looks", min=0.1)] = 5.0,
) -> None:
    """Block until the jobs are finished (and their models promoted or rejected); exit 0 only if all succeeded
    (1 if not, 5 on timeout)."""
    from ftctl.controller.config import parse_duration

    ids = [_job_id(j) for j in jobs]
    try:
        limit = parse_duration(timeout) if timeout else None
    except ValueError as exc:
        die(f"--timeout: {exc}")
    with api() as ft:
        rows = ft.wait(ids, timeout=limit, interval=interval)
    for r in rows:
        detail = r["reason"] or ""
        if r["state"] == "succeeded":
            detail = f"{r['fine_tuned_model']} ({r['promotion']})"
        out.print(f"job {r['id']} ({r['agent']}): {r['state']} {detail}".rstrip(), markup=False)
    raise typer.Exit(EXIT_OK if all(r["state"] == "succeeded" for r in rows) else EXIT_FAILED)
