"""Reads for the command line and the Python API, without the ORM.

A read answers from a few indexed queries and streams its rows: SQLite
through the standard library's `sqlite3` (a read imports no SQLAlchemy at
all), PostgreSQL through SQLAlchemy Core, with the same SQL for both. Writes,
migrations and the daemon use `models.store.Store`; a database whose schema
is not at this code's head is brought there by opening a Store first
(`SchemaBehind`).
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftctl.models.reads_dashboard import DashboardReads
from ftctl.models.reads_history import HistoryReads
from ftctl.models.schema import FINISHED_STATES, SCHEMA_HEAD, StoreError, lock_file_pid, redact_url

JOB_COLUMNS = ("id", "agent", "provider", "model", "state", "attempt", "training_file", "content_hash",
               "hyperparameters", "provider_file_id", "provider_job_id", "client_token", "intent_at",
               "provider_status", "fine_tuned_model", "estimated_cost", "actual_cost", "data_tokens",
               "trained_tokens", "last_error", "reason_code", "reason_args", "not_before", "cancel_pending",
               "created_at", "updated_at", "storage_per_month", "upstream_job_ids", "model_job_id", "base_model",
               "training_files", "promotion", "promoted_at")
JobRow = namedtuple("JobRow", JOB_COLUMNS)
EventRow = namedtuple("EventRow", "id event_id job_id name at from_state to_state trigger reason provider_status")
ModelRow = namedtuple("ModelRow", "agent model job_id provider finished_at")
AttemptRow = namedtuple("AttemptRow", "number client_token provider_job_id outcome counted submitted_at ended_at")

_TIMES = tuple(i for i, c in enumerate(JOB_COLUMNS) if c in ("intent_at", "not_before", "created_at", "updated_at",
                                                              "promoted_at"))
_JSON = tuple(i for i, c in enumerate(JOB_COLUMNS) if c in ("hyperparameters", "reason_args", "upstream_job_ids",
                                                             "training_files"))
_BOOL = JOB_COLUMNS.index("cancel_pending")
_SELECT = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM jobs"


class SchemaBehind(StoreError):
    """The database's schema is not this code's: open a Store (it migrates) first."""


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def job_row(raw: Sequence[Any]) -> JobRow:
    values = list(raw)
    for i in _TIMES:
        if values[i] is not None:
            values[i] = _time(values[i])
    for i in _JSON:
        if values[i] is not None:
            values[i] = _json(values[i])
    values[_BOOL] = bool(values[_BOOL])
    return JobRow(*values)


class Filter:
    """Which jobs: any of `states`, `agents`, `providers` (None: all)."""

    def __init__(self, states: Iterable[str] | None = None, agents: Iterable[str] | None = None,
                 providers: Iterable[str] | None = None):
        self.states = tuple(states) if states is not None else None
        self.agents = tuple(agents) if agents is not None else None
        self.providers = tuple(providers) if providers is not None else None

    def conditions(self, params: dict[str, Any], states: Sequence[str] | None = None) -> list[str]:
        """SQL conditions (their values added to `params`); `states` narrows the states."""
        parts = []
        for column, values in (("state", states if states is not None else self.states), ("agent", self.agents),
                               ("provider", self.providers)):
            if values is None:
                continue
            names = []
            for value in values:
                names.append(f":p{len(params)}")
                params[names[-1][1:]] = value
            parts.append(f"{column} IN ({', '.join(names)})" if names else "0 = 1")
        return parts

    def sql(self, params: dict[str, Any], states: Sequence[str] | None = None) -> str:
        """A WHERE clause, or ""."""
        parts = self.conditions(params, states)
        return (" WHERE " + " AND ".join(parts)) if parts else ""


class Reads(HistoryReads, DashboardReads):
    def __init__(self, url: str):
        self.url = url
        self.sqlite_path: Path | None = None
        self._conn: Any = None
        self._engine: Any = None
        self._streams = 0
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if not path or path == ":memory:":
                raise StoreError("an in-memory database has nothing to read")
            self.sqlite_path = Path(path)
            if not self.sqlite_path.exists():
                raise StoreError(f"database {self.sqlite_path} does not exist yet (run `ftctl submit` first)")
            import sqlite3

            try:
                self._conn = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None,
                                             check_same_thread=False)
                self._conn.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open database {self.sqlite_path}: {exc}") from None
        else:
            from sqlalchemy import create_engine

            if url.startswith(("postgresql://", "postgres://")):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            try:
                self._engine = create_engine(url, pool_pre_ping=True)
                self._conn = self._engine.connect()
            except ImportError:
                raise StoreError(f"cannot open database {redact_url(self.url)}: its driver is not installed "
                                 f"(for PostgreSQL: pip install 'ftctl[postgres]')") from None
            except Exception as exc:  # noqa: BLE001 - any driver's refusal is one line
                raise StoreError(f"cannot open database {redact_url(self.url)}: {exc.__class__.__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        try:
            version = self._one("SELECT version_num FROM alembic_version")
        except Exception:  # noqa: BLE001 - no version table yet
            version = None
        if version is None or version[0] != SCHEMA_HEAD:
            self.close()
            raise SchemaBehind(f"database schema {version[0] if version else 'none'} is not {SCHEMA_HEAD}")

    # -- plumbing ------------------------------------------------------------------------

    def _rows(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[tuple]:
        """Rows as the driver gives them, streamed."""
        if self._engine is None:
            for row in self._conn.execute(sql, params or {}):  # (not `yield from`: a closed
                yield row  # connection must not make an abandoned read raise)
            return
        from sqlalchemy import text

        # a server-side cursor lives in the connection's transaction: the
        # transaction ends with the last of the reads streaming at once
        # (`status` merges two listings and counts while they stream)
        result = self._conn.execution_options(stream_results=True, yield_per=500).execute(text(sql), params or {})
        self._streams += 1
        try:
            yield from result
        finally:
            result.close()
            self._streams -= 1
            if self._streams == 0 and self._conn is not None:
                self._conn.rollback()

    def _one(self, sql: str, params: dict[str, Any] | None = None) -> tuple | None:
        return next(iter(self._rows(sql, params)), None)

    def _time_param(self, at: datetime) -> Any:
        # SQLite compares the text SQLAlchemy stored; PostgreSQL has real timestamps
        return at.strftime("%Y-%m-%d %H:%M:%S.%f") if self._engine is None else at

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- jobs ----------------------------------------------------------------------------------

    def job(self, job_id: int) -> JobRow | None:
        raw = self._one(_SELECT + " WHERE id = :id", {"id": job_id})
        return job_row(raw) if raw is not None else None

    def jobs(self, where: Filter | None = None, *, states: Sequence[str] | None = None) -> Iterator[JobRow]:
        """Every job `where` selects (`states` narrows it), by id, streamed."""
        params: dict[str, Any] = {}
        sql = _SELECT + (where or Filter()).sql(params, states) + " ORDER BY id"
        return (job_row(r) for r in self._rows(sql, params))

    def last_finished(self, where: Filter, limit: int) -> list[JobRow]:
        """The `limit` jobs that finished last among those `where` selects,
        by id: one indexed query a finished state (state, updated_at)."""
        states = [s for s in FINISHED_STATES if where.states is None or s in where.states]
        found: list[JobRow] = []
        for state in states:
            params: dict[str, Any] = {"n": limit}
            sql = _SELECT + where.sql(params, [state]) + " ORDER BY updated_at DESC, id DESC LIMIT :n"
            found.extend(job_row(r) for r in self._rows(sql, params))
        found.sort(key=lambda j: (j.updated_at, j.id), reverse=True)
        return sorted(found[:limit], key=lambda j: j.id)

    def open_promotions(self, where: Filter) -> Iterator[JobRow]:
        """Succeeded jobs whose model the gate has not settled yet (still live:
        the daemon works on them), by id."""
        params: dict[str, Any] = {}
        sql = (_SELECT + where.sql(params, ["succeeded"])
               + " AND promotion IN ('candidate', 'evaluating') ORDER BY id")
        return (job_row(r) for r in self._rows(sql, params))

    def count(self, where: Filter | None = None, *, states: Sequence[str] | None = None) -> int:
        params: dict[str, Any] = {}
        return self._one("SELECT COUNT(*) FROM jobs" + (where or Filter()).sql(params, states), params)[0]

    def count_by_state(self) -> dict[str, int]:
        return {state: n for state, n in self._rows("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def promoted_models(self, where: Filter | None = None) -> list[ModelRow]:
        """Each agent's latest promoted model (the latest promotion, then the
        highest job id), by agent: one query, grouped by agent in the database
        over an index that holds exactly those jobs (ix_jobs_promoted),
        whatever the history. `finished_at` is when it was promoted."""
        params: dict[str, Any] = {}
        where = where or Filter()
        narrow = "".join(" AND " + c for c in Filter(None, where.agents, where.providers).conditions(params))
        # SQLite without statistics would rather walk (state, updated_at): name the index
        hint = " INDEXED BY ix_jobs_promoted" if self._engine is None else ""
        promoted = "state = 'succeeded' AND promotion = 'promoted' AND fine_tuned_model IS NOT NULL"
        sql = ("SELECT j.agent, j.fine_tuned_model, j.id, j.provider, j.promoted_at FROM ("
               f"SELECT agent, MAX(promoted_at) AS at FROM jobs{hint} WHERE {promoted}{narrow} GROUP BY agent) AS m "
               f"JOIN jobs AS j{hint} ON j.agent = m.agent AND j.promoted_at = m.at WHERE j.{promoted.replace(' AND ', ' AND j.')}")
        best: dict[str, ModelRow] = {}
        for agent, model, job_id, provider, at in self._rows(sql, params):
            if agent not in best or job_id > best[agent].job_id:  # the same moment twice: the later job
                best[agent] = ModelRow(agent, model, job_id, provider, _time(at))
        return [best[agent] for agent in sorted(best)]

    def events(self, job_id: int) -> list[EventRow]:
        rows = self._rows("SELECT id, event_id, job_id, name, at, from_state, to_state, trigger, reason, "
                          "provider_status FROM job_events WHERE job_id = :id ORDER BY id", {"id": job_id})
        return [EventRow(*r[:4], _time(r[4]), *r[5:]) for r in rows]

    def attempts(self, job_id: int) -> list[AttemptRow]:
        rows = self._rows("SELECT number, client_token, provider_job_id, outcome, counted, submitted_at, ended_at "
                          "FROM attempts WHERE job_id = :id ORDER BY id", {"id": job_id})
        return [AttemptRow(r[0], r[1], r[2], r[3], bool(r[4]), _time(r[5]), _time(r[6])) for r in rows]

    # -- what reasons are rendered with ------------------------------------------------------

    def slots(self) -> dict[str, tuple[int, int]]:
        """(used, limit) per provider, as the last tick's admission saw them."""
        return {name: (used, limit) for name, used, limit in self._rows(
            "SELECT name, slots_used, slots_limit FROM provider_state") if used is not None and limit is not None}

    def spent_in(self, since: datetime, now: datetime) -> float:
        """What the budget's period cost (models.store.Store.spent_in): succeeded
        jobs and evaluations finished in it, and keeping the fine-tuned models
        through it (a month counted as 30 days)."""
        at = {"since": self._time_param(since)}
        jobs = self._one("SELECT COALESCE(SUM(COALESCE(actual_cost, estimated_cost, 0.0)), 0.0) FROM jobs "
                         "WHERE state = 'succeeded' AND updated_at >= :since", at)[0]
        evals = self._one("SELECT COALESCE(SUM(estimated_cost), 0.0) FROM evaluations "
                          "WHERE finished_at IS NOT NULL AND finished_at >= :since", at)[0]
        return float(jobs) + float(evals) + self.storage_since(since, now)

    def storage_since(self, since: datetime, now: datetime) -> float:
        """What keeping the fine-tuned models of succeeded jobs cost between
        `since` and `now`, each until `[retention]` deleted it
        (models.deletions.DeletionQueries.storage_since)."""
        from ftctl.models.deletions import MONTH_S, _kept_span

        at = {"since": self._time_param(since)}
        kept = "state = 'succeeded' AND storage_per_month > 0"
        deleted = ("(SELECT MIN(x.done_at) FROM deletions AS x WHERE x.job_id = jobs.id AND x.kind = 'model' "
                   "AND x.outcome IN ('deleted', 'gone'))")
        before = self._one(f"SELECT COALESCE(SUM(storage_per_month), 0.0) FROM jobs WHERE {kept} "
                           f"AND updated_at < :since AND {deleted} IS NULL", at)[0]
        storage = float(before) * max(0.0, (now - since).total_seconds()) / MONTH_S
        for fee, made, gone in self._rows(f"SELECT storage_per_month, updated_at, {deleted} FROM jobs WHERE {kept} "
                                          f"AND (updated_at >= :since OR {deleted} IS NOT NULL)", at):
            storage += _kept_span(float(fee), _time(made), _time(gone), since, now)
        return storage

    def storage_fees(self) -> tuple[float, float]:
        """(the monthly storage fee of the models kept, that of the models
        `[retention]` deleted: what it saves a month)."""
        gone = "x.kind = 'model' AND x.outcome IN ('deleted', 'gone')"
        kept = self._one("SELECT COALESCE(SUM(storage_per_month), 0.0) FROM jobs WHERE state = 'succeeded' AND "
                         f"storage_per_month > 0 AND NOT EXISTS (SELECT 1 FROM deletions AS x WHERE "
                         f"x.job_id = jobs.id AND {gone})")[0]
        saved = self._one(f"SELECT COALESCE(SUM(fee_per_month), 0.0) FROM deletions AS x WHERE {gone}")[0]
        return float(kept), float(saved)

    def committed(self) -> float:
        """What queued and running jobs, and evaluations under way, hold."""
        jobs = self._one("SELECT COALESCE(SUM(COALESCE(estimated_cost, 0.0)), 0.0) FROM jobs "
                         "WHERE state IN ('queued', 'running')")[0]
        evals = self._one("SELECT COALESCE(SUM(estimated_cost), 0.0) FROM evaluations WHERE finished_at IS NULL")[0]
        return float(jobs) + float(evals)

    def undelivered(self, names: Sequence[str]) -> dict[str, Any]:
        """Events owed to the hooks that ask for `names` (models.events'
        `undelivered`): counted in SQL, in an index that holds only what is
        owed (ix_outbox_owed), whatever the backlog."""
        params = {f"n{i}": n for i, n in enumerate(names)}
        owed = "delivered_at IS NULL AND name IN (" + (", ".join(f":{k}" for k in params) or "NULL") + ")"
        sqlite = self._engine is None  # SQLite without statistics would rather walk ix_outbox_due: name them
        counted = " INDEXED BY ix_outbox_owed" if sqlite else ""
        pending, oldest = self._one(f"SELECT COUNT(*), MIN(created_at) FROM outbox{counted} WHERE {owed} "
                                    "AND gave_up_at IS NULL", params)
        gave_up = self._one(f"SELECT COUNT(*) FROM outbox{counted} WHERE {owed} AND gave_up_at IS NOT NULL", params)[0]
        error = self._one(f"SELECT last_error FROM outbox{' INDEXED BY ix_outbox_failing' if sqlite else ''} "
                          f"WHERE {owed} AND last_error IS NOT NULL AND gave_up_at IS NULL ORDER BY id DESC LIMIT 1",
                          params)
        return {"pending": pending, "gave_up": gave_up, "oldest": _time(oldest),
                "last_error": error[0] if error else None}

    def daemon_holder(self) -> str | None:
        """Who drives this database now ("pid 123"), or None."""
        if self.sqlite_path is not None:
            pid = lock_file_pid(self.sqlite_path)
            return f"pid {pid}" if pid else None
        return self._pg_leadership().holder()

    def daemons(self) -> dict[str, Any]:
        """The daemon that leads (host, pid, since, epoch) and those standing by
        with their last heartbeat (models.leadership, read without taking anything)."""
        import time

        if self.sqlite_path is not None:
            leader = None
            if lock_file_pid(self.sqlite_path) is not None:
                row = self._one("SELECT holder, host, pid, epoch, since FROM leadership WHERE id = 1")
                if row is not None and row[0] is not None:
                    leader = {"host": row[1], "pid": row[2], "epoch": row[3], "since": _time(row[4])}
            seen = datetime.fromtimestamp(time.time() - 300.0, timezone.utc).replace(tzinfo=None)
            members = [{"host": r[0], "pid": r[1], "role": r[2], "heartbeat_at": _time(r[3])} for r in self._rows(
                "SELECT host, pid, role, heartbeat_at FROM daemons WHERE heartbeat_at >= :since "
                "ORDER BY heartbeat_at DESC", {"since": self._time_param(seen)})]
        else:
            leadership = self._pg_leadership()
            leader, members = leadership.leader(), leadership.members()
        return {"leader": leader, "standbys": [m for m in members if m["role"] == "standby"]}

    def _pg_leadership(self) -> Any:
        from ftctl.models.leadership import LeaseLeadership

        return LeaseLeadership(self._engine, redact_url(self.url))


def open_reads(url: str) -> Reads | None:
    """Reads on `url`; None when its SQLite file does not exist yet. A schema
    behind this code's is migrated first (by a Store, as any command would)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:" and not Path(url[len("sqlite:///"):]).exists():
        return None
    try:
        return Reads(url)
    except SchemaBehind:
        from ftctl.models.store import Store

        Store(url, create=False).close()
        return Reads(url)


__all__ = ["JOB_COLUMNS", "AttemptRow", "EventRow", "Filter", "JobRow", "ModelRow", "Reads", "SchemaBehind", "job_row",
           "open_reads"]
