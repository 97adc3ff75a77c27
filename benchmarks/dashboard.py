"""The dashboard's cost (issue 22), every row of its table in one run.

- the jobs page at 100k jobs against `ftctl status` at the same size, both
  rendered in this process from the same warm database (the page's HTML vs
  status's plain columns into a buffer), medians of interleaved repeats;
  goal <= 1.3x. Two layouts: a history (99,950 succeeded, 50 running: the
  listing shows the 50 last finished and the running) and a backlog (90,000
  succeeded, 10,000 prepared: every unfinished job is a row). For reference
  the same page over HTTP from `ftctl dashboard --serve` (wall) and `ftctl
  status` as a fresh process (wall, start-up included).
- a job page with 10,000 loss points: its size in bytes; goal < 200 KB.

    .venv/bin/python benchmarks/dashboard.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_data import Job, build_database, run_cli, stamp, training_file, utcnow, write_config  # noqa: E402


def spread(n: int, days: int) -> list:
    now = utcnow()
    return [now - timedelta(seconds=days * 86400.0 * (n - i) / n) for i in range(n)]


def site(root: Path, name: str, jobs: list[Job]) -> Path:
    d = root / name
    d.mkdir()
    file, digest = training_file(d)
    build_database(d, jobs, file, digest)
    return write_config(d, url=None, concurrency=50, provider="mistral")


def timed(fn, repeats: int) -> float:
    values = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        values.append(time.perf_counter() - started)
    return statistics.median(values)


def jobs_page_vs_status(config: Path, label: str, repeats: int) -> None:
    import ftctl
    from ftctl.controller.cli.jobs import _print_jobs
    from ftctl.controller.service.dashboard.pages import FINISHED_SHOWN, Query, jobs_page

    with ftctl.open(config) as ft:
        def status() -> int:
            with contextlib.redirect_stdout(io.StringIO()) as buffer:
                _print_jobs(ft.listing(finished=FINISHED_SHOWN), "table", False)
            return len(buffer.getvalue())

        def page() -> int:
            code, html = jobs_page(ft, Query({}), "n")
            assert code == 200
            return len(html)

        status(), page()  # warm: the same pages of the file cached for both
        rows = page()
        s_times, p_times = [], []
        for _ in range(repeats):  # interleaved: the machine's load falls on both alike
            s_times.append(timed(status, 1))
            p_times.append(timed(page, 1))
    s, p = statistics.median(s_times), statistics.median(p_times)
    ratio = p / s
    print(f"  jobs page vs `status`, 100k jobs ({label}): page {p * 1000:.0f} ms ({rows / 1e3:,.0f} KB), status "
          f"{s * 1000:.0f} ms: {ratio:.2f}x  [goal <= 1.3x {'met' if ratio <= 1.3 else 'NOT met'}]", flush=True)


def over_http(config: Path, repeats: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(config), "dashboard", "--serve", "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = re.search(r"(http://\S+)", proc.stdout.readline()).group(1)
        page = timed(lambda: urllib.request.urlopen(url, timeout=60).read(), repeats)
        cli = statistics.median(run_cli(["status"], config)[1] for _ in range(repeats))
        print(f"  for reference, wall: GET / from `ftctl dashboard --serve` {page * 1000:.0f} ms; "
              f"`ftctl status` as a fresh process {cli * 1000:.0f} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def job_page_size(root: Path, points: int) -> None:
    config = site(root, "curve", [Job("succeeded", utcnow(), "a0", "SUCCESS")])
    db = config.parent / "ftctl.db"
    start = utcnow() - timedelta(hours=3)
    with sqlite3.connect(db) as c:
        (pid,) = c.execute("SELECT provider_job_id FROM jobs WHERE id = 1").fetchone()
        c.executemany("INSERT INTO log_points (job_id, provider_job_id, key, kind, at, step, message, metrics, "
                      "fetched_at) VALUES (1, ?, ?, ?, ?, ?, NULL, ?, ?)",
                      [(pid, f"step:{s}", "checkpoint" if s % 500 == 0 else "metric",
                        stamp(start + timedelta(seconds=s)), s,
                        json.dumps({"train_loss": 2.0 / (1 + s / 300), **({"valid_loss": 2.1 / (1 + s / 300)}
                                                                           if s % 10 == 0 else {})}),
                        stamp(start)) for s in range(1, points + 1)])
    import ftctl
    from ftctl.controller.service.dashboard.pages import job_page

    with ftctl.open(config) as ft:
        started = time.perf_counter()
        code, html = job_page(ft, 1, "n")
        took = time.perf_counter() - started
    size = len(html.encode())
    print(f"  job page, {points:,} loss points: {size / 1000:.0f} KB in {took * 1000:.0f} ms  "
          f"[goal < 200 KB {'met' if code == 200 and size < 200_000 else 'NOT met'}]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftctl-bench-dashboard-") as tmp:
        root = Path(tmp)
        n = 100_000
        history = site(root, "history", [Job("succeeded", t, f"a{i % 50}", "SUCCESS")
                                         for i, t in enumerate(spread(n - 50, 300))]
                       + [Job("running", t, f"a{i % 50}", "RUNNING") for i, t in enumerate(spread(50, 1))])
        backlog = site(root, "backlog", [Job("succeeded", t, f"a{i % 50}", "SUCCESS")
                                         for i, t in enumerate(spread(n - 10_000, 300))]
                       + [Job("prepared", t, f"a{i % 50}") for i, t in enumerate(spread(10_000, 1))])
        print("dashboard (issue 22): medians of interleaved repeats", flush=True)
        jobs_page_vs_status(history, "50 running, 99,950 finished", args.repeats)
        jobs_page_vs_status(backlog, "10,000 prepared, 90,000 finished", args.repeats)
        over_http(history, args.repeats)
        job_page_size(root, 10_000)


if __name__ == "__main__":
    main()
