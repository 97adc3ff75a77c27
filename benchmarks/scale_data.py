"""Builders for benchmarks/scale.py: ftctl databases with N jobs, provider
histories in an emulator's state file, and emulators in their own processes.

Rows are written with plain SQL (executemany), as ftctl's own code would
have left them, so building 100,000 jobs takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

KEY_ENV, KEY = "FTCTL_BENCH_KEY", "bench-key-0123456789"
MODEL = "open-mistral-7b"
EXAMPLE = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass
class Job:
    """One job as the benchmark lays it out: in ftctl's database (`state`)
    and, when `at_provider` is set, in the provider's history too."""

    state: str  # ftctl's state
    created: datetime
    agent: str = "a0"
    at_provider: str | None = None  # the provider's status (RUNNING, SUCCESS, FAILED ...)
    ours: bool = True  # False: someone else's job on the same key (provider history only)
    reason: tuple[str, dict] | None = None


def training_file(directory: Path) -> tuple[Path, str]:
    path = directory / "train.jsonl"
    path.write_text(EXAMPLE)
    return path, hashlib.sha256(EXAMPLE.encode()).hexdigest()


def write_config(directory: Path, *, url: str | None, concurrency: int, poll: str = "15s",
                 provider: str = "mistral") -> Path:
    if url is None:  # no provider process needed (read benchmarks)
        block = f'[providers.{provider}]\nkind = "simulated"\nconcurrency = {concurrency}\n'
    else:
        block = (f'[providers.{provider}]\nkind = "mistral"\nconcurrency = {concurrency}\nbase_url = "{url}"\n'
                 f'api_key_env = "{KEY_ENV}"\ntimeout = "60s"\n')
    path = directory / "controller.toml"
    path.write_text(f'[controller]\ndatabase = "sqlite:///ftctl.db"\npoll_interval = "{poll}"\n'
                    f'log_level = "error"\n\n{block}')
    return path


def build_database(directory: Path, jobs: list[Job], file: Path, digest: str, *, provider: str = "mistral",
                   file_id: str | None = None) -> tuple[Path, list[tuple[Job, str, str]]]:
    """ftctl's database with `jobs` (those with ours=True); returns the path
    and, for each job at the provider, (job, provider job id, client token)."""
    from ftctl.models import Store

    db = directory / "ftctl.db"
    Store(f"sqlite:///{db}").close()  # the schema, by ftctl's own migrations
    rows, at_provider = [], []
    for i, job in enumerate(jobs, start=1):
        pid = str(uuid.UUID(int=i)) if job.at_provider else None
        token = f"{job.agent[:9]}-{i:08x}" if job.at_provider else None
        if job.at_provider:
            at_provider.append((job, pid, token))
        if not job.ours:
            continue
        code, args = job.reason or {"prepared": ("slot", {"provider": provider}),
                                    "running": ("training", {"status": "RUNNING"}),
                                    "queued": ("queued_at", {"status": "QUEUED"})}.get(job.state, (None, None))
        done = job.state in ("succeeded", "failed", "cancelled")
        rows.append({
            "agent": job.agent, "provider": provider, "model": MODEL, "training_file": str(file),
            "content_hash": digest, "hyperparameters": '{"training_steps": 10}',
            "identity": hashlib.sha256(str(i).encode()).hexdigest(), "replica": 0, "state": job.state,
            "attempt": 1 if job.at_provider else 0, "provider_file_id": file_id if job.at_provider else None,
            "provider_job_id": pid, "client_token": token,
            "intent_at": stamp(job.created) if job.at_provider else None,
            "provider_status": job.at_provider, "estimated_cost": 4.0, "actual_cost": 4.0 if done else None,
            "fine_tuned_model": f"ft:{MODEL}:{token}:x" if job.state == "succeeded" else None,
            "last_error": "training failed" if job.state == "failed" else None,
            "reason_code": code, "reason_args": json.dumps(args) if args is not None else None,
            "cancel_pending": 0, "created_at": stamp(job.created),
            "updated_at": stamp(job.created + timedelta(minutes=20) if done else job.created),
            # no evaluation gate: a succeeded job's model is promoted as it succeeds (engine.jobs.fire)
            "promotion": "promoted" if job.state == "succeeded" else None,
            "promoted_at": stamp(job.created + timedelta(minutes=20)) if job.state == "succeeded" else None,
        })
    with sqlite3.connect(db) as conn:
        cols = list(rows[0]) if rows else []
        if rows:
            conn.executemany(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})",
                             rows)
        # a finished job's training log had its last read (the daemon's log reader) when it finished
        conn.execute("INSERT INTO log_cursors (provider_job_id, job_id, fetched_at, final) SELECT provider_job_id, "
                     "id, updated_at, 1 FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') "
                     "AND provider_job_id IS NOT NULL")
        if file_id:
            conn.execute("INSERT INTO uploaded_files (provider, content_hash, file_id, uploaded_at) "
                         "VALUES (?, ?, ?, ?)", (provider, digest, file_id, stamp(utcnow())))
    return db, at_provider


