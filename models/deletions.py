"""The store's queries for `[retention]`: what the rules are decided on,
each deletion's intent and outcome, and the storage fees kept and saved."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlmodel import select

from ftctl.models.tables import Deletion

# a month, as the budget counts storage fees
MONTH_S = 30 * 86400.0
# a deletion that happened: the thing is no longer at the provider
GONE = ("deleted", "gone")
UNFINISHED = ("prepared", "queued", "running")


class ModelRow(NamedTuple):
    job_id: int
    agent: str
    provider: str
    model: str
    promotion: str | None
    promoted_at: datetime | None
    rejected_at: datetime | None
    updated_at: datetime
    fee: float
    base_of_live_job: bool


class FileRow(NamedTuple):
    provider: str
    file_id: str
    content_hash: str
    uploaded_at: datetime
    job_id: int | None  # the newest job that used it
    last_used: datetime | None
    needed: bool


def _t(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _kept_span(fee: float, made: datetime, deleted: datetime | None, since: datetime, now: datetime) -> float:
    start, end = max(made, since), min(deleted or now, now)
    return fee * max(0.0, (end - start).total_seconds()) / MONTH_S


class DeletionQueries:
    engine: Any

    def _raw(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params or {}).fetchall())

    # -- what the rules are decided on ---------------------------------------------------

    def retention_models(self) -> list[ModelRow]:
        """Every succeeded job's model not deleted yet, with when it was
        rejected and whether a pipeline stage not done yet trains on it."""
        rows = self._raw(
            "SELECT j.id, j.agent, j.provider, j.fine_tuned_model, j.promotion, j.promoted_at, "
            "(SELECT MAX(e.at) FROM job_events AS e WHERE e.job_id = j.id AND e.name = 'rejected'), j.updated_at, "
            "COALESCE(j.storage_per_month, 0.0), EXISTS (SELECT 1 FROM jobs AS d WHERE d.model_job_id = j.id "
            "AND d.state IN ('prepared', 'queued', 'running')) FROM jobs AS j "
            "WHERE j.state = 'succeeded' AND j.fine_tuned_model IS NOT NULL AND NOT EXISTS (SELECT 1 FROM deletions "
            "AS x WHERE x.job_id = j.id AND x.kind = 'model' AND x.outcome IN ('deleted', 'gone')) ORDER BY j.id")
        return [ModelRow(r[0], r[1], r[2], r[3], r[4], _t(r[5]), _t(r[6]), _t(r[7]), float(r[8]), bool(r[9]))
                for r in rows]

    def retention_files(self) -> list[FileRow]:
        """Every uploaded file ftctl remembers, with the newest job that used
        it, when the last one finished, and whether one may still run."""
        import json

        uses: dict[tuple[str, str], list[tuple[int, str, datetime]]] = {}
        for job_id, provider, digest, files, state, updated in self._raw(
                "SELECT id, provider, content_hash, training_files, state, updated_at FROM jobs"):
            hashes = {digest}
            if isinstance(files, (str, bytes)):
                files = json.loads(files)
            hashes.update(f.get("hash") for f in files or [] if isinstance(f, dict))
            for h in hashes:
                uses.setdefault((provider, h), []).append((job_id, state, _t(updated)))
        out = []
        for provider, digest, file_id, uploaded in self._raw(
                "SELECT provider, content_hash, file_id, uploaded_at FROM uploaded_files ORDER BY id"):
            used = uses.get((provider, digest), [])
            newest = max(used, default=None, key=lambda u: u[0])
            finished = [u[2] for u in used if u[1] not in UNFINISHED]
            out.append(FileRow(provider, file_id, digest, _t(uploaded), newest[0] if newest else None,
                               max(finished, default=None), any(u[1] in UNFINISHED for u in used)))
        return out

    def pruned_checkpoints(self) -> set[int]:
        """The jobs whose checkpoints were dropped already."""
        return {r[0] for r in self._raw("SELECT job_id FROM deletions WHERE kind = 'checkpoints' "
                                        "AND outcome IN ('deleted', 'gone')")}

    # -- intents and outcomes --------------------------------------------------------------

    def open_deletions(self) -> list[Deletion]:
        with self.read() as s:  # type: ignore[attr-defined]
            return list(s.exec(select(Deletion).where(Deletion.done_at.is_(None)).order_by(Deletion.id)))

    def deletions(self, done: bool | None = None) -> list[Deletion]:
        with self.read() as s:  # type: ignore[attr-defined]
            stmt = select(Deletion).order_by(Deletion.id)
            if done is not None:
                stmt = stmt.where(Deletion.done_at.is_not(None) if done else Deletion.done_at.is_(None))
            return list(s.exec(stmt))

    # -- storage fees ------------------------------------------------------------------------

    def storage_since(self, since: datetime, now: datetime) -> float:
        """What keeping the fine-tuned models of succeeded jobs cost between
        `since` and `now` (a month counted as 30 days): a model is counted
        from when it was made (the job's last update) until it was deleted."""
        from sqlalchemy import DateTime, bindparam, text

        deleted = ("(SELECT MIN(x.done_at) FROM deletions AS x WHERE x.job_id = jobs.id AND x.kind = 'model' "
                   "AND x.outcome IN ('deleted', 'gone'))")
        kept = "state = 'succeeded' AND storage_per_month > 0"
        with self.engine.connect() as conn:
            # kept all along: one sum; the rest (made or deleted within the span) one by one
            at = bindparam("since", type_=DateTime)
            before = conn.execute(text(f"SELECT COALESCE(SUM(storage_per_month), 0.0) FROM jobs WHERE {kept} "
                                       f"AND updated_at < :since AND {deleted} IS NULL").bindparams(at),
                                  {"since": since}).scalar()
            rows = conn.execute(text(f"SELECT storage_per_month, updated_at, {deleted} FROM jobs WHERE {kept} "
                                     f"AND (updated_at >= :since OR {deleted} IS NOT NULL)").bindparams(at),
                                {"since": since}).fetchall()
            total = float(before) * max(0.0, (now - since).total_seconds()) / MONTH_S
            for fee, made, gone in rows:
                total += _kept_span(float(fee), _t(made), _t(gone), since, now)
        return total

    def storage_fees(self) -> tuple[float, float]:
        """(what the models kept cost a month, what the models retention
        deleted would cost a month)."""
        kept = self._raw("SELECT COALESCE(SUM(storage_per_month), 0.0) FROM jobs WHERE state = 'succeeded' "
                         "AND storage_per_month > 0 AND NOT EXISTS (SELECT 1 FROM deletions AS x WHERE "
                         "x.job_id = jobs.id AND x.kind = 'model' AND x.outcome IN ('deleted', 'gone'))")[0][0]
        saved = self._raw("SELECT COALESCE(SUM(fee_per_month), 0.0) FROM deletions WHERE kind = 'model' "
                          "AND outcome IN ('deleted', 'gone')")[0][0]
        return float(kept), float(saved)
