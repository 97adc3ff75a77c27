"""scale.py's rows for a waiting backlog (issue 18.9): a bulk submit of
`jobs` jobs (through ftctl's own submit path, what `ftctl submit --all
--force` runs) onto a provider whose 50 slots are busy with jobs the Ticker
handed to the simulated service. The ticks are then measured against that
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
        c._submit(slots, "1000h")
        c._run_until(lambda s: s.get("running", 0) == slots, train_time="1000h", limit_s=600)
        c._submit(jobs, "1000h")
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
