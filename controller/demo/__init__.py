"""`ftctl demo`: the embedded default, in a temporary directory.

Five agents on a simulated provider that allows 2 concurrent jobs. ftctl is
configured (as the team once did by hand) to start 5 at once: the provider
takes them all and then fails 3 with the concurrency-limit message; ftctl
puts those back to `prepared` without counting an attempt, learns the limit
of 2 and runs the rest as slots free up. One job is made to fail in
training and is retried after a backoff.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.live import Live

AGENTS = ("content", "legal", "qa", "support", "analyst")

CONFIG = """\
[controller]
database = "sqlite:///ftctl.db"
poll_interval = "0.5s"

[retry]
max_attempts = 5
backoff_initial = "1s"
backoff_max = "4s"

[providers.sim]
kind = "simulated"
concurrency = 5         # what we ask for ...
max_concurrent = 2      # ... and what the provider allows
queue_time = "0.5s"
validate_time = "1s"
train_time = "{train_time}s"
fail_rate = 0.25        # a seeded share of jobs fails in training
seed = 3
"""

AGENT = """
[agents.{name}]
provider = "sim"
model = "open-mistral-7b"
training_file = "data/{name}.jsonl"
hyperparameters = {{ training_steps = 10, learning_rate = 0.0001 }}
"""


def write_demo_files(directory: Path, train_time: float = 3.0) -> Path:
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    source = resources.files("ftctl.controller.demo") / "data"
    for name in AGENTS:
        with resources.as_file(source / f"{name}.jsonl") as path:
            shutil.copyfile(path, data / f"{name}.jsonl")
    config = directory / "controller.toml"
    config.write_text(CONFIG.format(train_time=train_time) + "".join(AGENT.format(name=n) for n in AGENTS))
    return config


def try_lines(config_path: Path) -> str:
    """What to run next, one command a line, each ready to paste."""
    import shlex

    base = f"ftctl --config {shlex.quote(str(config_path))}"
    return "try:\n" + "\n".join(f"  {base} {cmd}" for cmd in ("status", "show 1", "models -o toml"))


def run_demo(console: Console, directory: Path | None = None, *, train_time: float = 3.0,
             timeout: float = 120.0) -> int:
    from ftctl.controller.config import load_config
    from ftctl.controller.service.logs import configure
    from ftctl.controller.engine.tick import Ticker
    from ftctl.controller.preflight.submit import plan_submissions, store_submissions
    from ftctl.controller.cli.views import status_table
    from ftctl.records import latest_models
    from ftctl.models import Store

    workdir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="ftctl-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = write_demo_files(workdir, train_time)
    log_path = workdir / "ftctl.log"
    log_file = open(log_path, "a", encoding="utf-8")
    configure("info", stream=log_file, json=True)
    config = load_config(config_path)
    console.print(f"ftctl demo in {workdir} (config {config_path.name}, log {log_path.name})")
    console.print("simulated provider: allows 2 concurrent jobs; ftctl is told 5 and learns the real limit\n")
    store = Store(config.database_url)
    store.acquire_daemon_lock()
    store_submissions(store, plan_submissions(config, [], all_agents=True))
    reconciler = Ticker(config, store)
    started = time.monotonic()
    try:
        with Live(status_table(store.list_jobs(), title="ftctl status"), console=console,
                  refresh_per_second=4) as live:
            while True:
                result = reconciler.tick()
                live.update(status_table(store.list_jobs(), title=f"ftctl status: {result.summary()}"))
                if result.all_terminal or time.monotonic() - started > timeout:
                    break
                time.sleep(config.controller.poll_interval)
        jobs = store.list_jobs()
        attempts = [a for j in jobs for a in store.attempts(j.id)]
        capacity = sum(1 for a in attempts if a.outcome == "capacity")
        retries = sum(1 for a in attempts if a.outcome == "failed")
        models = latest_models(jobs)
        console.print(f"\n{len(models)}/{len(AGENTS)} agents succeeded in {time.monotonic() - started:.1f}s; "
                      f"{capacity} capacity rejection{'s' if capacity != 1 else ''} absorbed (not counted as "
                      f"attempts), {retries} training failure{'s' if retries != 1 else ''} retried\n")
        for agent, model in models.items():
            console.print(f"  {agent:<8} {model}")
        console.print("\n" + try_lines(config_path), markup=False, soft_wrap=True)
        return 0 if len(models) == len(AGENTS) and all(j.state == "succeeded" for j in jobs) else 1
    finally:
        reconciler.close()
        store.close()
        log_file.close()
