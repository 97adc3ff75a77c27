"""Benchmark data made the way users make it (issue 18): a bulk campaign
through ftctl's own submit path (`plan_submissions` + `store_submissions`,
what `ftctl submit --all --force` runs) and the daemon's `Ticker` (and its
training-log reader), on the real clock: every job is created within
minutes. The campaign runs on the simulated provider in process (its
service's state file: `emulator.db`); what is measured afterwards reads the
same history through `ftctl emulator --kind mistral` in its own process, so
each listing is the real `mistralai` SDK over HTTP (`Campaign.serve`).

    .venv/bin/python benchmarks/campaign.py --jobs 2000 --concurrency 200

builds one in a temporary folder and prints what it made; scale.py's
`campaign` rows use `Campaign` directly.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_data import KEY, KEY_ENV, MODEL  # noqa: E402

HOOK = '\n[[hooks]]\non = ["*"]\ncommand = ["/bin/false"]\nbackoff_initial = "1h"\nbackoff_max = "1h"\n'


class Emulator:
    """`ftctl emulator --kind mistral` in its own process, with job timings."""

    def __init__(self, state_file: Path, *, train_time: str, limit: int = 100_000):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftctl", "emulator", "--kind", "mistral", "--port", "0", "--state-file",
             str(state_file), "--limit", str(limit), "--queue-time", "10ms", "--validate-time", "10ms",
             "--train-time", train_time], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        found = re.search(r"on (http://\S+)", self.proc.stdout.readline())
        if not found:
            self.proc.kill()
            raise RuntimeError("emulator did not start")
        self.url = found.group(1)

    def calls(self) -> int:
        import json
        import urllib.request

        with urllib.request.urlopen(self.url + "/_emulator/calls", timeout=600) as r:
            return sum(json.loads(r.read())["calls"].values())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Campaign:
    """`jobs` jobs over `agents` agents, run to `succeeded` through the
    emulator with `concurrency` slots; then `running` more that stay running."""

    def __init__(self, root: Path, *, jobs: int, running: int = 50, agents: int = 50, concurrency: int = 500,
                 hooks: bool = True, logs: bool = True, extra: str = ""):
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.dir / "emulator.db"
        self.agents = [f"a{i}" for i in range(agents)]
        self.jobs, self.running, self.concurrency = jobs, running, concurrency
        self.hooks, self.logs, self.extra = hooks, logs, extra
        self.emulator: Emulator | None = None
        self.seconds = 0.0

    def config(self, *, hooks: bool | None = None, extra: str | None = None, train_time: str = "1s") -> Path:
        """controller.toml (the hook that never delivers, unless hooks=False):
        the simulated service while the campaign runs, the emulator after."""
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        text = ('[controller]\ndatabase = "sqlite:///ftctl.db"\npoll_interval = "15s"\nlog_level = "error"\n\n'
                f'[providers.mistral]\nconcurrency = {self.concurrency}\n'
                + (f'kind = "mistral"\nbase_url = "{self.emulator.url}"\napi_key_env = "{KEY_ENV}"\ntimeout = "60s"\n'
                   if self.emulator else f'kind = "simulated"\nstate_file = "{self.state_file.name}"\n'
                   f'queue_time = "10ms"\nvalidate_time = "10ms"\ntrain_time = "{train_time}"\n')
                + '\n[logs]\nbatch = 1000\ninterval = "1h"\n')
        for a in self.agents:
            f = data / f"{a}.jsonl"
            if not f.exists():
                f.write_text("".join(f'{{"messages": [{{"role": "user", "content": "q{i} {a}"}}, '
                                     f'{{"role": "assistant", "content": "answer {i}"}}]}}\n' for i in range(20)))
            text += (f'\n[agents.{a}]\nprovider = "mistral"\nmodel = "{MODEL}"\ntraining_file = "data/{a}.jsonl"\n'
                     'hyperparameters = { training_steps = 100, learning_rate = 0.0001 }\n')
        text += (self.extra if extra is None else extra) + (HOOK if (self.hooks if hooks is None else hooks) else "")
        path = self.dir / ("controller.toml" if hooks is None and extra is None and train_time == "1s" else
                           f"controller-{hashlib.sha256(text.encode()).hexdigest()[:8]}.toml")
        path.write_text(text)
        return path

    def _submit(self, n: int, train_time: str) -> None:
        from ftctl.controller.config import load_config
        from ftctl.controller.preflight.submit import plan_submissions, store_submissions
        from ftctl.models import Store

        cfg = load_config(self.config(train_time=train_time))
        plans = plan_submissions(cfg, [], all_agents=True)
        store = Store(cfg.database_url)
        try:
            for start in range(0, n, len(plans)):
                store_submissions(store, plans[:n - start], force=True)
        finally:
            store.close()

    def _run_until(self, done, *, train_time: str, limit_s: float) -> None:
        from ftctl.controller.config import load_config
        from ftctl.controller.engine.tick import Ticker
        from ftctl.controller.engine.trainlogs import LogFetcher
        from ftctl.models import Store

        cfg = load_config(self.config(train_time=train_time))
        store = Store(cfg.database_url)
        ticker = Ticker(cfg, store, rng=random.Random(0))
        fetcher = LogFetcher(cfg, store) if self.logs else None
        deadline = time.monotonic() + limit_s
        try:
            while True:
                result = ticker.tick()
                if fetcher is not None:
                    fetcher.run_once()
                if done(result.states):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"campaign not done in {limit_s:.0f} s: {result.states}")
                time.sleep(0.05)
            if fetcher is not None:  # the last read of the jobs that just finished
                while fetcher.run_once():
                    pass
        finally:
            if fetcher is not None:
                fetcher.close()
            ticker.close()
            store.close()

    def build(self, *, limit_s: float = 1800) -> "Campaign":
        started = time.monotonic()
        self._submit(self.jobs - self.running, "1s")
        self._run_until(lambda s: s.get("succeeded", 0) == self.jobs - self.running, train_time="1s",
                        limit_s=limit_s)
        # the last ones stay running: the same service, training for ever
        self._submit(self.running, "7d")
        self._run_until(lambda s: s.get("running", 0) == self.running, train_time="7d", limit_s=limit_s)
        self.seconds = time.monotonic() - started
        return self

    def serve(self) -> "Campaign":
        """The history behind `ftctl emulator --kind mistral` (its own
        process); config() points the provider at it from now on."""
        import os

        os.environ[KEY_ENV] = KEY
        self.emulator = Emulator(self.state_file, train_time="7d")
        return self

    def counts(self) -> dict[str, int]:
        with sqlite3.connect(self.dir / "ftctl.db") as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("jobs", "job_events", "outbox", "log_points")}

    def created_within(self) -> float:
        """Minutes between the first and the last job created at the provider."""
        with sqlite3.connect(self.state_file) as conn:
            lo, hi = conn.execute("SELECT min(created_at), max(created_at) FROM jobs").fetchone()
        return (hi - lo) / 60

    def close(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    from ftctl.controller.service.logs import configure

    configure("error")
    with tempfile.TemporaryDirectory(prefix="ftctl-campaign-") as d:
        c = Campaign(Path(d), jobs=args.jobs, concurrency=args.concurrency).build()
        print(f"{args.jobs:,} jobs in {c.seconds:.0f} s, created within {c.created_within():.1f} min: {c.counts()}")
        c.close()


if __name__ == "__main__":
    main()
