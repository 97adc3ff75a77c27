"""`ftctl submit | status | show | models | cancel | retry | wait`: the jobs."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ftctl.controller.cli.app import (EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_TIMEOUT, PHONE_REGION_HELP, _job_id,
                                      app, die, emit_json, get_config, open_store, out, read_store)


# -- submit ------------------------------------------------------------------------


def _parse_hp(values: list[str]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            die(f"--hp {item!r}: expected KEY=VALUE, e.g. training_steps=10")
        try:
            out[key] = int(raw)
        except ValueError:
            try:
                out[key] = float(raw)
            except ValueError:
                die(f"--hp {item!r}: {raw!r} is not a number")
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
    from ftctl.controller.preflight.submit import SubmitError, plan_submissions, store_submissions

    config = get_config()
    adhoc = any(v is not None for v in (agent, file, model, provider)) or bool(hp)
    try:
        plans = plan_submissions(config, agents or [], all_agents=all_agents, adhoc=adhoc, agent=agent,
                                 file=file, model=model, provider=provider,
                                 hyperparameters=_parse_hp(hp or []), allow_pii=allow_pii, quote=quote,
                                 phone_region=phone_region)
    except SubmitError as exc:
        die(str(exc))
    store = open_store(config)
    try:
        results = store_submissions(store, plans, force=force)
    finally:
        store.close()
    if as_json:
        emit_json([r.as_dict() for r in results])
        return
    for r in results:
        if r.created:
            cost = f", estimate ${r.estimated_cost:,.2f}" if r.estimated_cost is not None else ""
            out.print(f"submitted job {r.job_id} ({r.agent} on {r.provider}, {r.model}{cost}): prepared",
                      markup=False)
        else:
            out.print(f"skipped {r.agent}: {r.note}")


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
    from ftctl.controller.cli.views import job_dict, live_facts, status_table
    from ftctl.controller.engine.reasons import Live
    from ftctl.models import utcnow

    config = get_config()

    def load():
        store = read_store(config)
        if store is None:
            return [], Live()
        rows = store.list_jobs(agent=agent)
        live = live_facts(store, config)
        store.close()
        return ([j for j in rows if j.state not in TERMINAL] if active else rows), live

    if watch:
        if as_json:
            die("--watch and --json do not go together")
        import time

        from rich.live import Live

        from rich.live import Live as LiveDisplay

        def table(title: str):
            jobs, live = load()
            return status_table(jobs, title=title, live=live)

        with LiveDisplay(table("ftctl status"), console=out, auto_refresh=False) as display:
            try:
                while True:
                    time.sleep(interval)
                    display.update(table(f"ftctl status  {utcnow():%H:%M:%S} UTC"), refresh=True)
            except KeyboardInterrupt:
                return
    jobs, live = load()
    now = utcnow()
    if as_json:
        emit_json([job_dict(j, now, live) for j in jobs])
        return
    if not jobs:
        out.print("no jobs")
        return
    out.print(status_table(jobs, now, live=live))
    if any(j.state not in TERMINAL for j in jobs):
        store = read_store(config)
        holder = store.daemon_holder() if store is not None else None
        out.print(f"daemon: running ({holder})" if holder else
                  "daemon: not running: nothing moves until `ftctl daemon` (or the systemd unit) runs",
                  markup=False)


class ModelFormat(str, Enum):
    table = "table"
    json = "json"
    toml = "toml"
    env = "env"


@app.command()
def models(
    fmt: Annotated[ModelFormat, typer.Option("--format", help="table, json, toml or env")] = ModelFormat.table,
    as_json: Annotated[bool, typer.Option("--json", help="same as --format json")] = False,
) -> None:
    """Each agent's latest fine-tuned model id, ready to paste into its config."""
    from ftctl.controller.cli.views import latest_models, models_text

    config = get_config()
    store = read_store(config)
    found = latest_models(store.list_jobs(states=["succeeded"])) if store else {}
    fmt_name = "json" if as_json else fmt.value
    if fmt_name == "table":
        from rich.table import Table

        table = Table()
        table.add_column("AGENT")
        table.add_column("FINE-TUNED MODEL")
        for a, m in found.items():
            table.add_row(a, m)
        out.print(table if found else "no succeeded jobs yet")
        return
    print(models_text(found, fmt_name))


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="job id")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A job and its full transition history."""
    from rich.table import Table

    from ftctl.controller.cli.views import event_dict, job_dict

    job_id = _job_id(job)
    config = get_config()
    store = read_store(config)
    row = store.get_job(job_id) if store else None
    if row is None:
        die(f"no job {job_id} (see `ftctl status`)")
    events = store.events(job_id)
    attempts = store.attempts(job_id)
    if as_json:
        data = job_dict(row)
        data["events"] = [event_dict(e) for e in events]
        data["attempts"] = [{"number": a.number, "client_token": a.client_token,
                             "provider_job_id": a.provider_job_id, "outcome": a.outcome, "counted": a.counted,
                             "submitted_at": a.submitted_at.isoformat() + "Z"} for a in attempts]
        emit_json(data)
        return
    d = job_dict(row)
    for key in ("id", "agent", "provider", "model", "state", "attempt", "reason", "fine_tuned_model",
                "provider_job_id", "provider_status", "training_file", "hyperparameters", "estimated_cost",
                "actual_cost", "last_error", "not_before", "created_at", "updated_at"):
        if d[key] not in (None, "", {}):
            out.print(f"[bold]{key:>17}[/]  {d[key]}")
    table = Table(title="history", title_justify="left")
    for col in ("AT", "FROM", "TO", "TRIGGER", "PROVIDER", "REASON"):
        table.add_column(col)
    for e in events:
        table.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S"), e.from_state or "-", e.to_state, e.trigger,
                      e.provider_status or "", e.reason or "")
    out.print(table)


# -- write commands ---------------------------------------------------------------------


def _user_move(job: str, trigger: str) -> Any:
    from ftctl.controller.engine.jobs import JobNotFound, StaleState, user_transition
    from ftctl.controller.engine.states import InvalidTransition

    job_id = _job_id(job)
    config = get_config()
    store = read_store(config)
    if store is None:
        die(f"no job {job_id} (see `ftctl status`)")
    try:
        current = store.get_job(job_id)
        if current is not None and trigger == "retry" and current.cancel_pending:
            die(f"job {job_id}: its cancellation at the provider is still pending; retry after the next tick",
                EXIT_REFUSED)
        _, row = user_transition(store, job_id, trigger)
    except JobNotFound:
        die(f"no job {job_id} (see `ftctl status`)")
    except InvalidTransition as exc:
        die(f"job {job_id}: {exc}", EXIT_REFUSED)
    except StaleState:
        die(f"job {job_id} changed while this command ran; look at `ftctl show {job_id}` and try again",
            EXIT_REFUSED)
    return config, store, row


@app.command()
def cancel(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Cancel a job (at the provider too)."""
    config, store, row = _user_move(job, "cancel")
    message = f"job {row.id} cancelled"
    if row.cancel_pending and row.provider_job_id and row.provider in config.providers:
        from ftctl.controller.engine.jobs import cancelled_at_provider
        from ftctl.providers import build_provider
        from ftctl.providers.base import ProviderError

        try:
            provider = build_provider(row.provider, config.providers[row.provider], config.provider_env())
            try:
                pj = provider.cancel_job(row.provider_job_id)
            finally:
                provider.close()
            cancelled_at_provider(store, row.id, pj.id, pj.raw_status)
            message += f"; provider job {row.provider_job_id} is {pj.raw_status}"
        except ProviderError as exc:
            message += f"; the daemon will cancel it at the provider ({exc.kind} error: {exc.message})"
    elif row.cancel_pending:
        message += "; the daemon will cancel it at the provider"
    store.close()
    out.print(message)


