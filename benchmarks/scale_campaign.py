"""scale.py's rows measured on a bulk campaign (issue 18): data made through
ftctl's own submit and Ticker (benchmarks/campaign.py), not laid out by
scale_data.py. One campaign is built, then each row reads it.

    .venv/bin/python benchmarks/scale.py --only campaign [--campaign-jobs 10000]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import Campaign  # noqa: E402
from scale_data import run_cli  # noqa: E402


def outbox_rows(c: Campaign, repeats: int, row) -> None:
    """18.10: `status` with a hook whose events are all still owed, vs no hook."""
    owed = c.counts()["outbox"]
    hooked, bare = c.config(), c.config(hooks=False)
    cpu = {True: [], False: []}
    peak = {True: [], False: []}
    for _ in range(repeats):
        for hook, config in ((True, hooked), (False, bare)):
            t, _, p, _ = run_cli(["status"], config)
            cpu[hook].append(t)
            peak[hook].append(p / 1024)
    with_hook, without = statistics.median(cpu[True]), statistics.median(cpu[False])
    row(f"`ftctl status` with a hook, {owed:,} events owed, vs no hook", "2.67 s, 228 MB at 40k rows",
        "<= 1.2x", f"{with_hook:.2f} s CPU, {statistics.median(peak[True]):.0f} MB "
        f"vs {without:.2f} s, {statistics.median(peak[False]):.0f} MB ({with_hook / without:.2f}x)",
        with_hook / without <= 1.2)


def _vacuumed_kb(db: Path) -> float:
    """The database's size once vacuumed (its WAL folded in)."""
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db.stat().st_size / 1024


def _copy(c: Campaign, to: Path) -> tuple[Path, Path]:
    """The campaign's database (and its config without a hook) in `to`: for
    rows that change what they read."""
    import shutil

    shutil.rmtree(to, ignore_errors=True)
    to.mkdir()
    _vacuumed_kb(c.dir / "ftctl.db")  # the campaign's WAL into the file, before the copy
    config = c.config(hooks=False)
    for path in (c.dir / "ftctl.db", config):
        shutil.copy(path, to / path.name)
    (to / "data").symlink_to(c.dir / "data")
    return to, to / config.name


def history_rows(c: Campaign, root: Path, row) -> None:
    """18.11: bytes a succeeded job keeps, whole and after `[history]
    keep_logs_for` and `[events] keep` passed (on a copy, a virtual clock)."""
    import shutil
    import time
    from datetime import timedelta

    from ftctl.controller.config import load_config
    from ftctl.controller.service.hooks import Dispatcher
    from ftctl.controller.service.retention import Retention
    from ftctl.models import Store, utcnow

    copy, config = _copy(c, root / "history-copy")
    jobs = c.counts()["jobs"]
    before = _vacuumed_kb(copy / "ftctl.db")
    cfg = load_config(config)
    store = Store(cfg.database_url)
    now = [utcnow()]
    hooks = Dispatcher(store, cfg, {}, clock=lambda: now[0])  # no hook asks: every event settles, as delivered
    while hooks.run_once():
        pass
    now[0] += timedelta(days=31)
    retention = Retention(cfg, store, clock=lambda: now[0])
    cpu, passes = [], 0
    while True:
        started = time.process_time()
        logs, _ = retention.run_once()
        cpu.append(time.process_time() - started)
        passes += 1
        if not logs:
            break
    hooks._pruned = None
    hooks.run_once()  # its hourly prune: [events] keep (7 days) passed
    store.close()
    after = _vacuumed_kb(copy / "ftctl.db")
    row(f"bytes kept a finished job ({jobs:,}), whole vs after keep_logs_for (30d) and [events] keep (7d)",
        "4.75 KB", "<= half (job, transitions, 20 points)", f"{before / jobs:.2f} KB vs {after / jobs:.2f} KB",
        after <= before / 2)
    row("  a retention pass: 100 logs thinned / nothing left to do", "-", "-",
        f"{statistics.median(cpu[:-1] or [0]) * 1000:.0f} ms / {cpu[-1] * 1000:.1f} ms CPU ({passes - 1} passes)",
        None)
    shutil.rmtree(copy)


