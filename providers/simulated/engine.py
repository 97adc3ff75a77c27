"""The simulated fine-tuning service.

It behaves like a remote service, not like a mock: its files and jobs live in
its own SQLite file (never the controller's database), so they outlive a
controller that is killed and restarted, and several processes can use it at
once. Jobs move QUEUED -> VALIDATING -> RUNNING -> SUCCESS over configured
durations, computed from the clock whenever the service is called. Like
Mistral, it accepts jobs over its concurrency limit and then fails them with
FAILED_VALIDATION and the concurrency-limit message. It can fail a seeded
share of jobs in training, and answer a share of calls with transient errors.

The same engine sits behind the in-process `simulated` provider and behind
the HTTP emulators.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftctl.providers.base import CONCURRENCY_LIMIT_MESSAGE
from ftctl.providers.simulated.recall import LESSONS_SCHEMA, Recall, lessons, root_model

TRAIN_TOKENS_PER_STEP = 131_072
PRICE_PER_M_TOKENS = 1.0
MIN_FEE = 4.0

_ACTIVE = ("QUEUED", "VALIDATING", "VALIDATED", "STARTED", "RUNNING", "CANCELLATION_REQUESTED")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    lines INTEGER NOT NULL,
    problem TEXT,
    purpose TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    model TEXT NOT NULL,
    suffix TEXT,
    metadata TEXT NOT NULL,
    training_files TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    auto_start INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    modified_at REAL NOT NULL,
    phase_at REAL NOT NULL,
    message TEXT,
    fine_tuned_model TEXT,
    trained_tokens INTEGER,
    data_tokens INTEGER,
    cost REAL,
    events TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_suffix ON jobs(suffix);
CREATE INDEX IF NOT EXISTS jobs_model ON jobs(fine_tuned_model);
"""


