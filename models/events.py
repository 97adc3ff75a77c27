"""The store's queries about events: the history as a stream, the hooks'
outbox, stored training-log points, and webhook ids already seen.

A mixin of `Store` (models.store), kept apart so each stays readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import delete, func, select

from ftctl.models.tables import Attempt, Job, JobEvent, LogCursor, LogPoint, OutboxEvent, WebhookDelivery

# a job in one of these states has a training log that may still grow
TERMINAL = ("succeeded", "failed", "cancelled")


class EventQueries:
    """Mixed into Store: needs `read()` and `write()`."""

    # -- the history as a stream ----------------------------------------------------------

    def events_after(self, after_id: int = 0, *, job_id: int | None = None,
                     limit: int | None = None, newest: bool = False) -> list[tuple[JobEvent, str, str]]:
        """(event, agent, provider) with an id above `after_id`, oldest first;
        `newest`: the last `limit` of them (still oldest first)."""
        with self.read() as s:
            stmt = (select(JobEvent, Job.agent, Job.provider).join(Job, Job.id == JobEvent.job_id)
                    .where(JobEvent.id > after_id))
            if job_id is not None:
                stmt = stmt.where(JobEvent.job_id == job_id)
            stmt = stmt.order_by(JobEvent.id.desc() if newest else JobEvent.id)
            if limit:
                stmt = stmt.limit(limit)
            rows = [(e, a, p) for e, a, p in s.exec(stmt)]
        return rows[::-1] if newest else rows

    # -- the outbox -----------------------------------------------------------------------

    def due_outbox(self, now: datetime, limit: int = 50) -> list[OutboxEvent]:
        with self.read() as s:
            stmt = (select(OutboxEvent).where(OutboxEvent.delivered_at == None,  # noqa: E711
                                              OutboxEvent.gave_up_at == None,  # noqa: E711
                                              OutboxEvent.next_at <= now)
                    .order_by(OutboxEvent.id).limit(limit))
            return list(s.exec(stmt))

    def next_outbox_at(self) -> datetime | None:
        """When the next undelivered event is due."""
        with self.read() as s:
            return s.exec(select(func.min(OutboxEvent.next_at)).where(
                OutboxEvent.delivered_at == None, OutboxEvent.gave_up_at == None)).one()  # noqa: E711

    def outbox_progress(self, row_id: int, *, done: list[str], now: datetime, delivered: bool,
                        next_at: datetime | None = None, error: str | None = None, gave_up: bool = False) -> None:
        """Record what one delivery pass achieved for an event."""
        values: dict[str, Any] = {"done": list(done), "last_error": error}
        if delivered:
            values["delivered_at"] = now
        else:
            values["attempts"] = OutboxEvent.attempts + 1
            if gave_up:
                values["gave_up_at"] = now
            elif next_at is not None:
                values["next_at"] = next_at
        with self.write() as s:
            s.exec(update(OutboxEvent).where(OutboxEvent.id == row_id).values(**values))

    def outbox_settle(self, row_ids: Sequence[int], now: datetime) -> None:
        """Events no hook asks for: nothing to deliver."""
        if not row_ids:
            return
        with self.write() as s:
            s.exec(update(OutboxEvent).where(OutboxEvent.id.in_(list(row_ids))).values(delivered_at=now))

    def undelivered(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Events owed to the hooks (only those named, when `names` is given):
        how many, the oldest, the last error; and how many were given up.
        Counted in SQL: a backlog of 400k rows is a few index reads, not 400k
        objects."""
        owed = OutboxEvent.delivered_at == None  # noqa: E711
        if names is not None:
            owed = and_(owed, OutboxEvent.name.in_(list(names)))
        pending = OutboxEvent.gave_up_at == None  # noqa: E711
        with self.read() as s:
            counts = {bool(p): (n, oldest) for p, n, oldest in s.exec(
                select(pending, func.count(), func.min(OutboxEvent.created_at)).where(owed).group_by(pending))}
            last_error = s.exec(select(OutboxEvent.last_error).where(owed, pending,
                                                                      OutboxEvent.last_error != None)  # noqa: E711
                                .order_by(OutboxEvent.id.desc()).limit(1)).first()
        n_pending, oldest = counts.get(True, (0, None))
        return {"pending": n_pending, "gave_up": counts.get(False, (0, None))[0], "oldest": oldest,
                "last_error": last_error}

    def prune_outbox(self, before: datetime, batch: int = 5000) -> int:
        """Forget events delivered, or given up, before `before`, `batch` rows
        a transaction (a long delete never holds the write lock for long);
        returns how many went."""
        done = or_(and_(OutboxEvent.delivered_at != None, OutboxEvent.delivered_at < before),  # noqa: E711
                   and_(OutboxEvent.gave_up_at != None, OutboxEvent.gave_up_at < before))  # noqa: E711
        pruned = 0
        while True:
            with self.write() as s:
                ids = list(s.exec(select(OutboxEvent.id).where(done).limit(batch)))
                if ids:
                    s.exec(delete(OutboxEvent).where(OutboxEvent.id.in_(ids)))
            pruned += len(ids)
            if len(ids) < batch:
                return pruned

    # -- training logs --------------------------------------------------------------------

    def log_targets(self, now: datetime, *, fetched_before: datetime, finished_since: datetime,
                    limit: int) -> list[tuple[Job, LogCursor | None]]:
        """Jobs whose training log is due a read: running ones not read since
        `fetched_before`, and ones that finished since `finished_since` whose
        last read is not done yet; the least recently read first."""
        with self.read() as s:
            stmt = (select(Job, LogCursor)
                    .join(LogCursor, LogCursor.provider_job_id == Job.provider_job_id, isouter=True)
                    .where(Job.provider_job_id != None)  # noqa: E711
                    .where(or_(LogCursor.fetched_at == None, LogCursor.fetched_at <= fetched_before))  # noqa: E711
                    .where(or_(Job.state == "running",
                               and_(Job.state.in_(TERMINAL), Job.updated_at >= finished_since,
                                    or_(LogCursor.final == None, LogCursor.final == False))))  # noqa: E711,E712
                    .order_by(LogCursor.fetched_at.is_not(None), LogCursor.fetched_at, Job.id).limit(limit))
            return [(j, c) for j, c in s.exec(stmt)]

    def add_log_points(self, job_id: int, provider_job_id: str, entries: Iterable[Any], now: datetime, *,
                       final: bool = False, error: str | None = None) -> int:
        """Store the entries not stored yet (by key) and move the cursor;
        returns how many were new."""
        entries = list(entries)
        with self.write() as s:
            known = set(s.exec(select(LogPoint.key).where(LogPoint.provider_job_id == provider_job_id)))
            new = 0
            for e in entries:
                if e.key in known:
                    continue
                known.add(e.key)
                s.add(LogPoint(job_id=job_id, provider_job_id=provider_job_id, key=e.key, kind=e.kind, at=e.at,
                               step=e.step, message=e.message, metrics=dict(e.metrics) if e.metrics else None,
                               fetched_at=now))
                new += 1
            cursor = s.get(LogCursor, provider_job_id) or LogCursor(provider_job_id=provider_job_id, job_id=job_id,
                                                                    fetched_at=now)
            cursor.fetched_at, cursor.final, cursor.error = now, final, error
            s.add(cursor)
        return new

    def log_points(self, job_id: int, provider_job_id: str | None = None, after_id: int = 0) -> list[LogPoint]:
        """A job's stored points (one provider job's, when given), in time order."""
        with self.read() as s:
            stmt = select(LogPoint).where(LogPoint.job_id == job_id, LogPoint.id > after_id)
            if provider_job_id is not None:
                stmt = stmt.where(LogPoint.provider_job_id == provider_job_id)
            rows = list(s.exec(stmt))
        # in time order (a step breaks ties: providers stamp whole seconds)
        return sorted(rows, key=lambda p: (p.at is None, p.at or datetime.min, p.step or 0, p.id))

    def log_cursor(self, provider_job_id: str) -> LogCursor | None:
        with self.read() as s:
            return s.get(LogCursor, provider_job_id)

    def thin_logs(self, finished_before: datetime, keep_points: int, now: datetime,
                  limit: int = 100) -> tuple[int, int]:
        """`[history] keep_logs_for`: the training logs of up to `limit` jobs
        that finished before `finished_before` and are not thinned yet keep
        their events and checkpoints and `keep_points` of their metric points
        (evenly spaced, the first and the last among them); `keep_points` 0
        drops the whole log. Each log is marked thinned (and read for the
        last time). Returns (logs thinned, points deleted)."""
        with self.write() as s:
            targets = list(s.exec(
                select(LogCursor.provider_job_id).join(Job, Job.id == LogCursor.job_id)
                .where(LogCursor.thinned_at == None, Job.state.in_(TERMINAL),  # noqa: E711
                       Job.updated_at < finished_before).limit(limit)))
            deleted = 0
            for pid in targets:
                if keep_points <= 0:
                    gone = list(s.exec(select(LogPoint.id).where(LogPoint.provider_job_id == pid)))
                else:
                    metric = list(s.exec(select(LogPoint.id).where(LogPoint.provider_job_id == pid,
                                                                   LogPoint.kind == "metric")
                                         .order_by(LogPoint.step, LogPoint.at, LogPoint.id)))
                    kept = {metric[round(i * (len(metric) - 1) / max(1, keep_points - 1))]
                            for i in range(min(keep_points, len(metric)))}
                    gone = [i for i in metric if i not in kept]
                for start in range(0, len(gone), 500):
                    s.exec(delete(LogPoint).where(LogPoint.id.in_(gone[start:start + 500])))
                deleted += len(gone)
            if targets:
                s.exec(update(LogCursor).where(LogCursor.provider_job_id.in_(targets))
                       .values(thinned_at=now, final=True))
        return len(targets), deleted

    # -- webhooks -------------------------------------------------------------------------

    def remember_webhook(self, provider: str, webhook_id: str, event_type: str | None, now: datetime) -> bool:
        """True the first time a webhook-id comes from `provider`; False for a
        delivery seen before (the sender retried)."""
        try:
            with self.write() as s:
                if s.get(WebhookDelivery, (provider, webhook_id)) is not None:
                    return False
                s.add(WebhookDelivery(provider=provider, webhook_id=webhook_id, event_type=event_type,
                                      received_at=now))
            return True
        except IntegrityError:  # the same delivery twice at once: one of them wins
            return False

    def knows_provider_job(self, provider: str, provider_job_id: str) -> bool:
        """Whether one of our jobs (or an earlier attempt of one) is
        `provider_job_id` at `provider`: what a webhook about a job must be
        to mean anything here."""
        with self.read() as s:
            if s.exec(select(Job.id).where(Job.provider == provider, Job.provider_job_id == provider_job_id)
                      .limit(1)).first() is not None:
                return True
            return s.exec(select(Attempt.id).join(Job, Job.id == Attempt.job_id)
                          .where(Job.provider == provider, Attempt.provider_job_id == provider_job_id)
                          .limit(1)).first() is not None

    def prune_webhooks(self, before: datetime) -> None:
        with self.write() as s:
            s.exec(delete(WebhookDelivery).where(WebhookDelivery.received_at < before))
