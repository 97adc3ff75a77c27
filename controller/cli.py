"""The `ftctl` command line.

Read commands (status, show, models) open only the database: no provider
module is imported and nothing goes over the network.

Exit codes: 0 ok; 1 a job did not succeed (`wait`-like outcomes) or the
daemon failed; 2 bad input (config, arguments, unknown job or agent,
missing file); 3 refused (a transition not allowed, a daemon already
running); 4 the database cannot be used.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console

from controller.config import Config, ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_REFUSED, EXIT_DATABASE, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5

app = typer.Typer(
    name="ftctl",
    help="Run LLM fine-tuning jobs on hosted providers as persistent state machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=False)
if not out.is_terminal:
    # piped or logged: never squeeze a reason or a model id into "…"
    out = Console(highlight=False, soft_wrap=False, width=240)


class State:
    config_path: Optional[str] = None
    log_level: Optional[str] = None


state = State()


def die(message: str, code: int = EXIT_INPUT) -> NoReturn:
    from controller.secrets import redact

    text = redact(str(message)).strip()
    first_line = text.splitlines()[0] if text else "error"
    print(f"ftctl: error: {first_line}", file=sys.stderr)
    raise typer.Exit(code)


def get_config() -> Config:
    try:
        return load_config(state.config_path)
    except ConfigError as exc:
        die(str(exc))


def open_store(config: Config, *, create: bool = True):
    from models import Store, StoreError

    try:
        return Store(config.database_url, create=create)
    except StoreError as exc:
        die(str(exc), EXIT_DATABASE if create else EXIT_INPUT)


def read_store(config: Config):
    """The store for a read command, or None when no database exists yet."""
    if config.sqlite_file is not None and not config.sqlite_file.exists():
        return None
    return open_store(config, create=False)


def setup_logging(config: Config | None) -> None:
    from controller.logs import configure

    level = state.log_level or (config.controller.log_level if config else "info")
    configure(level)


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


@app.callback()
def main_options(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="controller.toml to use "
                      "(default: $FTCTL_CONFIG, ./controller.toml, /etc/ftctl/controller.toml)")] = None,
    log_level: Annotated[Optional[str], typer.Option("--log-level", help="debug, info, warning or error")] = None,
) -> None:
    state.config_path = config
    if log_level is not None and log_level not in ("debug", "info", "warning", "error"):
        die(f"--log-level: {log_level!r} is not one of debug, info, warning, error")
    state.log_level = log_level


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
    allow_pii: Annotated[bool, typer.Option("--allow-pii", help="submit data that holds personal data")] = False,
    quote: Annotated[bool, typer.Option("--quote", help="also ask the provider for its own quote")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check, estimate and store `prepared` jobs from the config's agents, or one ad hoc job."""
    from controller.submit import SubmitError, plan_submissions, store_submissions

    config = get_config()
    adhoc = any(v is not None for v in (agent, file, model, provider)) or bool(hp)
    try:
        plans = plan_submissions(config, agents or [], all_agents=all_agents, adhoc=adhoc, agent=agent,
                                 file=file, model=model, provider=provider,
                                 hyperparameters=_parse_hp(hp or []), allow_pii=allow_pii, quote=quote)
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
    from controller.lifecycle import TERMINAL
    from controller.views import job_dict, status_table
    from models import utcnow

    config = get_config()

    def load():
        store = read_store(config)
        rows = [] if store is None else store.list_jobs(agent=agent)
        if store is not None:
            store.close()
        return [j for j in rows if j.state not in TERMINAL] if active else rows

    if watch:
        if as_json:
            die("--watch and --json do not go together")
        import time

        from rich.live import Live

        with Live(status_table(load(), title="ftctl status"), console=out, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(status_table(load(), title=f"ftctl status  {utcnow():%H:%M:%S} UTC"), refresh=True)
            except KeyboardInterrupt:
                return
    jobs = load()
    now = utcnow()
    if as_json:
        emit_json([job_dict(j, now) for j in jobs])
        return
    if not jobs:
        out.print("no jobs")
        return
    out.print(status_table(jobs, now))
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
    from controller.views import latest_models, models_text

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


def _job_id(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        die(f"job {value!r}: a job id is a number (see `ftctl status`)")


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="job id")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A job and its full transition history."""
    from rich.table import Table

    from controller.views import event_dict, job_dict

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


def _user_move(job: str, trigger: str, reason: str) -> Any:
    from controller.jobs import JobNotFound, StaleState, user_transition
    from controller.lifecycle import InvalidTransition

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
        _, row = user_transition(store, job_id, trigger, reason)
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
    config, store, row = _user_move(job, "cancel", "cancelled by the user")
    message = f"job {row.id} cancelled"
    if row.cancel_pending and row.provider_job_id and row.provider in config.providers:
        from controller.jobs import cancelled_at_provider
        from providers import build_provider
        from providers.base import ProviderError

        try:
            provider = build_provider(config, row.provider)
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
    _, store, row = _user_move(job, "retry", "retried by the user")
    store.close()
    out.print(f"job {row.id} is prepared again (attempts reset)")


# -- running the loop -----------------------------------------------------------------------


@app.command()
def tick(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One reconcile pass, then exit."""
    from controller.reconciler import Reconciler
    from models import LockHeld

    config = get_config()
    setup_logging(config)
    store = open_store(config)
    try:
        store.acquire_daemon_lock()
    except LockHeld as exc:
        store.close()
        die(f"{exc}; it reconciles already", EXIT_REFUSED)
    reconciler = Reconciler(config, store)
    try:
        result = reconciler.tick()
    finally:
        reconciler.close()
        store.close()
    if as_json:
        emit_json({"states": dict(result.states), "summary": result.summary()})
    else:
        out.print(result.summary())


@app.command()
def daemon(
    until_done: Annotated[bool, typer.Option("--until-done", help="exit 0 once every job is terminal")] = False,
) -> None:
    """Run the reconcile loop until SIGTERM/SIGINT."""
    from controller.daemon import Daemon
    from controller.metrics import MetricsUnavailable
    from models import LockHeld, StoreError

    config = get_config()
    setup_logging(config)
    try:
        code = Daemon(config, until_done=until_done).run()
    except LockHeld as exc:
        die(str(exc), EXIT_REFUSED)
    except StoreError as exc:
        die(str(exc), EXIT_DATABASE)
    except MetricsUnavailable as exc:
        die(str(exc), EXIT_INPUT)
    raise typer.Exit(code)


@app.command()
def demo(
    directory: Annotated[Optional[Path], typer.Option("--dir", help="keep the demo's files here")] = None,
    train_time: Annotated[float, typer.Option("--train-time", help="simulated seconds of training")] = 3.0,
) -> None:
    """Five agents on a simulated provider that allows 2 concurrent jobs."""
    from controller.demo import run_demo

    raise typer.Exit(run_demo(out, directory, train_time=train_time))


# the other commands register themselves on `app`
from controller import cli_ops, cli_preflight  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
