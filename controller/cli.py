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
from rich.markup import escape

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
    url = config.database_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
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


# -- preflight: data, tokens, cost ------------------------------------------------------


def maybe_config() -> Config | None:
    """The config when one is given or found; these commands also work without."""
    from controller.config import find_config

    try:
        find_config(state.config_path)
    except ConfigError:
        return None
    return get_config()


def _kind(config: Config | None, provider: Optional[str], model: Optional[str]) -> tuple[str, Optional[str]]:
    from controller.preflight import PreflightError, provider_kind

    try:
        return provider_kind(config, provider, model)
    except PreflightError as exc:
        die(str(exc))


def _lines_text(lines: list[int], line_count: int) -> str:
    shown = ", ".join(str(n) for n in lines)
    more = f" and {line_count - len(lines)} more" if line_count > len(lines) else ""
    return f"line{'s' if line_count > 1 else ''} {shown}{more}"


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="a JSONL training file")],
    provider: Annotated[Optional[str], typer.Option("--provider", help="a provider from the config, or a kind")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="count tokens with this model's tokenizer")] = None,
    allow_pii: Annotated[bool, typer.Option("--allow-pii", help="personal data is not a failure")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, help="processes counting tokens "
                                                "(default: all CPUs for files over 8 MB)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the full report")] = False,
) -> None:
    """Check a training file line by line (streamed); exit 0 only when clean."""
    from controller import preflight
    from controller.dataset import DESCRIPTIONS

    config = maybe_config()
    kind, _ = _kind(config, provider, model)
    try:
        result = preflight.run(file, kind=kind, model=model, config=config, need_estimate=False, jobs=jobs)
    except preflight.PreflightError as exc:
        die(str(exc))
    report = result.report
    clean = report.clean(allow_pii)
    if as_json:
        emit_json({**report.as_dict(), "clean": clean})
        raise typer.Exit(EXIT_OK if clean else EXIT_FAILED)
    out.print(f"{file}: {report.lines:,} lines, {report.examples:,} examples pass, "
              f"{report.problem_count:,} problem{'s' if report.problem_count != 1 else ''}", markup=False)
    for code, finding in sorted(report.problems.items(), key=lambda kv: kv[1].lines[:1]):
        out.print(f"  {DESCRIPTIONS.get(code, code):<40} {finding.count:>7,}  {_lines_text(finding.lines, finding.line_count)}"
                  f"  (first: {finding.first_message})", markup=False)
    if report.pii:
        parts = [f"{f.count:,} {'email address' if k == 'email' else 'phone number'}{'es' if k == 'email' and f.count > 1 else ('s' if f.count > 1 else '')} "
                 f"({_lines_text(f.lines, f.line_count)})" for k, f in report.pii.items()]
        out.print("personal data: " + "; ".join(parts), markup=False)
    stats = report.token_stats()
    if stats:
        out.print(f"tokens ({report.tokenizer}, {report.model}): {report.data_tokens:,} data tokens in "
                  f"{sum(report.token_histogram.values()):,} examples; per example min {stats['min']:,}, "
                  f"median {stats['median']:,}, max {stats['max']:,}", markup=False)
    elif not model:
        out.print("tokens: pass --model (and --provider) to count them with the provider's tokenizer")
    out.print("OK" if clean else "NOT OK: fix the lines above, or `ftctl prepare` a cleaned copy")
    raise typer.Exit(EXIT_OK if clean else EXIT_FAILED)