def build_history(state_file: Path, at_provider: list[tuple[Job, str, str]]) -> str:
    """The emulator's own SQLite file: one uploaded file, then every job."""
    from ftctl.providers.simulated.engine import EngineSettings, SimEngine

    SimEngine(state_file, EngineSettings()).close()  # its schema
    file_id = str(uuid.uuid4())
    now = time.time()
    rows = []
    for job, pid, token in sorted(at_provider, key=lambda t: t[0].created):
        at = job.created.replace(tzinfo=timezone.utc).timestamp()
        status = job.at_provider
        message = "the worker running this job was lost (simulated)" if status == "FAILED" else None
        events = [{"name": "status-updated", "created_at": int(at), "data": {"status": "QUEUED"}},
                  {"name": "status-updated", "created_at": int(at) + 60,
                   "data": {"status": status, **({"error": message} if message else {})}}]
        done = status in ("SUCCESS", "FAILED", "CANCELLED", "FAILED_VALIDATION")
        rows.append((pid, MODEL, token if job.ours else f"other-{pid[-8:]}", json.dumps({"cost": 4.0}),
                     json.dumps([file_id]), '{"training_steps": 10}', 1, status, at,
                     at + 1200 if done else at, now if status == "RUNNING" else at, message,
                     f"ft:{MODEL}:{token}:x" if status == "SUCCESS" else None, 1310720, 100, 4.0,
                     json.dumps(events)))
    with sqlite3.connect(state_file) as conn:
        conn.execute("INSERT INTO files VALUES (?, 'train.jsonl', ?, 'x', 1, NULL, 'fine-tune', ?)",
                     (file_id, len(EXAMPLE), now))
        conn.executemany("INSERT INTO jobs (id, model, suffix, metadata, training_files, hyperparameters, "
                         "auto_start, status, created_at, modified_at, phase_at, message, fine_tuned_model, "
                         "trained_tokens, data_tokens, cost, events) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return file_id


class EmulatorProcess:
    """`ftctl emulator --kind mistral` in its own process (its CPU is not ftctl's)."""

    def __init__(self, state_file: Path, *, limit: int = 100_000):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ftctl", "emulator", "--kind", "mistral", "--port", "0", "--state-file",
             str(state_file), "--limit", str(limit), "--queue-time", "7d", "--validate-time", "7d",
             "--train-time", "7d"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        found = re.search(r"on (http://\S+)", line)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.url = found.group(1)

    def calls(self) -> int:
        """Every provider API call it answered so far."""
        for path in ("/_emulator/calls", "/_emulator/state"):
            try:
                with urllib.request.urlopen(self.url + path, timeout=600) as r:
                    return sum(json.loads(r.read())["calls"].values())
            except urllib.error.HTTPError:
                continue
        raise RuntimeError("no call counts")

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# runs a command and reports its rusage on stderr's last line: measured from a
# small process, the child's peak RSS is its own (not a copy of this one's heap)
_RUN = ("import json, os, subprocess, sys\n"
        "p = subprocess.Popen(sys.argv[1:], stderr=subprocess.DEVNULL)\n"
        "_, status, u = os.wait4(p.pid, 0)\n"
        "print(json.dumps([os.waitstatus_to_exitcode(status), u.ru_utime + u.ru_stime, u.ru_maxrss]), "
        "file=sys.stderr)\n")


def run_cli(args: list[str], config: Path, env: dict[str, str] | None = None) -> tuple[float, float, int, int]:
    """One `ftctl` command in a fresh process: (CPU seconds, wall seconds,
    peak RSS in KB, bytes written to stdout)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _RUN, sys.executable, "-m", "ftctl", "--config", str(config),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    size = 0
    while chunk := proc.stdout.read(1 << 16):
        size += len(chunk)
    code, cpu, peak = json.loads(proc.stderr.read().decode().strip().splitlines()[-1])
    proc.wait()
    if code != 0:
        raise RuntimeError(f"ftctl {' '.join(args)} exited {code}")
    return cpu, time.perf_counter() - started, peak, size
