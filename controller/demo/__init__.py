"""`ftctl demo`: the embedded default, in a temporary directory.

Five agents on a simulated provider that allows 2 concurrent jobs. ftctl is
configured (as the team once did by hand) to start 5 at once: the provider
takes every job it is given and then fails those over its limit with the
concurrency-limit message; ftctl puts them back to `prepared` without
counting an attempt, learns the limit of 2 and runs the rest as slots free
up. One job is made to fail in training and is retried after a backoff.

Two of the agents are a pipeline: `conversation` trains on `feedback`'s
fine-tuned model (model = "@feedback"), so it waits until that job
succeeded. Two have an evaluation gate: `conversation`'s model answers its
held-out questions and is promoted; `legal`'s learned nothing its questions
ask, is rejected, and never reaches the export file (agents/models.toml).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.live import Live

AGENTS = ("feedback", "content", "legal", "qa", "conversation")
DATA = AGENTS + ("eval-conversation", "eval-legal")

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
seed = {seed}

[logs]
interval = "2s"         # training logs read every 2 s (default 30 s): the jobs here are short

[export]
path = "agents/models.toml"   # each agent's newest promoted model, for the agents to read
"""

AGENT = """
[agents.{name}]
provider = "sim"
model = "{model}"
training_file = "data/{name}.jsonl"
hyperparameters = {{ training_steps = 10, learning_rate = 0.0001 }}
"""

PIPELINE = """depends_on = ["feedback"]       # stage 2: trains on stage 1's fine-tuned model
"""

GATE = """
[agents.{name}.eval]
file = "data/eval-{name}.jsonl"   # held-out questions and the answers expected
metric = "exact"
min_improvement = 0.5
"""


def write_demo_files(directory: Path, train_time: float = 3.0, seed: int = 1) -> Path:
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    source = resources.files("ftctl.controller.demo") / "data"
    for name in DATA:
        with resources.as_file(source / f"{name}.jsonl") as path:
            shutil.copyfile(path, data / f"{name}.jsonl")
    text = CONFIG.format(train_time=train_time, seed=seed)
    for name in AGENTS:
        text += AGENT.format(name=name, model="@feedback" if name == "conversation" else "open-mistral-7b")
        if name == "conversation":
            text += PIPELINE
        if name in ("conversation", "legal"):
            text += GATE.format(name=name)
    config = directory / "controller.toml"
    config.write_text(text)
    return config


def try_lines(config_path: Path, show: int = 1) -> str:
    """What to run next, one command a line, each ready to paste."""
    import shlex

    base = f"ftctl --config {shlex.quote(str(config_path))}"
    return "try:\n" + "\n".join(f"  {base} {cmd}" for cmd in ("status", f"show {show}", "models --all",
                                                                "models -o toml"))