@app.command()
def estimate(
    file: Annotated[Path, typer.Argument(help="a JSONL training file")],
    provider: Annotated[str, typer.Option("--provider", help="a provider from the config, or a kind")],
    model: Annotated[str, typer.Option("--model")],
    epochs: Annotated[Optional[float], typer.Option("--epochs")] = None,
    training_steps: Annotated[Optional[int], typer.Option("--training-steps")] = None,
    no_quote: Annotated[bool, typer.Option("--no-quote", help="do not ask the provider for its own quote")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What training on FILE costs: tokens x epochs x price, and the provider's own quote."""
    from controller import preflight

    if epochs is not None and training_steps is not None:
        die("give --epochs or --training-steps, not both")
    config = maybe_config()
    kind, configured = _kind(config, provider, model)
    try:
        result = preflight.run(file, kind=kind, model=model, config=config, epochs=epochs,
                               training_steps=training_steps)
    except preflight.PreflightError as exc:
        die(str(exc))
    est, report = result.estimate, result.report
    quote_note = None
    if configured and not no_quote and kind in ("mistral", "simulated"):
        from providers.base import ProviderError

        hp = {"training_steps": training_steps} if training_steps else ({"epochs": epochs} if epochs else {})
        try:
            est.quote = preflight.quote(config, configured, file, model, hp)
        except ProviderError as exc:
            quote_note = f"the provider's quote failed ({exc.kind}: {exc.message}); using ours"
    if as_json:
        emit_json({**est.as_dict(), "file_problems": report.problem_count, "quote_error": quote_note})
        return
    lines = [
        f"{file}: {est.examples:,} examples, {est.data_tokens:,} data tokens ({report.tokenizer})",
        *[f"  {n}" for n in est.notes],
        f"  trained tokens: {est.trained_tokens:,}",
        f"  price: ${est.price.train_per_m:g} per million trained tokens, minimum ${est.price.min_fee:.2f} a job "
        f"({est.price.source})",
        f"  estimate: ${est.cost:,.2f}",
    ]
    if est.quote is not None:
        lines.append(f"  provider's quote: ${est.quote:,.2f}")
    if quote_note:
        lines.append(f"  {quote_note}")
    lines.append(f"total (the higher): ${est.total:,.2f}")
    if report.problem_count:
        lines.append(f"warning: the file has {report.problem_count:,} problems; see `ftctl validate {file}`")
    for line in lines:
        out.print(line, markup=False)


@app.command()
def prepare(
    source: Annotated[Path, typer.Argument(help="the raw JSONL file")],
    output: Annotated[Path, typer.Argument(help="where to write the provider-ready file")],
    max_examples: Annotated[Optional[int], typer.Option("--max-examples", min=1)] = None,
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="USD", min=0.01)] = None,
    strip_extra: Annotated[bool, typer.Option("--strip-extra", help="drop fields the provider rejects")] = False,
    scrub_pii: Annotated[bool, typer.Option("--scrub-pii", help="replace emails and phone numbers")] = False,
    seed: Annotated[int, typer.Option("--seed", help="the sample's seed")] = 0,
    provider: Annotated[Optional[str], typer.Option("--provider")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="count tokens and cost for this model")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, help="processes counting tokens")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write a provider-ready file: cleaned, optionally scrubbed, optionally a stratified sample."""
    from controller.preflight import default_jobs
    from controller.prepare import PrepareError
    from controller.prepare import prepare as run_prepare
    from controller.pricing import PriceUnknown, price_for
    from controller.tokens import TokenizerUnavailable, counter_for

    if not source.is_file():
        die(f"{source}: no such file")
    config = maybe_config()
    kind, _ = _kind(config, provider, model)
    counter = price = None
    if model:
        try:
            counter = counter_for(kind, model)
            price = price_for(kind, model, config.price_overrides if config else None)
        except (TokenizerUnavailable, PriceUnknown) as exc:
            die(str(exc))
    try:
        result = run_prepare(source, output, provider=kind, counter=counter, price=price, epochs=epochs,
                             max_examples=max_examples, max_cost=max_cost, strip_extra=strip_extra,
                             scrub_pii=scrub_pii, seed=seed,
                             jobs=jobs or (default_jobs() if source.stat().st_size > 8 * 2**20 else 1))
    except PrepareError as exc:
        die(str(exc))
    if as_json:
        emit_json(result.as_dict())
        return
    d = result.as_dict()
    out.print(f"wrote {output}: kept {result.kept:,} of {result.lines:,} lines (seed {seed})", markup=False)
    for reason, n in sorted(result.removed.items()):
        out.print(f"  removed {n:,}: {reason}", markup=False)
    if result.stripped:
        out.print("  stripped fields: " + ", ".join(f"{k} ({n:,})" for k, n in result.stripped.items()), markup=False)
    if result.unstripped_extra:
        out.print(f"  warning: {result.unstripped_extra:,} examples keep fields the provider rejects "
                  f"(--strip-extra removes them)", markup=False)
    if scrub_pii:
        out.print(f"  personal data replaced: {result.pii_replaced:,}", markup=False)
    if len(d["weight_share_in"]) > 1 or list(d["weight_share_in"]) != ["-"]:
        out.print("  weight share in -> out: " + ", ".join(
            f"{k}: {v:.1f}% -> {d['weight_share_out'].get(k, 0.0):.1f}%" for k, v in d["weight_share_in"].items()),
            markup=False)
    if len(d["source_agent_share_in"]) > 1 or list(d["source_agent_share_in"]) != ["-"]:
        out.print("  source agent share in -> out: " + ", ".join(
            f"{k}: {v:.1f}% -> {d['source_agent_share_out'].get(k, 0.0):.1f}%"
            for k, v in d["source_agent_share_in"].items()), markup=False)
    if result.cost is not None:
        out.print(f"  {result.data_tokens:,} data tokens; estimate ${result.cost:,.2f}", markup=False)


@app.command()
def budget(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Committed, spent and remaining against [budget] in controller.toml."""
    from datetime import timedelta

    from models import utcnow

    config = get_config()
    caps = config.budget
    store = read_store(config)
    now = utcnow()
    spent = store.spent_since(now - timedelta(seconds=caps.period)) if store else 0.0
    committed = store.committed() if store else 0.0
    waiting = [j for j in store.list_jobs(states=["prepared"])] if store else []
    over = [j for j in waiting if (j.reason or "").startswith("over budget")]
    remaining = None if caps.total is None else round(caps.total - spent - committed, 2)
    data = {"per_job_cap": caps.per_job, "total_cap": caps.total, "period_days": round(caps.period / 86400, 2),
            "spent": round(spent, 2), "committed": round(committed, 2), "remaining": remaining,
            "waiting_estimates": round(sum(j.estimated_cost or 0 for j in waiting), 2),
            "jobs_over_budget": [j.id for j in over]}
    if as_json:
        emit_json(data)
        return
    out.print(f"period: the last {data['period_days']:g} days", markup=False)
    out.print(f"spent: ${spent:,.2f} (succeeded jobs)   committed: ${committed:,.2f} (queued and running)",
              markup=False)
    if caps.total is not None:
        out.print(f"total cap: ${caps.total:,.2f}   remaining: ${remaining:,.2f}", markup=False)
    else:
        out.print("total cap: none", markup=False)
    out.print(f"per-job cap: {'$%.2f' % caps.per_job if caps.per_job is not None else 'none'}", markup=False)
    out.print(f"waiting: {len(waiting)} job(s), ${data['waiting_estimates']:,.2f} estimated; "
              f"{len(over)} held over budget" + (f" (jobs {', '.join(str(j.id) for j in over)})" if over else ""),
              markup=False)


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
        from controller.jobs import note
        from providers import build_provider
        from providers.base import ProviderError

        try:
            provider = build_provider(config, row.provider)
            try:
                pj = provider.cancel_job(row.provider_job_id)
            finally:
                provider.close()
            note(store, row.id, {"cancel_pending": False, "provider_status": pj.raw_status},
                 event=("provider-cancel", f"cancelled at the provider ({pj.raw_status})"))
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
    from models import LockHeld, StoreError

    config = get_config()
    setup_logging(config)
    try:
        code = Daemon(config, until_done=until_done).run()
    except LockHeld as exc:
        die(str(exc), EXIT_REFUSED)
    except StoreError as exc:
        die(str(exc), EXIT_DATABASE)
    raise typer.Exit(code)


