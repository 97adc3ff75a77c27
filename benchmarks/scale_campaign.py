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


def campaign(root: Path, repeats: int, row, jobs: int = 10_000, concurrency: int = 500,
             keep: Path | None = None) -> None:
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
    finally:
        c.close()
