"""scale.py's rows for a waiting backlog (issue 18.9): a bulk submit of
`jobs` jobs onto a provider whose 50 slots are busy with jobs the Ticker
handed to the simulated service. The first 10,000 go through ftctl's own
submit path (what `ftctl submit --all --force` runs, a transaction a job);
the rest are copies of those rows and their history, made in SQL (each a new
replica, created later), so 100,000 take minutes, not most of an hour. The ticks are then measured against that
history behind `ftctl emulator --kind mistral` in its own process (the real
`mistralai` SDK over HTTP), so the figures are ftctl's CPU.

    .venv/bin/python benchmarks/scale.py --only backlog [--backlog-jobs 100000]
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import Campaign  # noqa: E402


SUBMITTED = 10_000


def _copies(db: Path, n: int) -> None:
    """`n` more waiting jobs: copies of the submitted ones (and their first
    history row), each a new replica of its identity, created after them."""
    import sqlite3

    if n <= 0:
        return
    conn = sqlite3.connect(db)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(jobs)") if r[1] != "id"]
    ids = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE state = 'prepared' ORDER BY id")]
    top = conn.execute("SELECT max(replica) FROM jobs").fetchone()[0] or 0
    made, k = 0, 1
    with conn:
        while made < n:
            take = ids[:n - made]
            values = ", ".join(
                f"replica + {k * (top + 1)}" if c == "replica" else
                f"strftime('%Y-%m-%d %H:%M:%f', created_at, '+{k} minutes') || '000'" if c in ("created_at",
                                                                                               "updated_at") else c
                for c in cols)
            start = conn.execute("SELECT max(id) FROM jobs").fetchone()[0]
            conn.execute(f"INSERT INTO jobs ({', '.join(cols)}) SELECT {values} FROM jobs "
                         f"WHERE id IN ({', '.join(map(str, take))}) ORDER BY id")
            conn.execute("INSERT INTO job_events (job_id, at, from_state, to_state, trigger, reason, event_id, name) "
                         "SELECT id, created_at, NULL, 'prepared', 'create', 'submitted', "
                         "'evt_' || lower(hex(randomblob(16))), 'prepared' FROM jobs WHERE id > ?", (start,))
            made += len(take)
            k += 1
    conn.close()


def _ticker(config: Path):
    from sqlalchemy import event

    from ftctl.controller.config import load_config
    from ftctl.controller.engine.tick import Ticker
    from ftctl.models import Store

    cfg = load_config(config)
    store = Store(cfg.database_url)
    ticker = Ticker(cfg, store, rng=random.Random(0))
    writes = [0]
    event.listen(store.engine, "begin",
                 lambda conn: writes.__setitem__(0, writes[0] + bool(conn.get_execution_options().get("ftctl_write"))))
    return ticker, store, writes


def _timed(ticker, writes) -> tuple[float, int, object]:
    writes[0] = 0
    started = time.process_time()
    result = ticker.tick()
    return time.process_time() - started, writes[0], result


def backlog(root: Path, repeats: int, row, jobs: int = 100_000, slots: int = 50, keep: Path | None = None) -> None:
    where = (keep or root) / f"backlog-{jobs}"
    c = Campaign(where, jobs=jobs, running=slots, concurrency=slots, hooks=False, logs=False)
    built = where / "built.db"
    if built.exists():
        print(f"a backlog of {jobs:,} waiting jobs, built before in {where}", flush=True)
    else:
        print(f"a backlog of {jobs:,} jobs bulk-submitted behind {slots} busy slots (submit + the Ticker on the "
              "simulated service)", flush=True)
        started = time.monotonic()
        c._submit(slots, "7d")
        c._run_until(lambda s: s.get("running", 0) == slots, train_time="7d", limit_s=600)
        c._submit(min(jobs, SUBMITTED), "7d")
        _copies(where / "ftctl.db", jobs - SUBMITTED)
        shutil.copy(where / "ftctl.db", built)
        print(f"  built in {time.monotonic() - started:.0f} s: {c.counts()}", flush=True)
    c.serve()
    config = c.config(hooks=False)
    try:
        firsts, first_writes, steady, steady_writes = [], [], [], []
        for _ in range(max(1, repeats // 2)):
            for suffix in ("-wal", "-shm"):
                (where / f"ftctl.db{suffix}").unlink(missing_ok=True)
            shutil.copy(built, where / "ftctl.db")  # right after the bulk submit, every time
            ticker, store, writes = _ticker(config)
            ticker.provider("mistral")  # a running daemon has its client built already
            cpu, n, result = _timed(ticker, writes)
            assert result.states["prepared"] == jobs and result.states["running"] == slots, result.summary()
            assert result.waiting_for_slot == jobs, result.summary()
            firsts.append(cpu)
            first_writes.append(n)
            for _ in range(repeats):
                cpu, n, result = _timed(ticker, writes)
                steady.append(cpu)
                steady_writes.append(n)
            ticker.close()
            store.close()
        first, still = statistics.median(firsts), statistics.median(steady)
        row(f"tick right after a bulk submit of {jobs:,} ({slots} slots busy)", "3.08 s (one write transaction)",
            "<= 0.2 s", f"{first:.3f} s ({statistics.median(first_writes):.0f} write transaction(s))", first <= 0.2)
        row(f"tick with {jobs:,} waiting ({slots} slots busy), steady state", "1.41 s", "<= 0.2 s",
            f"{still:.3f} s ({statistics.median(steady_writes):.0f} write transaction(s))", still <= 0.2)
    finally:
        c.close()
