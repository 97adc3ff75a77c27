"""ftctl's own cost at 10,000 and 100,000 jobs (issue 13), every row of its
table side by side in one run.

The provider is the real `mistralai` SDK talking HTTP to `ftctl emulator`
in its own process, so the figures are ftctl's CPU, not the emulator's.
Ticks run in this process (CPU time of the tick call); CLI reads run as
fresh `ftctl` processes (their user + system CPU from wait4). Repeats are
interleaved and the median is printed, with the load average seen.

    .venv/bin/python benchmarks/scale.py [--repeats 5] [--idle 60]
        [--only tick,churn,restart,idle,cli,campaign,backlog]
        [--campaign-jobs 10000] [--campaign-dir DIR] [--backlog-jobs 100000]

`campaign` builds a bulk campaign through ftctl's own submit and Ticker
(benchmarks/scale_campaign.py) and measures issue 18's rows on it;
`backlog` bulk-submits 100,000 jobs behind busy slots the same way
(benchmarks/scale_backlog.py) and times the ticks on that backlog.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_data import (KEY, KEY_ENV, EmulatorProcess, Job, build_database, build_history,  # noqa: E402
                        proc_cpu, run_cli, training_file, utcnow, write_config)

os.environ[KEY_ENV] = KEY
ROWS: list[tuple[str, str, str, str, bool | None]] = []  # (measure, filed, goal, now, met)


def row(measure: str, filed: str, goal: str, now: str, met: bool | None) -> None:
    ROWS.append((measure, filed, goal, now, met))
    print(f"  {measure}: {now}" + ("" if met is None else ("  [goal met]" if met else "  [goal NOT met]")),
          flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


class Site:
    """A database, a provider history in an emulator process, and a Ticker on them."""

    def __init__(self, root: Path, name: str, jobs: list[Job], *, concurrency: int, poll: str = "15s"):
        self.dir = root / name
        self.dir.mkdir()
        file, digest = training_file(self.dir)
        self.state_file = self.dir / "emulator.db"
        _, at_provider = build_database(self.dir, jobs, file, digest, file_id="pending")
        file_id = build_history(self.state_file, at_provider)
        import sqlite3

        with sqlite3.connect(self.dir / "ftctl.db") as conn:
            conn.execute("UPDATE uploaded_files SET file_id = ?", (file_id,))
            conn.execute("UPDATE jobs SET provider_file_id = ? WHERE provider_file_id = 'pending'", (file_id,))
        self.concurrency, self.poll = concurrency, poll
        self.emulator = EmulatorProcess(self.state_file)
        self.config_path = write_config(self.dir, url=self.emulator.url, concurrency=concurrency, poll=poll)
        self.ticker = None

    def open(self, concurrency: int | None = None):
        from ftctl.controller.config import load_config
        from ftctl.controller.engine.tick import Ticker
        from ftctl.models import Store

        from sqlalchemy import event

        config = load_config(self.config_path)
        self.store = Store(config.database_url)
        self.ticker = Ticker(config, self.store, rng=random.Random(0))
        self.writes = 0

        def begin(conn):
            self.writes += bool(conn.get_execution_options().get("ftctl_write"))
        event.listen(self.store.engine, "begin", begin)
        return self

    def tick(self) -> tuple[float, int, object]:
        """(CPU seconds, provider calls, result) of one tick; self.writes
        counts its write transactions."""
        calls = self.emulator.calls()
        self.writes = 0
        started = time.process_time()
        result = self.ticker.tick()
        cpu = time.process_time() - started
        return cpu, self.emulator.calls() - calls, result

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.close()
            self.store.close()
        self.emulator.stop()


def spread(n: int, days: float, end_minutes_ago: float = 60) -> list:
    """n creation times spread evenly over `days`, ending `end_minutes_ago`."""
    end = utcnow() - timedelta(minutes=end_minutes_ago)
    step = timedelta(days=days) / max(1, n)
    return [end - step * (n - i) for i in range(n)]


def recent(n: int) -> list:
    end = utcnow() - timedelta(minutes=5)
    return [end - timedelta(seconds=n - i) for i in range(n)]


# -- ticks ----------------------------------------------------------------------------------------


def tick_scenarios(root: Path, repeats: int) -> None:
    print("ticks at 10,000 jobs (CPU of the tick; steady state, after a first tick)", flush=True)
    sites = {
        "90% running": Site(root, "t90", [Job("running", t, f"a{i % 50}", "RUNNING")
                                          for i, t in enumerate(recent(9000))]
                            + [Job("prepared", t) for t in recent(1000)], concurrency=9000),
        "cap 50": Site(root, "tcap", [Job("running", t, f"a{i % 50}", "RUNNING") for i, t in enumerate(recent(50))]
                       + [Job("prepared", t) for t in recent(9950)], concurrency=50),
        "history": Site(root, "thist", [Job("succeeded", t, f"a{i % 50}", "SUCCESS")
                                        for i, t in enumerate(spread(9950, 6))]
                        + [Job("running", t, "a1", "RUNNING") for t in recent(50)], concurrency=50),
    }
    first: dict[str, tuple[float, int]] = {}
    for name, site in sites.items():
        cpu, calls, _ = site.open().tick()
        first[name] = (cpu, calls)
    cpus: dict[str, list[float]] = {n: [] for n in sites}
    calls: dict[str, list[int]] = {n: [] for n in sites}
    for _ in range(repeats):
        for name, site in sites.items():
            cpu, n, result = site.tick()
            cpus[name].append(cpu)
            calls[name].append(n)
    row("tick CPU, 10k tracked, 90% running", "1.98 s", "<= 0.2 s", f"{median(cpus['90% running']):.3f} s "
        f"({median(calls['90% running']):.0f} calls; first tick {first['90% running'][0]:.2f} s)",
        median(cpus["90% running"]) <= 0.2)
    row("tick CPU, 10k, cap 50, 50 running, the rest prepared", "0.58 s", "<= 0.2 s",
        f"{median(cpus['cap 50']):.3f} s", median(cpus["cap 50"]) <= 0.2)
    row("tick CPU, 10k, 50 running, 9,950 succeeded in the window", "1.42 s", "<= 0.05 s",
        f"{median(cpus['history']):.3f} s (first tick after a start {first['history'][0]:.2f} s)",
        median(cpus["history"]) <= 0.05)
    row("provider calls per tick, 50 active + 9,950 finished", "100 list GETs", "1",
        f"{median(calls['history']):.0f} (first tick after a start: {first['history'][1]})",
        median(calls["history"]) <= 1)
    # the listing itself, 9,000 jobs: the SDK's parsed pages against the raw JSON the tick reads
    provider = sites["90% running"].ticker.provider("mistral")
    parsed, raw = [], []
    gc.collect()
    gc.disable()  # as during a tick; and neither pays for the other's garbage
    for _ in range(repeats):
        started = time.process_time()
        jobs = [provider._to_job(j) for page in range(90)
                for j in provider.client.fine_tuning.jobs.list(page=page, page_size=100).data]
        parsed.append(time.process_time() - started)
        started = time.process_time()
        assert len(provider.list_jobs()) == len(jobs) == 9000
        raw.append(time.process_time() - started)
        gc.collect()
    gc.enable()
    row("  listing 9,000 jobs: the SDK's parsed pages (100) vs raw JSON pages (1,000)", "-", "-",
        f"{median(parsed):.3f} s vs {median(raw):.3f} s ({median(parsed) / median(raw):.1f}x)", None)
    # the slot count changes (50 -> 49 allowed): no waiting job's stored reason changes
    site = sites["cap 50"]
    from ftctl.controller.config import load_config

    changed, writes = [], []
    for limit in ([49, 50] * repeats)[:max(2, repeats)]:
        write_config(site.dir, url=site.emulator.url, concurrency=limit)
        site.ticker.reload(load_config(site.config_path))
        cpu, _, _ = site.tick()
        if limit == 49:
            changed.append(cpu)
            writes.append(site.writes)
    row("churn: tick after the slot count changes (9,950 waiting)", "10.7 s", "<= 0.5 s",
        f"{median(changed):.3f} s ({median(writes):.0f} write transaction(s): the slot count)",
        median(changed) <= 0.5)
    for site in sites.values():
        site.close()


def churn(root: Path, repeats: int) -> None:
    print("churn: the tick right after a bulk submit of 9,950 jobs while the 50 slots are busy (every new job "
          "told why it waits)", flush=True)
    cpus, creates, writes = [], [], []
    for r in range(repeats):
        site = Site(root, f"churn{r}", [Job("running", t, f"a{i % 50}", "RUNNING") for i, t in enumerate(recent(50))]
                    + [Job("prepared", t, f"a{i % 50}", reason=("daemon", {})) for i, t in enumerate(recent(9950))],
                    concurrency=50)
        site.open().ticker.provider("mistral")  # a running daemon has its client built already
        cpu, _, result = site.tick()
        assert result.waiting_for_slot == 9950, result.summary()
        cpus.append(cpu)
        writes.append(site.writes)
        site.close()
        shutil.rmtree(site.dir)
        # and a bulk submit into free slots: the creates themselves, for scale
        site = Site(root, f"free{r}", [Job("prepared", t, f"a{i % 50}", reason=("daemon", {}))
                                       for i, t in enumerate(recent(10000))], concurrency=50)
        site.open().ticker.provider("mistral")
        cpu, _, result = site.tick()
        assert result.states["queued"] == 50, result.states
        creates.append(cpu)
        site.close()
        shutil.rmtree(site.dir)
    row("churn: tick after a bulk submit, 10k", "10.7 s (9,951 write transactions)", "<= 0.5 s",
        f"{median(cpus):.3f} s ({median(writes):.0f} write transaction(s))", median(cpus) <= 0.5)
    row("  the same into 50 free slots: 50 creates, 9,950 told to wait", "-", "-",
        f"{median(creates):.3f} s ({median(creates) / 50 * 1000:.1f} ms a create, with its two writes)", None)


def restart(root: Path, repeats: int) -> None:
    print("`ftctl tick` (a fresh process) with 1,000 failed jobs in the listing window", flush=True)
    jobs = ([Job("failed", t, f"a{i % 50}", "FAILED") for i, t in enumerate(spread(500, 3))]
            + [Job("failed", t, "other", "FAILED", ours=False) for t in spread(500, 3, 30)]
            + [Job("running", t, "a1", "RUNNING") for t in recent(1)])
    site = Site(root, "restart", jobs, concurrency=5)
    env = {**os.environ, KEY_ENV: KEY}
    walls, calls = [], []
    for _ in range(repeats):
        before = site.emulator.calls()
        _, wall, _, _ = run_cli(["tick"], site.config_path, env)
        calls.append(site.emulator.calls() - before)
        walls.append(wall)
    row("`ftctl tick` or a restart, 1,000 failed jobs in the window", "1,011 calls, 48 s", "<= 15 calls",
        f"{median(calls):.0f} calls, {median(walls):.1f} s", median(calls) <= 15)
    site.close()


def idle(root: Path, seconds: float) -> None:
    print(f"an idle daemon (poll 15s), 10,000 finished jobs + 1 running, CPU over {seconds:.0f} s", flush=True)
    jobs = ([Job("succeeded", t, f"a{i % 50}", "SUCCESS") for i, t in enumerate(spread(10000, 6))]
            + [Job("running", t, "a1", "RUNNING") for t in recent(1)])
    site = Site(root, "idle", jobs, concurrency=5)
    daemon = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(site.config_path), "daemon"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(12)  # start-up and the first tick (a longer listing) are not idling
    d0, e0, t0 = proc_cpu(daemon.pid), site.emulator.cpu(), time.monotonic()
    time.sleep(seconds)
    d1, e1, t1 = proc_cpu(daemon.pid), site.emulator.cpu(), time.monotonic()
    daemon.terminate()
    daemon.wait(timeout=60)
    share = (d1 - d0) / (t1 - t0) * 100
    row("idle daemon, 10,000 finished + 1 running", "9.6% CPU (+4.5% emulator)", "<= 0.5%",
        f"{share:.2f}% CPU (+{(e1 - e0) / (t1 - t0) * 100:.2f}% emulator)", share <= 0.5)
    site.close()


# -- reads ------------------------------------------------------------------------------------------


def cli_reads(root: Path, repeats: int) -> None:
    print("CLI reads: fresh `ftctl` processes, CPU (user + system), interleaved", flush=True)
    from scale_data import build_database as build

    sizes = {10: None, 10_000: None, 100_000: None}
    for n in sizes:
        d = root / f"reads{n}"
        d.mkdir()
        file, digest = training_file(d)
        running = min(50, n // 2)
        jobs = ([Job("succeeded", t, f"a{i % 50}") for i, t in enumerate(spread(n - running, 300))]
                + [Job("running", t, f"a{i % 50}", reason=("training", {"status": "RUNNING"}))
                   for i, t in enumerate(recent(running))])
        build(d, jobs, file, digest)
        sizes[n] = write_config(d, url=None, concurrency=50)
    all_flag = ["--all"] if "--all" in subprocess.run([sys.executable, "-m", "ftctl", "status", "--help"],
                                                      capture_output=True, text=True).stdout else []
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        started = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", "import sqlmodel"])
        _, _, usage = os.wait4(p.pid, 0)
        times.setdefault("sqlmodel cpu", []).append(usage.ru_utime + usage.ru_stime)
        times.setdefault("sqlmodel wall", []).append(time.perf_counter() - started)
        for n, config in sizes.items():
            cpu, wall, _, _ = run_cli(["status"], config)
            times.setdefault(f"status {n}", []).append(cpu)
            times.setdefault(f"status wall {n}", []).append(wall)
            times.setdefault(f"models {n}", []).append(run_cli(["models"], config)[0])
    base, models_base = median(times["status 10"]), median(times["models 10"])
    for n, label in ((10_000, "10k"), (100_000, "100k")):
        ratio = median(times[f"status {n}"]) / base
        row(f"`ftctl status`, {label} jobs, vs 10 jobs", "17.5 s CPU" if n == 10_000 else "125 s CPU, 915 MB",
            "<= 1.2x", f"{median(times[f'status {n}']):.2f} s CPU, {ratio:.2f}x", ratio <= 1.2)
    cpu, wall, peak, size = run_cli(["status", "--json", *all_flag], sizes[100_000])
    row("`status --json`" + (" --all" if all_flag else "") + ", 100k", "945 MB peak, 87 MB output",
        "streams; <= 100 MB peak", f"{peak / 1024:.0f} MB peak, {size / 2**20:.0f} MB output, {cpu:.1f} s CPU",
        peak / 1024 <= 100)
    # what is timed is a real answer: every agent's promoted model, not an empty listing
    for n, config in sizes.items():
        names = subprocess.run([sys.executable, "-m", "ftctl", "--config", str(config), "models", "-o", "name"],
                               capture_output=True, text=True, check=True).stdout.split()
        agents = min(50, n - min(50, n // 2))  # those with a succeeded job
        if len(names) != agents:
            raise RuntimeError(f"`ftctl models` at {n:,} jobs printed {len(names)} models, not {agents}")
    ratio = median(times["models 100000"]) / models_base
    row("`ftctl models`, 100k jobs, 50 agents, vs 10 jobs", "4.7 s, 335 MB", "<= 1.2x",
        f"{median(times['models 100000']):.2f} s CPU, {ratio:.2f}x", ratio <= 1.2)
    ratio = median(times["status 10"]) / median(times["sqlmodel cpu"])
    wall_ratio = median(times["status wall 10"]) / median(times["sqlmodel wall"])
    row("`ftctl status` start-up, 10 jobs, vs `python -c \"import sqlmodel\"`", "1.45x", "<= 1.3x",
        f"{ratio:.2f}x CPU ({base:.2f} s vs {median(times['sqlmodel cpu']):.2f} s), {wall_ratio:.2f}x wall",
        ratio <= 1.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds the idle daemon is watched")
    parser.add_argument("--only", default="tick,churn,restart,idle,cli,campaign,backlog")
    parser.add_argument("--campaign-jobs", type=int, default=10_000)
    parser.add_argument("--campaign-dir", type=Path, help="build the campaign here once, reuse it after")
    parser.add_argument("--backlog-jobs", type=int, default=100_000)
    args = parser.parse_args()
    from ftctl.controller.service.logs import configure

    configure("error")
    only = set(args.only.split(","))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory(prefix="ftctl-scale-") as d:
        root = Path(d)
        for name, fn, arg in (("tick", tick_scenarios, args.repeats), ("churn", churn, max(1, args.repeats // 2)),
                              ("restart", restart, max(1, args.repeats // 2)), ("idle", idle, args.idle),
                              ("cli", cli_reads, args.repeats)):
            if name in only:
                fn(root, arg)
        if "campaign" in only:
            from scale_campaign import campaign

            campaign(root, args.repeats, row, jobs=args.campaign_jobs, keep=args.campaign_dir, idle=args.idle)
        if "backlog" in only:
            from scale_backlog import backlog

            backlog(root, args.repeats, row, jobs=args.backlog_jobs, keep=args.campaign_dir)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    width = max(len(r[0]) for r in ROWS)
    print(f"{'measure':<{width}}  {'filed (issue 13)':<34} {'goal':<24} this run")
    for measure, filed, goal, now, met in ROWS:
        flag = "" if met is None else ("met" if met else "NOT MET")
        print(f"{measure:<{width}}  {filed:<34} {goal:<24} {now}  {flag}")


if __name__ == "__main__":
    main()
