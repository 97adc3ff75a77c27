"""The store: engine set-up (SQLite WAL or PostgreSQL), sessions, queries
and the lock that lets only one daemon drive a database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any
from pathlib import Path

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, create_engine, func, select

from ftctl.models.deletions import DeletionQueries
from ftctl.models.evaluations import EvaluationQueries
from ftctl.models.events import EventQueries
from ftctl.models.leadership import FileLeadership, Leadership, LeaseLeadership
from ftctl.models.rehomes import RehomeQueries
from ftctl.models.schema import StoreError, redact_url as _redact_url, utcnow
from ftctl.models.tables import SCHEMA_HEAD, Attempt, Evaluation, Job, JobEvent, ProviderState, QuoteJob, UploadedFile

# a fixed advisory-lock key on PostgreSQL: "a schema migration is running"
_PG_MIGRATE_KEY = 0x6674636D  # "ftcm"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


# what the tick loads of each job, in this order: plain columns (the decision
# step's JobView, the ids of the jobs a downstream job waits for in place of
# their views; the few jobs a provider call acts on are read again whole)
TICK_COLUMNS = ("id", "agent", "provider", "state", "attempt", "client_token", "provider_job_id", "intent_at",
                "not_before", "created_at", "cancel_pending", "reason_code", "reason_args", "provider_status",
                "estimated_cost", "last_error", "model_job_id", "upstream_job_ids", "promotion", "fallbacks",
                "fallback_after")


class Store(EventQueries, EvaluationQueries, RehomeQueries, DeletionQueries):
    def __init__(self, url: str, *, create: bool = True):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.sqlite_path: Path | None = None
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                self.sqlite_path = Path(path)
                if create:
                    self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
                elif not self.sqlite_path.exists():
                    raise StoreError(f"database {self.sqlite_path} does not exist yet (run `ftctl submit` first)")
            self.engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            self._sqlite_setup(self.engine)
        else:
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            try:
                # a database that does not answer is an error in seconds, not a hang
                self.engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
            except ImportError:
                raise StoreError(f"cannot open database {_redact_url(self.url)}: its driver is not installed "
                                 f"(for PostgreSQL: pip install 'ftctl[postgres]')") from None
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot open database {_redact_url(self.url)}: {exc}") from None
        where = str(self.sqlite_path) if self.sqlite_path else _redact_url(self.url)
        self.leadership: Leadership = (FileLeadership(self.engine, self.sqlite_path, where) if self.is_sqlite
                                       else LeaseLeadership(self.engine, where))
        # set while this store's process leads: every write transaction first
        # proves it still does (the epoch compare-and-set)
        self.fenced = False
        try:
            self._init_schema()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open database {where}: {exc.__class__.__name__}: "
                             f"{str(exc.orig if hasattr(exc, 'orig') else exc).splitlines()[0]}") from None

    @staticmethod
    def _sqlite_setup(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # let SQLAlchemy's "begin" event below emit BEGIN itself
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            # writers take the write lock up front: a deferred transaction that
            # read first cannot upgrade once another writer committed (WAL)
            if conn.get_execution_options().get("ftctl_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

    def _schema_version(self) -> str | None:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def _init_schema(self) -> None:
        """Bring the schema to this code's head with Alembic.

        Checking the version needs no Alembic import, so read commands stay
        fast when the schema is current (the common case).
        """
        version = self._schema_version()
        if version == SCHEMA_HEAD:
            return
        from alembic import command
        from alembic.config import Config as AlembicConfig
        from alembic.script import ScriptDirectory

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
        if version is not None and version not in known:
            raise StoreError(f"database schema {version} is newer than this ftctl knows; upgrade ftctl")
        bind = self.engine.execution_options(ftctl_write=True) if self.is_sqlite else self.engine
        with bind.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATE_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    # -- sessions ------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on error."""
        bind = self.engine.execution_options(ftctl_write=True) if self.is_sqlite else self.engine
        with Session(bind, expire_on_commit=False) as session:
            with session.begin():
                if self.fenced:
                    self.leadership.fence(session.connection())
                yield session

    def lock_job(self, session: Session, job_id: int) -> Job | None:
        """Read a job for update inside a write transaction."""
        stmt = select(Job).where(Job.id == job_id)
        if not self.is_sqlite:
            stmt = stmt.with_for_update()
        return session.exec(stmt).first()

    # -- queries ---------------------------------------------------------------

    def get_job(self, job_id: int) -> Job | None:
        with self.read() as s:
            return s.get(Job, job_id)

    def list_jobs(self, states: Sequence[str] | None = None, agent: str | None = None) -> list[Job]:
        with self.read() as s:
            stmt = select(Job)
            if states is not None:
                stmt = stmt.where(Job.state.in_(list(states)))
            if agent is not None:
                stmt = stmt.where(Job.agent == agent)
            return list(s.exec(stmt.order_by(Job.id)))

    def finished_since(self, provider: str, since: datetime) -> int:
        """Jobs of ours on `provider` that ended (succeeded, failed, cancelled) since `since`."""
        with self.read() as s:
            stmt = select(func.count()).where(Job.provider == provider, Job.updated_at >= since,
                                              Job.state.in_(["succeeded", "failed", "cancelled"]))
            return s.exec(stmt).one()

    def live_twin(self, identity: str) -> Job | None:
        """The oldest live job with this identity."""
        from ftctl.models.tables import LIVE_STATES

        with self.read() as s:
            return s.exec(select(Job).where(Job.identity == identity, Job.state.in_(LIVE_STATES))
                          .order_by(Job.id)).first()

    def jobs_by_id(self, ids: Sequence[int]) -> dict[int, Job]:
        if not ids:
            return {}
        with self.read() as s:
            return {j.id: j for j in s.exec(select(Job).where(Job.id.in_(sorted(set(ids)))))}

    def promoted_models(self) -> dict[str, str]:
        """Each agent's newest promoted model (the latest promoted, then the
        highest job id): what the export file holds. Grouped in the database
        over the index of exactly those jobs (ix_jobs_promoted)."""
        promoted = "state = 'succeeded' AND promotion = 'promoted' AND fine_tuned_model IS NOT NULL"
        sql = (f"SELECT j.agent, j.fine_tuned_model, j.id FROM (SELECT agent, MAX(promoted_at) AS at FROM jobs "
               f"WHERE {promoted} GROUP BY agent) AS m JOIN jobs AS j ON j.agent = m.agent AND j.promoted_at = m.at "
               f"WHERE j.{promoted.replace(' AND ', ' AND j.')} ORDER BY j.id")
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(sql).fetchall()
        return dict(sorted({agent: model for agent, model, _ in rows}.items()))

    def jobs_to_reconcile(self, active_states: Sequence[str], open_promotions: Sequence[str] = ()) -> list[tuple]:
        """Jobs not finished, finished ones with a cancel still owed to the
        provider, and succeeded ones whose model's promotion is still open:
        tuples of TICK_COLUMNS, by id. Indexed queries (finished jobs done with
        are never read), their values converted here rather than by the ORM:
        a tick reads every unfinished job."""
        import json

        if not all(s.isidentifier() for s in (*active_states, *open_promotions)):
            raise ValueError(f"not a state: {active_states!r} {open_promotions!r}")
        states = ", ".join(f"'{s}'" for s in active_states)
        cols = ", ".join(TICK_COLUMNS)
        sql = (f"SELECT {cols} FROM jobs WHERE state IN ({states}) UNION ALL "
               f"SELECT {cols} FROM jobs WHERE cancel_pending AND state NOT IN ({states})")
        if open_promotions:
            promotions = ", ".join(f"'{p}'" for p in open_promotions)
            sql += (f" UNION ALL SELECT {cols} FROM jobs WHERE promotion IN ({promotions}) "
                    f"AND state NOT IN ({states}) AND NOT cancel_pending")
        sql += " ORDER BY id"
        decoded: dict[Any, Any] = {None: None}  # the same few reasons repeat over thousands of waiting jobs
        when = datetime.fromisoformat
        with self.engine.connect() as conn:
            raw = conn.exec_driver_sql(sql).fetchall()
        out = []
        for (job_id, agent, provider, state, attempt, token, pid, intent_at, not_before, created_at, cancel,
             code, args, status, cost, error, model_job_id, upstream, promotion, fallbacks, fallback_after) in raw:
            if isinstance(args, (str, bytes)):
                if args not in decoded:
                    decoded[args] = json.loads(args)
                args = decoded[args]
            if isinstance(upstream, (str, bytes)):
                upstream = json.loads(upstream)
            upstream = tuple(upstream) if upstream else ()
            if isinstance(fallbacks, (str, bytes)):
                fallbacks = json.loads(fallbacks)
            # the providers it may move to, by name (the shell reads the rest when it moves)
            fallbacks = tuple(f["provider"] for f in fallbacks) if fallbacks else ()
            if isinstance(created_at, str):  # SQLite keeps times as text
                intent_at = when(intent_at) if intent_at else None
                not_before = when(not_before) if not_before else None
                created_at = when(created_at)
            out.append((job_id, agent, provider, state, attempt, token, pid, intent_at, not_before, created_at,
                        bool(cancel), code, args, status, cost, error, model_job_id, upstream, promotion,
                        fallbacks, fallback_after))
        return out

    def spent_since(self, since: datetime) -> float:
        """What succeeded jobs finished since `since` cost (the provider's
        figure where it gave one, else our estimate)."""
        with self.read() as s:
            cost = func.coalesce(Job.actual_cost, Job.estimated_cost, 0.0)
            stmt = select(func.coalesce(func.sum(cost), 0.0)).where(Job.state == "succeeded", Job.updated_at >= since)
            evals = select(func.coalesce(func.sum(Evaluation.estimated_cost), 0.0)).where(
                Evaluation.finished_at.is_not(None), Evaluation.finished_at >= since)
            return float(s.exec(stmt).one()) + float(s.exec(evals).one())

    def spent_in(self, since: datetime, now: datetime) -> float:
        """What the budget's period cost: succeeded jobs and evaluations
        finished in it, and keeping the fine-tuned models through it
        (models.deletions: until `[retention]` deleted them)."""
        return self.spent_since(since) + self.storage_since(since, now)

    def committed(self) -> float:
        """What queued and running jobs, and evaluations under way, hold."""
        with self.read() as s:
            stmt = select(func.coalesce(func.sum(func.coalesce(Job.estimated_cost, 0.0)), 0.0)).where(
                Job.state.in_(["queued", "running"]))
            evals = select(func.coalesce(func.sum(Evaluation.estimated_cost), 0.0)).where(
                Evaluation.finished_at.is_(None))
            return float(s.exec(stmt).one()) + float(s.exec(evals).one())

    def totals_by_provider_state(self) -> list[tuple[str, str, int, float, float]]:
        """(provider, state, jobs, estimated cost, actual cost), for metrics."""
        with self.read() as s:
            stmt = select(Job.provider, Job.state, func.count(), func.sum(Job.estimated_cost),
                          func.sum(Job.actual_cost)).group_by(Job.provider, Job.state)
            return [(p, st, n, float(e or 0), float(a or 0)) for p, st, n, e, a in s.exec(stmt)]

    def count_by_state(self) -> dict[str, int]:
        with self.read() as s:
            rows = s.exec(select(Job.state, func.count()).group_by(Job.state))
            return {state: n for state, n in rows}

    def count_open_promotions(self, states: Sequence[str]) -> int:
        """Succeeded jobs whose model is still a candidate or being evaluated."""
        with self.read() as s:
            return s.exec(select(func.count()).where(Job.state == "succeeded", Job.promotion.in_(list(states)))).one()

    def count_waiting(self, reason_code: str) -> int:
        """Prepared jobs waiting for one reason (e.g. "slot")."""
        with self.read() as s:
            stmt = select(func.count()).where(Job.state == "prepared", Job.reason_code == reason_code)
            return s.exec(stmt).one()

    def events(self, job_id: int) -> list[JobEvent]:
        with self.read() as s:
            return list(s.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))

    def attempts(self, job_id: int) -> list[Attempt]:
        with self.read() as s:
            return list(s.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)))

    def provider_states(self) -> dict[str, ProviderState]:
        with self.read() as s:
            return {p.name: p for p in s.exec(select(ProviderState))}

    def save_provider_state(self, state: ProviderState) -> None:
        with self.write() as s:
            s.merge(state)

    def uploaded_file(self, provider: str, content_hash: str) -> str | None:
        with self.read() as s:
            row = s.exec(
                select(UploadedFile).where(UploadedFile.provider == provider, UploadedFile.content_hash == content_hash)
            ).first()
            return row.file_id if row else None

    def remember_upload(self, provider: str, content_hash: str, file_id: str) -> None:
        with self.write() as s:
            row = s.exec(
                select(UploadedFile).where(UploadedFile.provider == provider, UploadedFile.content_hash == content_hash)
            ).first()
            if row is None:
                s.add(UploadedFile(provider=provider, content_hash=content_hash, file_id=file_id, uploaded_at=utcnow()))
            else:
                row.file_id = file_id
                row.uploaded_at = utcnow()
                s.add(row)

    def forget_upload(self, provider: str, content_hash: str) -> None:
        with self.write() as s:
            for row in s.exec(select(UploadedFile).where(UploadedFile.provider == provider,
                                                         UploadedFile.content_hash == content_hash)):
                s.delete(row)

    # -- quote jobs ---------------------------------------------------------------

    def add_quote(self, provider: str, provider_job_id: str, now: datetime | None = None) -> None:
        with self.write() as s:
            s.add(QuoteJob(provider=provider, provider_job_id=provider_job_id, created_at=now or utcnow()))

    def settle_quote(self, provider: str, provider_job_id: str, now: datetime | None = None) -> None:
        with self.write() as s:
            for row in s.exec(select(QuoteJob).where(QuoteJob.provider == provider,
                                                     QuoteJob.provider_job_id == provider_job_id,
                                                     QuoteJob.settled_at == None)):  # noqa: E711
                row.settled_at = now or utcnow()
                s.add(row)

    def pending_quotes(self) -> dict[str, tuple[str, ...]]:
        """Quote jobs not yet confirmed inactive, by provider."""
        with self.read() as s:
            rows = s.exec(select(QuoteJob.provider, QuoteJob.provider_job_id).where(
                QuoteJob.settled_at == None).order_by(QuoteJob.id))  # noqa: E711
            out: dict[str, list[str]] = {}
            for provider, job_id in rows:
                out.setdefault(provider, []).append(job_id)
            return {k: tuple(v) for k, v in out.items()}

    def oldest_pending_quotes(self) -> dict[str, datetime]:
        """When the oldest quote job not yet confirmed inactive was made, by provider."""
        with self.read() as s:
            rows = s.exec(select(QuoteJob.provider, func.min(QuoteJob.created_at)).where(
                QuoteJob.settled_at == None).group_by(QuoteJob.provider))  # noqa: E711
            return {provider: at for provider, at in rows}

    def quote_ids(self, provider: str, since: datetime | None = None) -> set[str]:
        """Every quote job id made on a provider (never a slot user)."""
        with self.read() as s:
            stmt = select(QuoteJob.provider_job_id).where(QuoteJob.provider == provider)
            if since is not None:
                stmt = stmt.where(QuoteJob.created_at >= since)
            return set(s.exec(stmt))

    # -- wake-ups (models.wake) ------------------------------------------------------

    def wake(self, reason: str) -> bool:
        """Tell the daemon to look now (a hint: False when nobody listens)."""
        from ftctl.models import wake

        if self.sqlite_path is not None:
            return wake.send_sqlite(self.sqlite_path, reason)
        if not self.is_sqlite:
            return wake.send_postgres(self.engine, reason)
        return False

    def wake_listener(self, callback):
        """A started listener that calls `callback(reason)` for each wake-up
        (None for an in-memory database); OSError if it cannot listen."""
        from ftctl.models import wake

        if self.sqlite_path is not None:
            return wake.SqliteListener(self.sqlite_path, callback).start()
        if not self.is_sqlite:
            return wake.PostgresListener(self.engine, callback).start()
        return None

    # -- leadership (models.leadership) ----------------------------------------------

    def acquire_daemon_lock(self) -> None:
        """Lead this database (LockHeld if another daemon does); from then on
        every write transaction of this store is fenced on the epoch."""
        self.leadership.acquire_or_raise()
        self.fenced = True

    def assert_lock_held(self) -> None:
        """LockLost unless this process still leads (asked right before every
        provider mutation)."""
        self.leadership.check()

    def daemon_holder(self) -> str | None:
        return self.leadership.holder()

    def release_daemon_lock(self) -> None:
        self.fenced = False
        self.leadership.release()

    def close(self) -> None:
        self.release_daemon_lock()
        self.engine.dispose()