@app.command()
def demo(
    directory: Annotated[Optional[Path], typer.Option("--dir", help="keep the demo's files here")] = None,
    train_time: Annotated[float, typer.Option("--train-time", help="simulated seconds of training")] = 3.0,
) -> None:
    """Five agents on a simulated provider that allows 2 concurrent jobs."""
    from controller.demo import run_demo

    raise typer.Exit(run_demo(out, directory, train_time=train_time))


class EmulatorKind(str, Enum):
    mistral = "mistral"
    openai = "openai"


@app.command()
def emulator(
    kind: Annotated[EmulatorKind, typer.Option("--kind", help="which provider's API to speak")],
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free one)")] = 8089,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    state_file: Annotated[Optional[Path], typer.Option("--state-file", help="the service's own SQLite file")] = None,
    limit: Annotated[int, typer.Option("--limit", help="jobs it runs at once; more fail like Mistral's")] = 2,
    queue_time: Annotated[str, typer.Option("--queue-time")] = "2s",
    validate_time: Annotated[str, typer.Option("--validate-time")] = "2s",
    train_time: Annotated[str, typer.Option("--train-time")] = "10s",
    fail_rate: Annotated[float, typer.Option("--fail-rate", help="seeded share of jobs failing in training")] = 0.0,
    error_rate: Annotated[float, typer.Option("--error-rate", help="seeded share of calls answered 503")] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="accept only the key in this "
                                                       "environment variable (default: any non-empty key)")] = None,
) -> None:
    """Serve a local HTTP emulator of Mistral's or OpenAI's fine-tuning API."""
    import os
    import signal
    import tempfile
    import threading

    from controller.config import parse_duration
    from providers.emulator import make_emulator
    from providers.simulated.engine import EngineSettings

    try:
        settings = EngineSettings(limit=limit, queue_time=parse_duration(queue_time),
                                  validate_time=parse_duration(validate_time), train_time=parse_duration(train_time),
                                  fail_rate=fail_rate, error_rate=error_rate, seed=seed)
    except ValueError as exc:
        die(f"emulator: {exc}")
    if not 0 <= fail_rate <= 1 or not 0 <= error_rate <= 1:
        die("emulator: --fail-rate and --error-rate are shares between 0 and 1")
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            die(f"emulator: --api-key-env: ${api_key_env} is not set")
    path = state_file or Path(tempfile.mkdtemp(prefix=f"ftctl-{kind.value}-emulator-")) / "state.db"
    try:
        server = make_emulator(kind.value, path, settings, api_key=key).serve(host, port)
    except OSError as exc:
        die(f"emulator: cannot listen on {host}:{port}: {exc.strerror or exc}")
    base = server.url if kind is EmulatorKind.mistral else server.url + "/v1"
    out.print(f"{kind.value} emulator on {server.url} (state {path}); Ctrl-C stops it")
    out.print(f'in controller.toml: [providers.{kind.value}] kind = "{kind.value}", base_url = "{base}"',
              markup=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()


# -- operating it ---------------------------------------------------------------------


def _unit_text(config_path: Path, watchdog: str) -> str:
    from importlib import resources

    script = Path(sys.executable).parent / "ftctl"
    exec_start = str(script) if script.exists() else f"{sys.executable} -m controller"
    template = (resources.files("controller") / "systemd" / "ftctl.service").read_text(encoding="utf-8")
    return (template.replace("{exec_start}", exec_start).replace("{config}", str(config_path))
            .replace("{watchdog}", watchdog))


@app.command("service-unit")
def service_unit(
    watchdog: Annotated[str, typer.Option("--watchdog", help="WatchdogSec= (longer than the slowest tick)")] = "120s",
) -> None:
    """Print the hardened systemd unit, with this interpreter and config filled in."""
    from controller.config import find_config, parse_duration

    try:
        parse_duration(watchdog)
    except ValueError as exc:
        die(f"--watchdog: {exc}")
    try:
        path = find_config(state.config_path).resolve()
    except ConfigError:
        path = Path("/etc/ftctl/controller.toml")
    print(_unit_text(path, watchdog), end="")


@app.command()
def doctor() -> None:
    """Check config, database, keys, providers and the unit: one line each."""
    from controller.doctor import run_checks

    results = run_checks(state.config_path)
    width = max(len(r.name) for r in results)
    for r in results:
        style = {"ok": "green", "warn": "yellow", "fail": "red"}[r.level]
        out.print(f"[{style}]{r.level.upper():<4}[/] {r.name:<{width}}  {escape(r.detail)}")
    failed = [r for r in results if r.level == "fail"]
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


@app.command()
def wait(
    jobs: Annotated[list[str], typer.Argument(help="job ids")],
    timeout: Annotated[Optional[str], typer.Option("--timeout", help="give up after this long, e.g. 2h")] = None,
    interval: Annotated[float, typer.Option("--interval", help="seconds between looks", min=0.1)] = 5.0,
) -> None:
    """Block until the jobs are finished; exit 0 only if all succeeded (1 if not, 5 on timeout)."""
    import time

    from controller.config import parse_duration
    from controller.lifecycle import TERMINAL

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
        detail = r.fine_tuned_model if r.state == "succeeded" else (r.reason or "")
        out.print(f"job {r.id} ({r.agent}): {r.state} {detail}".rstrip(), markup=False)
    raise typer.Exit(EXIT_OK if all(r.state == "succeeded" for r in rows) else EXIT_FAILED)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