def run_demo(console: Console, directory: Path | None = None, *, train_time: float = 3.0,
             timeout: float = 120.0) -> int:
    from ftctl.controller.cli.views import status_table
    from ftctl.controller.config import load_config
    from ftctl.controller.engine.tick import Ticker
    from ftctl.controller.engine.trainlogs import LogFetcher
    from ftctl.controller.preflight.submit import plan_submissions, store_submissions
    from ftctl.controller.service.logs import configure
    from ftctl.models import Store

    # without --dir it runs in a temporary folder of its own, removed at the end
    keep = directory is not None
    workdir = Path(directory) if keep else Path(tempfile.mkdtemp(prefix="ftctl-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = write_demo_files(workdir, train_time)
    log_path = workdir / "ftctl.log"
    log_file = open(log_path, "a", encoding="utf-8")
    configure("info", stream=log_file, json=True)
    config = load_config(config_path)
    console.print(f"ftctl demo in {workdir} (config {config_path.name}, log {log_path.name})")
    console.print("simulated provider: allows 2 concurrent jobs; ftctl is told 5 and learns the real limit;\n"
                  "conversation trains on feedback's model; conversation and legal must pass an evaluation\n")
    store = Store(config.database_url)
    reconciler = trainlogs = None
    started = time.monotonic()
    try:
        store.acquire_daemon_lock()
        store_submissions(store, plan_submissions(config, [], all_agents=True))
        reconciler = Ticker(config, store)
        trainlogs = LogFetcher(config, store)  # as the daemon does: `ftctl logs` has the jobs' training afterwards
        if console.is_terminal:
            with Live(status_table(store.list_jobs(), title="ftctl status"), console=console,
                      refresh_per_second=4) as live:
                while True:
                    result = reconciler.tick()
                    trainlogs.run_once()
                    live.update(status_table(store.list_jobs(), title=f"ftctl status: {result.summary()}"))
                    if result.all_terminal or time.monotonic() - started > timeout:
                        break
                    time.sleep(config.controller.poll_interval)
        else:  # a pipe or a log: a line when the summary changes, then the jobs in plain columns
            said = None
            while True:
                result = reconciler.tick()
                trainlogs.run_once()
                if result.summary() != said:
                    said = result.summary()
                    console.print(f"{time.monotonic() - started:5.1f}s  {said}", markup=False, highlight=False)
                if result.all_terminal or time.monotonic() - started > timeout:
                    break
                time.sleep(config.controller.poll_interval)
            _plain_jobs(console, store.list_jobs())
        trainlogs.run_once()  # the last points of the jobs that just finished
        return _summary(console, store, config, config_path, time.monotonic() - started, kept=keep)
    finally:
        for part in (trainlogs, reconciler, store):
            if part is not None:
                part.close()
        log_file.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _plain_jobs(console: Console, jobs: list) -> None:
    import io

    from ftctl.controller.cli.views import COLUMNS, cells, plain
    from ftctl.models import utcnow
    from ftctl.controller.records import live_facts

    text = io.StringIO()
    now = utcnow()
    plain((cells(j, now, live_facts(None, None)) for j in jobs), COLUMNS, text.write)
    console.print("\n" + text.getvalue().rstrip("\n"), markup=False, highlight=False, soft_wrap=True)


def _summary(console: Console, store, config, config_path: Path, seconds: float, kept: bool = True) -> int:
    jobs = {j.agent: j for j in store.list_jobs()}
    attempts = [a for j in jobs.values() for a in store.attempts(j.id)]
    capacity = sum(1 for a in attempts if a.outcome == "capacity")
    retries = sum(1 for a in attempts if a.outcome == "failed")
    succeeded = sum(1 for j in jobs.values() if j.state == "succeeded")
    promoted = sorted(a for a, j in jobs.items() if j.promotion == "promoted")
    rejected = sorted(a for a, j in jobs.items() if j.promotion == "rejected")
    console.print(f"\n{succeeded}/{len(AGENTS)} agents succeeded in {seconds:.1f}s; {capacity} capacity rejections "
                  f"absorbed (not counted as attempts), {retries} training failure{'s' if retries != 1 else ''} "
                  f"retried; conversation trained on feedback's model; gate: {len(promoted)} promoted, "
                  f"{len(rejected)} rejected ({', '.join(rejected) or 'none'})\n")
    stage1, stage2 = jobs.get("feedback"), jobs.get("conversation")
    if stage1 is not None and stage2 is not None:
        console.print(f"  pipeline: conversation (job {stage2.id}) was created on {stage2.base_model}", markup=False)
    for agent in ("conversation", "legal"):
        job = jobs.get(agent)
        if job is not None and job.promotion in ("promoted", "rejected"):
            from ftctl.controller.records import reason_text

            console.print(f"  gate {agent}: {reason_text(job)}", markup=False)
    export = config.resolve(config.export.path)
    console.print(f"\n{config.export.path} (promoted models only):", markup=False)
    console.print(export.read_text() if export.exists() else "(not written)", markup=False)
    if kept:
        console.print(try_lines(config_path, stage2.id if stage2 else 1), markup=False, soft_wrap=True)
    else:
        console.print(f"its folder {config_path.parent} is removed now; `ftctl demo --dir DIR` keeps the files, "
                      f"to try `ftctl --config DIR/controller.toml status` after it", markup=False, soft_wrap=True)
    ok = (succeeded == len(AGENTS) and rejected == ["legal"]
          and stage2 is not None and stage1 is not None and stage2.base_model == stage1.fine_tuned_model)
    return 0 if ok else 1
