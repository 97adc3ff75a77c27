"""What the tick reads of the jobs: every job that can still change, except
the waiting jobs in line, which it reads per provider, in order, only as far
as admission can go (`line_head`). A part of `models.store.Store`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import text

from ftctl.models.schema import HELD_SQL, IN_LINE_SQL, TRIED_SQL

# what the tick loads of each job, in this order: plain columns (the decision
# step's JobView, the ids of the jobs a downstream job waits for in place of
# their views; the few jobs a provider call acts on are read again whole)
TICK_COLUMNS = ("id", "agent", "provider", "state", "attempt", "client_token", "provider_job_id", "intent_at",
                "not_before", "created_at", "cancel_pending", "reason_code", "reason_args", "provider_status",
                "estimated_cost", "last_error", "model_job_id", "upstream_job_ids", "promotion", "fallbacks",
                "fallback_after", "model")
_COLS = ", ".join(TICK_COLUMNS)
# a provider's line: its waiting jobs in line, oldest first (ix_jobs_line)
_LINE = f"FROM jobs WHERE state = 'prepared' AND provider = :provider AND {IN_LINE_SQL}"
_FITS = " AND estimated_cost IS NOT NULL AND estimated_cost <= :ceiling"


class TickQueries:
    engine: Any
    is_sqlite: bool

    def jobs_to_reconcile(self, active_states: Sequence[str], open_promotions: Sequence[str] = (),
                          max_attempts: int | None = None) -> list[tuple]:
        """Jobs not finished, finished ones with a cancel still owed to the
        provider, and succeeded ones whose model's promotion is still open:
        tuples of TICK_COLUMNS, by id. Of the waiting (`prepared`) jobs, only
        those held for a reason of their own (backoff, upstream jobs, a retry:
        ix_jobs_held) and those in line out of attempts (`max_attempts`,
        ix_jobs_tried); the others come by `line_head`. Indexed queries
        (finished jobs done with are never read), their values converted here
        rather than by the ORM."""
        sql = self.reconcile_sql(active_states, open_promotions, max_attempts)
        with self.engine.connect() as conn:
            # the driver's own cursor: plain tuples, no Row objects; and sorted
            # here (each part comes by id already): the database would sort
            # the wide rows of the whole union in a temporary b-tree
            cur = conn.connection.dbapi_connection.cursor()
            try:
                cur.execute(sql)
                raw = cur.fetchall()
            finally:
                cur.close()
        raw.sort(key=itemgetter(0))
        return _tick_rows(raw)

    def reconcile_sql(self, active_states: Sequence[str], open_promotions: Sequence[str] = (),
                      max_attempts: int | None = None) -> str:
        """jobs_to_reconcile's query (a union of indexed parts, unsorted)."""
        if not all(s.isidentifier() for s in (*active_states, *open_promotions)):
            raise ValueError(f"not a state: {active_states!r} {open_promotions!r}")
        active_states = [str(getattr(s, "value", s)) for s in active_states]
        states = ", ".join(f"'{s}'" for s in active_states)
        moving = [s for s in active_states if s != "prepared"]
        parts = [f"SELECT {_COLS} FROM jobs WHERE cancel_pending AND state NOT IN ({states})"]
        if moving:
            listed = ", ".join(f"'{s}'" for s in moving)
            parts.append(f"SELECT {_COLS} FROM jobs WHERE state IN ({listed})")
        if "prepared" in active_states:
            # SQLite's planner, without statistics, would take the state index
            # and walk every waiting job: these few come by their own index
            held, tried = ((" INDEXED BY ix_jobs_held", " INDEXED BY ix_jobs_tried") if self.is_sqlite
                           else ("", ""))
            parts.append(f"SELECT {_COLS} FROM jobs{held} WHERE {HELD_SQL}")
            if max_attempts is not None:
                parts.append(f"SELECT {_COLS} FROM jobs{tried} WHERE {TRIED_SQL} AND attempt >= "
                             f"{int(max_attempts)} AND {IN_LINE_SQL}")
        if open_promotions:
            promotions = ", ".join(f"'{p}'" for p in open_promotions)
            parts.append(f"SELECT {_COLS} FROM jobs WHERE promotion IN ({promotions}) "
                         f"AND state NOT IN ({states}) AND NOT cancel_pending")
        return " UNION ALL ".join(parts)

    def line_head(self, provider: str, limit: int, ceiling: float | None = None) -> list[tuple]:
        """The first `limit` jobs in `provider`'s line (by creation, then id),
        as TICK_COLUMNS tuples; with a `ceiling`, only those whose estimate is
        known and within it (the others the budget refuses anyway)."""
        sql = f"SELECT {_COLS} {_LINE}" + (_FITS if ceiling is not None else "") + \
            " ORDER BY created_at, id LIMIT :limit"
        with self.engine.connect() as conn:
            raw = conn.execute(text(sql), {"provider": provider, "limit": int(limit), "ceiling": ceiling}).fetchall()
        return _tick_rows(raw)

    def count_in_line(self, provider: str, ceiling: float | None = None) -> int:
        """How many jobs are in `provider`'s line (within `ceiling`), counted in the index."""
        sql = "SELECT count(*) " + _LINE + (_FITS if ceiling is not None else "")
        with self.engine.connect() as conn:
            return conn.execute(text(sql), {"provider": provider, "ceiling": ceiling}).scalar() or 0

    def lined_providers(self, names: Sequence[str]) -> set[str]:
        """Those of `names` with a job in line."""
        out = set()
        with self.engine.connect() as conn:
            for name in names:
                if conn.execute(text(f"SELECT 1 {_LINE} LIMIT 1"), {"provider": name}).first() is not None:
                    out.add(name)
        return out


def _tick_rows(raw: Sequence[Any]) -> list[tuple]:
    decoded: dict[Any, Any] = {None: None}  # the same few reasons repeat over thousands of jobs
    when = datetime.fromisoformat
    out = []
    for (job_id, agent, provider, state, attempt, token, pid, intent_at, not_before, created_at, cancel,
         code, args, status, cost, error, model_job_id, upstream, promotion, fallbacks, fallback_after, model) in raw:
        if isinstance(args, (str, bytes)):
            if args not in decoded:
                decoded[args] = json.loads(args)
            args = decoded[args]
        if upstream is None or upstream == "null":  # no upstream jobs (the JSON column's null)
            upstream = ()
        else:
            upstream = json.loads(upstream) if isinstance(upstream, (str, bytes)) else upstream
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
                    fallbacks, fallback_after, model))
    return out