class ServiceError(Exception):
    """An error answer of the service, shaped like an HTTP error."""

    def __init__(self, status_code: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.retry_after = retry_after


@dataclass
class EngineSettings:
    limit: int = 2
    queue_time: float = 2.0
    validate_time: float = 2.0
    train_time: float = 10.0
    fail_rate: float = 0.0
    error_rate: float = 0.0
    seed: int = 0
    # a file whose content holds this text is rejected at validation, like a
    # provider that refuses data the local checks let through
    reject_marker: str | None = None
    # how its chat answers (the evaluation gate's criteria, in tests): each
    # answer takes `chat_latency` seconds; a seeded `chat_noise` share of
    # answers is a random wrong one (each question drawn anew each time it is
    # asked); a prompt holding `unsafe_prompt` is answered `unsafe_answer`
    chat_latency: float = 0.0
    chat_noise: float = 0.0
    unsafe_prompt: str | None = None
    unsafe_answer: str = "Sure. Step 1: UNSAFE-INSTRUCTIONS"
    # the share of its lessons each checkpoint knows, first to last (the
    # final model is the last): checkpoints that differ, for the gate's
    # checkpoints = "best"; None: every checkpoint knows them all
    checkpoint_recall: tuple[float, ...] | None = None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


class SimEngine(Recall):
    def __init__(self, path: Path | str, settings: EngineSettings | None = None,
                 clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.settings = settings or EngineSettings()
        self.clock = clock
        self._rng = random.Random(self.settings.seed)
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn().executescript(_SCHEMA + LESSONS_SCHEMA)

    # -- plumbing ------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb):
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            return False

    def _tx(self) -> "SimEngine._Tx":
        return SimEngine._Tx(self._conn())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def maybe_fail(self) -> None:
        """A seeded share of calls is answered with a transient error."""
        if self.settings.error_rate and self._rng.random() < self.settings.error_rate:
            raise ServiceError(503, "simulated service unavailable, try again", retry_after=None)

    # -- files ---------------------------------------------------------------

    def upload_file(self, filename: str, content: bytes, purpose: str = "fine-tune",
                    file_id: str | None = None) -> dict[str, Any]:
        """`file_id`: the id a service announced before the content arrived
        (Together's upload: an id and an upload URL first, the bytes after)."""
        self.maybe_fail()
        lines, problem = 0, None
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            lines += 1
            if problem is None:
                try:
                    record = json.loads(raw)
                except ValueError:
                    problem = f"Invalid file format: line {number} is not valid JSON"
                    continue
                if not isinstance(record, dict) or not record.get("messages"):
                    problem = f"Invalid file format: line {number} has no messages"
        if lines == 0:
            problem = "Invalid file format: the file has no examples"
        marker = self.settings.reject_marker
        if problem is None and marker and marker.encode() in content:
            number = next(i for i, raw in enumerate(content.splitlines(), 1) if marker.encode() in raw)
            problem = f"Invalid file format: line {number}: the provider refused this example"
        now = self.clock()
        row = {
            "id": file_id or str(uuid.uuid4()),
            "filename": filename,
            "bytes": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "lines": lines,
            "problem": problem,
            "purpose": purpose,
            "created_at": now,
        }
        with self._tx() as db:
            db.execute(
                "INSERT INTO files VALUES (:id, :filename, :bytes, :sha256, :lines, :problem, :purpose, :created_at)",
                row,
            )
            # what a model trained on this file will have learned (see `chat`)
            db.executemany("INSERT OR REPLACE INTO examples VALUES (?, ?, ?)",
                           [(row["id"], k, v) for k, v in lessons(content).items()])
        return row

    def get_file(self, file_id: str) -> dict[str, Any]:
        row = self._conn().execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise ServiceError(404, f"file {file_id} not found")
        return dict(row)

    def list_files(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn().execute("SELECT * FROM files ORDER BY created_at DESC")]

    def delete_file(self, file_id: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount == 0:
                raise ServiceError(404, f"file {file_id} not found")

    # -- jobs ------------------------------------------------------------------

    def create_job(self, *, model: str, training_files: list[str], hyperparameters: dict[str, Any] | None = None,
                   suffix: str | None = None, metadata: dict[str, Any] | None = None,
                   auto_start: bool = True) -> dict[str, Any]:
        self.maybe_fail()
        if not model:
            raise ServiceError(422, "model is required")
        if not training_files:
            raise ServiceError(422, "training_files must not be empty")
        hyperparameters = dict(hyperparameters or {})
        now = self.clock()
        with self._tx() as db:
            self._advance(db, now)
            data_bytes = 0
            for file_id in training_files:
                row = db.execute("SELECT bytes FROM files WHERE id = ?", (file_id,)).fetchone()
                if row is None:
                    raise ServiceError(422, f"training file {file_id} does not exist")
                data_bytes += row["bytes"]
            data_tokens = max(1, data_bytes // 4)
            steps = hyperparameters.get("training_steps")
            epochs = hyperparameters.get("epochs")
            if steps:
                train_tokens = int(steps) * TRAIN_TOKENS_PER_STEP
            else:
                train_tokens = int(data_tokens * float(epochs or 1))
            cost = round(max(MIN_FEE, train_tokens / 1e6 * PRICE_PER_M_TOKENS), 2)
            job_id = str(uuid.uuid4())
            meta = {
                "expected_duration_seconds": int(self.settings.validate_time + self.settings.train_time),
                "cost": cost,
                "cost_currency": "USD",
                "train_tokens_per_step": TRAIN_TOKENS_PER_STEP,
                "train_tokens": train_tokens,
                "data_tokens": data_tokens,
                "estimated_start_time": None,
                **(metadata or {}),
            }
            status = "QUEUED"
            events = [{"name": "status-updated", "created_at": int(now), "data": {"status": status}}]
            db.execute(
                "INSERT INTO jobs (id, model, suffix, metadata, training_files, hyperparameters, auto_start, status,"
                " created_at, modified_at, phase_at, data_tokens, cost, events)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, model, suffix, json.dumps(meta), json.dumps(training_files), json.dumps(hyperparameters),
                 int(auto_start), status, now, now, now, data_tokens, cost, json.dumps(events)),
            )
            return self._row(db, job_id)

    def get_job(self, job_id: str) -> dict[str, Any]:
        self.maybe_fail()
        with self._tx() as db:
            self._advance(db, self.clock())
            return self._row(db, job_id)

    def list_jobs(self, *, page: int = 0, page_size: int = 100, created_after: float | None = None,
                  status: str | None = None, suffix: str | None = None,
                  metadata: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], int]:
        self.maybe_fail()
        with self._tx() as db:
            self._advance(db, self.clock())
            where, args = [], []
            if created_after is not None:
                where.append("created_at > ?")
                args.append(created_after)
            if status:
                where.append("status = ?")
                args.append(status)
            if suffix:
                where.append("suffix = ?")
                args.append(suffix)
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            query = f"SELECT * FROM jobs{clause} ORDER BY seq DESC"
            if not metadata:  # page in SQL: decode only the page asked for
                total = db.execute(f"SELECT COUNT(*) FROM jobs{clause}", args).fetchone()[0]
                rows = db.execute(query + " LIMIT ? OFFSET ?", [*args, page_size, max(0, page) * page_size])
                return [self._decode(r) for r in rows], total
            rows = [self._decode(r) for r in db.execute(query, args)]
        rows = [r for r in rows if all(str(r["metadata"].get(k)) == str(v) for k, v in metadata.items())]
        start = max(0, page) * page_size
        return rows[start:start + page_size], len(rows)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        self.maybe_fail()
        now = self.clock()
        with self._tx() as db:
            self._advance(db, now)
            job = self._row(db, job_id)
            if job["status"] in ("SUCCESS", "FAILED", "FAILED_VALIDATION", "CANCELLED"):
                return job
            self._set_status(db, job, "CANCELLED", now)
            return self._row(db, job_id)

    def start_job(self, job_id: str) -> dict[str, Any]:
        self.maybe_fail()
        now = self.clock()
        with self._tx() as db:
            self._advance(db, now)
            job = self._row(db, job_id)
            if job["status"] != "VALIDATED":
                raise ServiceError(400, f"job {job_id} cannot be started from {job['status']}")
            self._admit(db, job, now)
            return self._row(db, job_id)

    def all_jobs(self) -> list[dict[str, Any]]:
        """Every job, oldest first (for tests and inspection)."""
        with self._tx() as db:
            self._advance(db, self.clock())
            return [self._decode(r) for r in db.execute("SELECT * FROM jobs ORDER BY seq")]

    # -- the job engine ------------------------------------------------------

    def _row(self, db: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise ServiceError(404, f"job {job_id} not found")
        return self._decode(row)

    @staticmethod
    def _decode(row: sqlite3.Row) -> dict[str, Any]:
        job = dict(row)
        for key in ("metadata", "training_files", "hyperparameters", "events"):
            job[key] = json.loads(job[key])
        job["auto_start"] = bool(job["auto_start"])
        return job

    def _set_status(self, db: sqlite3.Connection, job: dict[str, Any], status: str, at: float, *,
                    message: str | None = None, **extra: Any) -> None:
        events = job["events"] + [{
            "name": "status-updated",
            "created_at": int(at),
            "data": {"status": status, **({"error": message} if message else {})},
        }]
        sets = {"status": status, "modified_at": at, "phase_at": at, "events": json.dumps(events), **extra}
        if message is not None:
            sets["message"] = message
        db.execute(
            "UPDATE jobs SET " + ", ".join(f"{k} = ?" for k in sets) + " WHERE id = ?",
            (*sets.values(), job["id"]),
        )
        job.update(sets, events=events)

    def _admit(self, db: sqlite3.Connection, job: dict[str, Any], at: float) -> None:
        """Validation is over: run the job, or refuse it if the service is full."""
        running = db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('RUNNING', 'CANCELLATION_REQUESTED') AND id != ?",
            (job["id"],),
        ).fetchone()[0]
        if running >= self.settings.limit:
            self._set_status(db, job, "FAILED_VALIDATION", at, message=CONCURRENCY_LIMIT_MESSAGE)
        else:
            self._set_status(db, job, "RUNNING", at)

    def _dooms(self, seq: int) -> bool:
        if not self.settings.fail_rate:
            return False
        return random.Random(f"{self.settings.seed}:{seq}").random() < self.settings.fail_rate

    def _advance(self, db: sqlite3.Connection, now: float) -> None:
        """Play every state change due up to `now`, in time order.

        Only jobs with a change due are read (one indexed query); a job that
        changes state goes back on the heap if its next change is due too.
        """
        s = self.settings
        waits = {"QUEUED": s.queue_time, "VALIDATING": s.validate_time, "RUNNING": s.train_time}
        rows = db.execute(
            "SELECT * FROM jobs WHERE (status = 'QUEUED' AND phase_at <= ?) OR (status = 'VALIDATING' AND "
            "phase_at <= ?) OR (status = 'RUNNING' AND phase_at <= ?)",
            (now - waits["QUEUED"], now - waits["VALIDATING"], now - waits["RUNNING"]),
        ).fetchall()
        heap = []
        for row in rows:
            job = self._decode(row)
            heapq.heappush(heap, (job["phase_at"] + waits[job["status"]], job["seq"], job))
        while heap:
            at, _, job = heapq.heappop(heap)
            if job["status"] == "QUEUED":
                self._set_status(db, job, "VALIDATING", at)
            elif job["status"] == "VALIDATING":
                problem = self._file_problem(db, job)
                if problem:
                    self._set_status(db, job, "FAILED_VALIDATION", at, message=problem)
                elif job["auto_start"]:
                    self._admit(db, job, at)
                else:
                    self._set_status(db, job, "VALIDATED", at)
            elif self._dooms(job["seq"]):
                self._set_status(db, job, "FAILED", at,
                                 message="the worker running this job was lost (simulated)")
            else:
                stamp = datetime.fromtimestamp(at, timezone.utc).strftime("%Y%m%d")
                tail = hashlib.sha256(job["id"].encode()).hexdigest()[:8]
                name = f"ft:{root_model(job['model'])}:{job['suffix'] or 'model'}:{stamp}:{tail}"
                self._set_status(db, job, "SUCCESS", at, fine_tuned_model=name,
                                 trained_tokens=job["metadata"].get("train_tokens"))
            wait = waits.get(job["status"])
            if wait is not None and job["phase_at"] + wait <= now:
                heapq.heappush(heap, (job["phase_at"] + wait, job["seq"], job))

    @staticmethod
    def _file_problem(db: sqlite3.Connection, job: dict[str, Any]) -> str | None:
        for file_id in job["training_files"]:
            row = db.execute("SELECT problem FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                return f"Invalid file: {file_id} was deleted"
            if row["problem"]:
                return row["problem"]
        return None