def listing_rows(c: Campaign, repeats: int, row) -> None:
    """18.7: a tick after the campaign, through the mistralai SDK and the
    emulator: CPU and provider calls (steady state, after a first tick)."""
    import random
    import time

    from ftctl.controller.config import load_config
    from ftctl.controller.engine.tick import Ticker
    from ftctl.models import Store

    cfg = load_config(c.config(hooks=False))
    store = Store(cfg.database_url)
    ticker = Ticker(cfg, store, rng=random.Random(0))
    calls = c.emulator.calls()
    started = time.process_time()
    ticker.tick()
    first = (time.process_time() - started, c.emulator.calls() - calls)
    cpus, counts = [], []
    for _ in range(max(3, repeats)):
        calls = c.emulator.calls()
        started = time.process_time()
        result = ticker.tick()
        cpus.append(time.process_time() - started)
        counts.append(c.emulator.calls() - calls)
    ticker.close()
    store.close()
    running, done = result.states.get("running", 0), result.states.get("succeeded", 0)
    cpu, n = statistics.median(cpus), statistics.median(counts)
    row(f"tick after a bulk campaign: {running} running, {done:,} succeeded (created within "
        f"{c.created_within():.0f} min)", "0.136 s, 10 calls", "<= 0.05 s, 1 call",
        f"{cpu:.3f} s, {n:.0f} call(s) (first tick after a start: {first[0]:.2f} s, {first[1]} calls)",
        cpu <= 0.05 and n <= 1)


def show_rows(c: Campaign, repeats: int, row) -> None:
    """18.12: `ftctl show` of a succeeded job with its training log, against
    a bare `python -c "import sqlmodel"` (fresh processes, interleaved)."""
    import os
    import sqlite3
    import subprocess

    with sqlite3.connect(c.dir / "ftctl.db") as conn:
        (job,) = conn.execute("SELECT job_id FROM log_points GROUP BY job_id ORDER BY job_id DESC LIMIT 1").fetchone()
    config = c.config(hooks=False)
    show, base = [], []
    for _ in range(max(3, repeats)):
        show.append(run_cli(["show", str(job)], config)[0])
        p = subprocess.Popen([sys.executable, "-c", "import sqlmodel"])
        _, _, usage = os.wait4(p.pid, 0)
        base.append(usage.ru_utime + usage.ru_stime)
    ratio = statistics.median(show) / statistics.median(base)
    row(f"`ftctl show` (a job with its training log, {c.counts()['jobs']:,} jobs) vs `import sqlmodel`",
        "~1 s CPU, 1.9x", "<= 1.3x", f"{statistics.median(show):.2f} s CPU, {ratio:.2f}x", ratio <= 1.3)


def idle_row(c: Campaign, seconds: float, row) -> None:
    """18.7: an idle daemon (poll 15s) on the campaign, once its start-up
    work (the first listing, settling the events no hook asks for) is done."""
    import sqlite3
    import subprocess
    import time

    from scale_data import proc_cpu

    import shutil

    copy, config = _copy(c, c.dir.parent / "idle-copy")
    daemon = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(config), "daemon"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with sqlite3.connect(copy / "ftctl.db") as conn:
            deadline = time.monotonic() + 600
            while conn.execute("SELECT count(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0]:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("the daemon did not settle the outbox")
                time.sleep(0.5)
        time.sleep(20)  # the log reader's pass over the running jobs, and a tick or so
        d0, t0 = proc_cpu(daemon.pid), time.monotonic()
        time.sleep(seconds)
        d1, t1 = proc_cpu(daemon.pid), time.monotonic()
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        shutil.rmtree(copy)
    share = (d1 - d0) / (t1 - t0) * 100
    row(f"idle daemon after the campaign, over {seconds:.0f} s", "2.27% CPU", "<= 0.5%", f"{share:.2f}% CPU",
        share <= 0.5)


def campaign(root: Path, repeats: int, row, jobs: int = 10_000, concurrency: int = 500,
             keep: Path | None = None, idle: float = 60.0) -> None:
    """`keep`: build the campaign there once and reuse it on later runs
    (rows that change it work on a copy)."""
    running = min(50, jobs // 10)
    where = (keep or root) / f"campaign-{jobs}"
    c = Campaign(where, jobs=jobs, running=running, concurrency=concurrency)
    if (where / "ftctl.db").exists():
        print(f"a bulk campaign of {jobs:,} jobs, built before in {where}", flush=True)
    else:
        print(f"a bulk campaign of {jobs:,} jobs through submit and the Ticker (the simulated service), "
              f"{running} left running", flush=True)
        c.build()
        print(f"  built in {c.seconds:.0f} s", flush=True)
    print(f"  jobs created within {c.created_within():.1f} min: {c.counts()}", flush=True)
    try:
        outbox_rows(c, repeats, row)
        history_rows(c, root, row)
        c.serve()
        listing_rows(c, repeats, row)
        show_rows(c, repeats, row)
        idle_row(c, idle, row)
    finally:
        c.close()