@app.command()
def retry(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Put a failed or cancelled job back to `prepared`, with fresh attempts."""
    _, store, row = _user_move(job, "retry")
    store.close()
    out.print(f"job {row.id} is prepared again (attempts reset)")


@app.command()
def wait(
    jobs: Annotated[list[str], typer.Argument(help="job ids")],
    timeout: Annotated[Optional[str], typer.Option("--timeout", help="give up after this long, e.g. 2h")] = None,
    interval: Annotated[float, typer.Option("--interval", help="seconds between looks", min=0.1)] = 5.0,
) -> None:
    """Block until the jobs are finished; exit 0 only if all succeeded (1 if not, 5 on timeout)."""
    import time

    from ftctl.controller.config import parse_duration
    from ftctl.controller.engine.reasons import render
    from ftctl.controller.engine.states import TERMINAL

    ids = [_job_id(j) for j in jobs]
    try:
        limit = parse_duration(timeout) if timeout else None
    except ValueError as exc:
        die(f"--timeout: {exc}")
    config = get_config()
    store = read_store(config)
    missing = [i for i in ids if store is None or store.get_job(i) is None]
    if missing:
        die(f"no job {missing[0]} (see `ftctl status`)")
    deadline = None if limit is None else time.monotonic() + limit
    while True:
        rows = [store.get_job(i) for i in ids]
        if all(r.state in TERMINAL for r in rows):
            break
        if deadline is not None and time.monotonic() >= deadline:
            waiting = ", ".join(f"{r.id} {r.state}" for r in rows if r.state not in TERMINAL)
            print(f"ftctl: error: timed out after {timeout} waiting for {waiting}", file=sys.stderr)
            raise typer.Exit(EXIT_TIMEOUT)
        time.sleep(interval)
    for r in rows:
        detail = r.fine_tuned_model if r.state == "succeeded" else (render(r.reason_code, r.reason_args) or "")
        out.print(f"job {r.id} ({r.agent}): {r.state} {detail}".rstrip(), markup=False)
    raise typer.Exit(EXIT_OK if all(r.state == "succeeded" for r in rows) else EXIT_FAILED)
