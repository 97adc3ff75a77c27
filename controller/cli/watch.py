"""`ftctl status --watch`: the listing again and again."""

from __future__ import annotations

from collections.abc import Callable

from ftctl.controller.cli.app import api, console, stdout_is_terminal


def watch(query: dict, fmt: str, no_headers: bool, interval: float, print_jobs: Callable[..., int]) -> None:
    """Again every `interval` until Ctrl-C: in place on a terminal, a snapshot
    under its own title line in a pipe or a log (`print_jobs`: the listing's printer)."""
    import sys
    import time

    from ftctl.models import utcnow

    def snapshot(draw):
        """`draw(found)` inside the read session: a reason that waits for a
        slot or the budget reads those facts when it is rendered, so the
        rendering must happen before the session closes."""
        with api() as ft:
            return draw(ft.listing(**query))

    if not stdout_is_terminal():
        # a pipe or a log: one snapshot an interval, each under its own title line
        def lines(found) -> None:
            print_jobs(found, fmt, no_headers, title=f"ftctl status  {utcnow():%Y-%m-%d %H:%M:%S} UTC")

        try:
            while True:
                snapshot(lines)
                sys.stdout.write("\n")
                sys.stdout.flush()
                time.sleep(interval)
        except (KeyboardInterrupt, BrokenPipeError):
            return
    from rich.live import Live as LiveDisplay

    from ftctl.controller.cli.views import status_table

    def table(title: str):
        return snapshot(lambda found: status_table(list(found.rows), found.now, title=title, live=found.live,
                                                   wide=fmt == "wide", no_headers=no_headers))

    with LiveDisplay(table("ftctl status"), console=console(), auto_refresh=False) as display:
        try:
            while True:
                time.sleep(interval)
                display.update(table(f"ftctl status  {utcnow():%H:%M:%S} UTC"), refresh=True)
        except KeyboardInterrupt:
            return
