"""`ftctl events | logs`: what happened to the jobs, and how their training went.

Both answer from the database alone (the daemon stores the events as they
happen and reads the providers' training logs), and both can follow.
"""

from __future__ import annotations

import textwrap

import json
import time
from enum import Enum
from typing import Annotated, Optional

import typer

from ftctl.controller.cli.app import DURATION, _job_id, api, app, duration, emit_json, get_config, out
from ftctl.controller.ledger.states import EVENTS

# how far back `--follow` looks again for events committed out of order
# (PostgreSQL hands out ids before commit); what was printed is not again
REREAD = 200
# how often `logs --follow` tells the daemon it still follows (it forgets after 15 s)
FOLLOW_RENEW = 5.0


class Output(str, Enum):
    text = "text"
    json = "json"


def _print_event(e: dict, fmt: Output) -> None:
    from ftctl.controller.cli.views import event_text

    if fmt == Output.json:
        print(json.dumps(e), flush=True)
    else:
        out.print(event_text(e), markup=False, highlight=False)


# what a hook may ask for is every kind listed here (one list: states.EVENTS)
# (the kinds in a paragraph of their own that click does not wrap again: it would break
# a name such as model-deleted at its hyphen)
_EVENTS_HELP = ("Every transition and promotion (and note) of the jobs, one line each, with its stable event id."
                "\n\nHooks (\\[\\[hooks]] on = [...], or \"*\" for all) can ask for each kind shown here:\n\n\b\n"
                + "\n".join(textwrap.wrap(", ".join(EVENTS) + ".", 72, break_on_hyphens=False)))


@app.command(help=_EVENTS_HELP)
def events(
    job: Annotated[Optional[str], typer.Option("--job", help="only this job's events")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events until Ctrl-C")] = False,
    output: Annotated[Output, typer.Option("--output", "-o", help="text, or json (one object a line)")] = Output.text,
    limit: Annotated[int, typer.Option("--limit", help="the most recent N (0: all)", min=0)] = 100,
    interval: Annotated[float, typer.Option("--interval", parser=duration(0.1), metavar=DURATION,
                                            help="time between looks with --follow, e.g. 500ms")] = "500ms",
) -> None:
    """Every transition and promotion (and note) of the jobs, one line each, with its stable event id."""
    job_id = _job_id(job) if job is not None else None
    with api() as ft:
        shown = ft.events(job_id=job_id, limit=limit or None, newest=True)
        for e in shown:
            _print_event(e, output)
        if not follow:
            if not shown and output == Output.text:
                out.print("no events")
            return
        cursor = max((e["seq"] for e in shown), default=0)
        seen = {e["seq"] for e in shown}
        try:
            while True:
                time.sleep(interval)
                for e in ft.events(job_id=job_id, after=max(0, cursor - REREAD)):
                    if e["seq"] in seen:
                        continue
                    seen.add(e["seq"])
                    cursor = max(cursor, e["seq"])
                    _print_event(e, output)
                seen = {s for s in seen if s > cursor - REREAD}
        except KeyboardInterrupt:
            return


def _header(log: dict) -> str:
    where = f", provider job {log['provider_job_id']}" if log["provider_job_id"] else ""
    read = f"; read {log['read_at'].replace('T', ' ').rstrip('Z')}" if log["read_at"] else "; not read yet"
    note = f" ({log['note']})" if log.get("note") else ""
    return f"job {log['job_id']} ({log['agent']} on {log['provider']}{where}): {log['state']}{read}{note}"


@app.command()
def logs(
    job: Annotated[str, typer.Argument(metavar="JOB", help="job id (3, or job/3)")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="print new points until the job is finished")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the points (with --follow: one object a line)")] = False,
    interval: Annotated[float, typer.Option("--interval", parser=duration(0.1), metavar=DURATION,
                                            help="time between looks with --follow, e.g. 1s")] = "1s",
) -> None:
    """The provider's events and training metrics of a job (loss by step), with its loss curve."""
    from ftctl.controller.cli.views import curve_line, point_text
    from ftctl.controller.records import series

    job_id = _job_id(job)
    with api() as ft:
        log = ft.logs(job_id)
        if as_json and not follow:
            emit_json(log)
            return
        points = list(log["points"])
        if as_json:
            for p in points:
                print(json.dumps(p), flush=True)
        else:
            out.print(_header(log), markup=False)
            for p in points:
                out.print(point_text(p), markup=False, highlight=False)
        told = 0.0
        try:
            while follow and not log["done"]:
                if time.monotonic() - told >= FOLLOW_RENEW:
                    # the daemon reads a followed job's log every few seconds, not every [logs] interval
                    ft.wake(f"logs:{job_id}")
                    told = time.monotonic()
                if log["state"] in ("succeeded", "failed", "cancelled") and not ft.daemon():
                    break  # finished, and no daemon is left to make its last read: nothing more will come
                time.sleep(interval)
                log = ft.logs(job_id, after=log["last_id"])
                points += log["points"]
                for p in log["points"]:
                    if as_json:
                        print(json.dumps(p), flush=True)
                    else:
                        out.print(point_text(p), markup=False, highlight=False)
        except KeyboardInterrupt:
            pass
    if as_json:
        return
    if not points:
        out.print("no training log stored yet (the daemon reads it while the job runs)" if log["provider_job_id"]
                  else "no training log: the job has not reached its provider")
    for name in ("train_loss", "valid_loss"):
        line = curve_line(name, series(points, name))
        if line:
            out.print(line, markup=False, highlight=False)



@app.command()
def dashboard(
    serve: Annotated[bool, typer.Option("--serve", help="serve the pages here, from the database alone (no daemon "
                                        "needed), until Ctrl-C")] = False,
    listen: Annotated[Optional[str], typer.Option("--listen", metavar="HOST:PORT", help="with --serve: another "
                                                  "address than [dashboard] listen (port 0: any free one)")] = None,
) -> None:
    """Open the read-only web dashboard in a browser (print its URL in a pipe); --serve serves it."""
    import signal
    import threading

    from ftctl.controller.cli.app import die, setup_logging, stdout_is_terminal
    from ftctl.controller.config import ConfigError
    from pydantic import ValidationError

    from ftctl.controller.service.settings import DashboardSection

    config = get_config()
    if listen is not None and not serve:
        die("--listen goes with --serve")
    if not serve:
        if not config.dashboard.listen:
            die(f"{config.path}: dashboard.listen is not set: add [dashboard] listen = \"127.0.0.1:9466\" "
                "(the daemon serves it), or run `ftctl dashboard --serve`")
        host, _, port = config.dashboard.listen.rpartition(":")
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '[::]') else host}:{port}/"
        print(url)
        if stdout_is_terminal():
            import webbrowser

            webbrowser.open(url)
        return
    if listen is not None:
        try:
            DashboardSection.model_validate({**config.dashboard.model_dump(), "listen": listen})
        except ValidationError as exc:
            die(f"--listen: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
    from ftctl.controller.service.dashboard.server import start_dashboard

    setup_logging(config)
    try:
        server = start_dashboard(config, listen=listen or config.dashboard.listen or "127.0.0.1:9466")
    except ConfigError as exc:
        die(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"serving {server.url} (Ctrl-C stops)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
