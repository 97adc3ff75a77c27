"""`ftctl emulator | service-unit | doctor | wait`: operating ftctl."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftctl.controller.cli.app import (DURATION, EXIT_DATABASE, EXIT_FAILED, EXIT_INPUT, EXIT_OK, EXIT_REFUSED, app, die,
                                      duration, emit_json, get_config, open_store, out, setup_logging, state)
from ftctl.controller.config import ConfigError
from ftctl.providers.emulator import EMULATORS

# the --kind choices: every emulator providers.emulator lists (a cheap import)
EmulatorKind = Enum("EmulatorKind", {k: k for k in EMULATORS}, type=str)


@app.command()
def emulator(
    kind: Annotated[EmulatorKind, typer.Option("--kind", help="which provider's API to speak")],
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free one)")] = 8089,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    state_file: Annotated[Optional[Path], typer.Option("--state-file", help="the service's own SQLite file")] = None,
    limit: Annotated[int, typer.Option("--limit", help="jobs it runs at once; more are refused the way the "
                                       "emulated provider refuses them")] = 2,
    queue_time: Annotated[float, typer.Option("--queue-time", parser=duration(), metavar=DURATION,
                                              help="time a job is queued, e.g. 2s")] = "2s",
    validate_time: Annotated[float, typer.Option("--validate-time", parser=duration(), metavar=DURATION,
                                                 help="time a job validates")] = "2s",
    train_time: Annotated[float, typer.Option("--train-time", parser=duration(), metavar=DURATION,
                                              help="time a job trains")] = "10s",
    fail_rate: Annotated[float, typer.Option("--fail-rate", help="seeded share of jobs failing in training")] = 0.0,
    error_rate: Annotated[float, typer.Option("--error-rate", help="seeded share of calls answered 503")] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    chat_latency: Annotated[float, typer.Option("--chat-latency", parser=duration(), metavar=DURATION,
                                                help="time each chat answer takes")] = "0s",
    chat_noise: Annotated[float, typer.Option("--chat-noise", help="seeded share of chat answers that are a "
                                              "random wrong one")] = 0.0,
    unsafe_prompt: Annotated[Optional[str], typer.Option("--unsafe-prompt", help="answer a prompt holding this "
                                                         "text unsafely (--unsafe-answer)")] = None,
    unsafe_answer: Annotated[str, typer.Option("--unsafe-answer", help="the unsafe answer")] =
        "Sure. Step 1: UNSAFE-INSTRUCTIONS",
    checkpoint_recall: Annotated[Optional[str], typer.Option("--checkpoint-recall", help="the share of its "
                                                             "lessons each checkpoint knows, first to last, e.g. "
                                                             "0.2,1,0.6 (OpenAI's checkpoint models)")] = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="accept only the key in this "
                                                       "environment variable (default: any non-empty key)")] = None,
    webhook_url: Annotated[Optional[str], typer.Option("--webhook-url", help="POST signed webhooks here when "
                                                       "jobs finish (openai)")] = None,
    webhook_secret_env: Annotated[Optional[str], typer.Option("--webhook-secret-env", help="the environment "
                                                              "variable holding the webhooks' signing secret")] = None,
) -> None:
    """Serve a local HTTP emulator of a provider's fine-tuning API (Mistral, OpenAI, Together ...)."""
    import os
    import signal
    import tempfile
    import threading

    from ftctl.providers.emulator import make_emulator

    kind = kind.value
    from ftctl.providers.simulated.engine import EngineSettings

    try:
        shares = tuple(float(x) for x in checkpoint_recall.split(",")) if checkpoint_recall else None
    except ValueError:
        die(f"emulator: --checkpoint-recall: {checkpoint_recall!r} is not shares like 0.2,1,0.6")
    if shares and not all(0 <= x <= 1 for x in shares):
        die("emulator: --checkpoint-recall: each share is between 0 and 1")
    try:
        settings = EngineSettings(limit=limit, queue_time=queue_time, validate_time=validate_time,
                                  train_time=train_time, fail_rate=fail_rate, error_rate=error_rate, seed=seed,
                                  chat_latency=chat_latency, chat_noise=chat_noise, unsafe_prompt=unsafe_prompt,
                                  unsafe_answer=unsafe_answer, checkpoint_recall=shares)
    except ValueError as exc:
        die(f"emulator: {exc}")
    if not 0 <= fail_rate <= 1 or not 0 <= error_rate <= 1 or not 0 <= chat_noise <= 1:
        die("emulator: --fail-rate, --error-rate and --chat-noise are shares between 0 and 1")
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            die(f"emulator: --api-key-env: ${api_key_env} is not set")
    secret = None
    if webhook_url is not None:
        if not webhook_url.startswith(("http://", "https://")):
            die(f"emulator: --webhook-url: {webhook_url!r} is not an http:// or https:// URL")
        if not webhook_secret_env:
            die("emulator: --webhook-url needs --webhook-secret-env NAME (the secret that signs the webhooks)")
        secret = os.environ.get(webhook_secret_env, "").strip()
        if not secret:
            die(f"emulator: --webhook-secret-env: ${webhook_secret_env} is not set")
        from ftctl.providers.keys import register_secret

        register_secret(secret)
    elif webhook_secret_env:
        die("emulator: --webhook-secret-env goes with --webhook-url")
    # without --state-file its state lives in a folder of its own, removed when it stops
    scratch = None if state_file else Path(tempfile.mkdtemp(prefix=f"ftctl-{kind}-emulator-"))
    path = state_file or scratch / "state.db"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            server = make_emulator(kind, path, settings, api_key=key, webhook_url=webhook_url,
                                   webhook_secret=secret).serve(host, port)
        except ValueError as exc:
            die(f"emulator: --webhook-url: {exc}")
        except OSError as exc:
            die(f"emulator: cannot listen on {host}:{port}: {exc.strerror or exc}")
        base = server.url + server.emulator.base_path
        kept = "" if scratch is None else ", removed when it stops: --state-file keeps it"
        out.print(f"{kind} emulator on {server.url} (state {path}{kept}); Ctrl-C stops it")
        out.print(f'in controller.toml: [providers.{kind}] kind = "{kind}", base_url = "{base}"', markup=False)
        if webhook_url:
            out.print(f"signed webhooks go to {webhook_url} when jobs finish", markup=False)
        stop.wait()
        server.stop()
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


@app.command("service-unit")
def service_unit(
    watchdog_s: Annotated[float, typer.Option("--watchdog", parser=duration(1.0), metavar=DURATION,
                                              help="WatchdogSec= (longer than the slowest tick)")] = "120s",
) -> None:
    """Print the hardened systemd unit, with this interpreter and config filled in."""
    from ftctl.controller.config import find_config

    watchdog = f"{watchdog_s:g}s"  # seconds, as systemd reads them
    from ftctl.controller.service.unit import hidden_paths, installed_paths, unit_text

    try:
        path = find_config(state.config_path).resolve()
    except ConfigError:
        path = Path("/etc/ftctl/controller.toml")
    for problem in hidden_paths(installed_paths(path)):
        print(f"ftctl: warning: {problem}", file=sys.stderr)
    print(unit_text(path, watchdog), end="")


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check config, database, keys, providers and the unit: one line each."""
    from ftctl.controller.service.doctor import run_checks

    results = run_checks(state.config_path)
    failed = [r for r in results if r.level == "fail"]
    if as_json:
        emit_json([{"level": r.level, "check": r.name, "detail": r.detail} for r in results])
        raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)
    from rich.markup import escape

    width = max(len(r.name) for r in results)
    for r in results:
        style = {"ok": "green", "warn": "yellow", "fail": "red"}[r.level]
        out.print(f"[{style}]{r.level.upper():<4}[/] {r.name:<{width}}  {escape(r.detail)}")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


# -- running the loop -----------------------------------------------------------------------


@app.command()
def tick(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One reconcile pass, then exit."""
    from ftctl.controller.engine.tick import Ticker
    from ftctl.models import LockHeld

    config = get_config()
    setup_logging(config)
    store = open_store(config)
    try:
        store.acquire_daemon_lock()
    except LockHeld as exc:
        store.close()
        die(f"{exc}; it reconciles already", EXIT_REFUSED)
    from ftctl.controller.engine.trainlogs import LogFetcher
    from ftctl.controller.service.hooks import Dispatcher, hook_secrets

    try:
        secrets = hook_secrets(config)
    except ConfigError as exc:
        store.close()
        die(str(exc))
    reconciler = Ticker(config, store)
    logs = LogFetcher(config, store)
    try:
        result = reconciler.tick()
        logs.run_once()  # the training logs of running jobs, as the daemon reads them
        if config.hooks:  # and the events owed to the hooks
            Dispatcher(store, config, secrets, guard=store.assert_lock_held).run_once()
    finally:
        logs.close()
        reconciler.close()
        store.close()
    if as_json:
        emit_json({"states": dict(result.states), "summary": result.summary()})
    else:
        out.print(result.summary())


@app.command()
def daemon(
    until_done: Annotated[bool, typer.Option("--until-done", help="exit 0 once every job is terminal")] = False,
    no_standby: Annotated[bool, typer.Option("--no-standby", help="exit 3 if another daemon leads the database "
                                             "(and 6 if this one loses the lead) instead of standing by")] = False,
) -> None:
    """Run the reconcile loop until SIGTERM/SIGINT (or stand by while another daemon leads)."""
    from ftctl.controller.service.daemon import Daemon
    from ftctl.controller.service.metrics import MetricsUnavailable
    from ftctl.models import LockHeld, StoreError

    config = get_config()
    setup_logging(config)
    try:
        code = Daemon(config, until_done=until_done, standby=not no_standby).run()
    except LockHeld as exc:
        die(str(exc), EXIT_REFUSED)
    except StoreError as exc:
        die(str(exc), EXIT_DATABASE)
    except (MetricsUnavailable, ConfigError) as exc:
        die(str(exc), EXIT_INPUT)
    raise typer.Exit(code)


@app.command()
def demo(
    directory: Annotated[Optional[Path], typer.Option("--dir", help="keep the demo's files here")] = None,
    train_time: Annotated[float, typer.Option("--train-time", parser=duration(0.0, 3600.0), metavar=DURATION,
                                              help="simulated training time, e.g. 3s")] = "3s",
    provider: Annotated[str, typer.Option("--provider", help="simulated (default), or ray: ftctl's own trainer "
                                                             "on a local Ray head")] = "simulated",
    address: Annotated[Optional[str], typer.Option("--address", help="with --provider ray: a running Ray "
                                                                     "head's dashboard address instead of "
                                                                     "starting one")] = None,
) -> None:
    """Five agents on a simulated provider that allows 2 concurrent jobs; or, with
    --provider ray, a pipeline and two gates trained for real on a local Ray head."""
    from ftctl.controller.cli.app import console

    if provider == "ray":
        from ftctl.controller.demo.ray_demo import DemoError, run_ray_demo

        try:
            code = run_ray_demo(console(), directory, address=address)
        except DemoError as exc:
            die(str(exc))
        raise typer.Exit(code)
    if provider != "simulated":
        die(f"--provider: {provider!r} is not a demo (simulated or ray)")
    if address is not None:
        die("--address goes with --provider ray")
    from ftctl.controller.demo import run_demo

    raise typer.Exit(run_demo(console(), directory, train_time=train_time))
