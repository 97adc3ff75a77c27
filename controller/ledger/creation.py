"""Creating a job: its row and first history row in one transaction, with
the twin check (an identical job live already) backed by a unique index.
`submit`, `rehome` and the API create jobs here; the engine only moves them."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select

from ftctl.controller.ledger.events import record
from ftctl.controller.ledger.reasons import Reason
from ftctl.controller.ledger.states import PREPARED, SUCCEEDED
from ftctl.models import Job, Store, utcnow
from ftctl.models.tables import LIVE_STATES, job_identity


class Twin(Exception):
    """An identical job is live already (waiting, running or succeeded)."""

    def __init__(self, job: Job):
        # plain values: the row may be expired once its transaction rolls back
        self.job_id, self.state = job.id, job.state
        super().__init__(f"job {self.job_id} has the same data and settings and is {self.state}")


def new_client_token(agent: str) -> str:
    """A token the provider echoes back (Mistral's suffix allows 18 chars)."""
    slug = re.sub(r"[^a-z0-9]", "", agent.lower())[:9] or "job"
    return f"{slug}-{secrets.token_hex(4)}"


def create_job(store: Store, *, agent: str, provider: str, model: str, training_file: Path,
               content_hash: str, hyperparameters: dict[str, Any], now: datetime | None = None,
               estimated_cost: float | None = None, data_tokens: int | None = None, force: bool = True,
               upstream_job_ids: list[int] | None = None, model_job_id: int | None = None,
               training_files: list[dict[str, Any]] | None = None, storage_per_month: float | None = None,
               fallbacks: list[dict[str, Any]] | None = None, fallback_after: float | None = None) -> Job:
    """Store a new `prepared` job. Unless `force`, Twin if an identical job
    is live: the check and the insert are one transaction, and a unique
    index on (identity, replica) among live jobs backs it against a
    concurrent submit. With `force` the job takes the next replica."""
    now = now or utcnow()
    for _ in range(3):
        try:
            with store.write() as s:
                job = new_job_row(agent=agent, provider=provider, model=model, training_file=training_file,
                                  content_hash=content_hash, hyperparameters=hyperparameters, now=now,
                                  estimated_cost=estimated_cost, data_tokens=data_tokens,
                                  upstream_job_ids=upstream_job_ids, model_job_id=model_job_id,
                                  training_files=training_files)
                job.storage_per_month = storage_per_month or None
                job.fallbacks, job.fallback_after = fallbacks or None, fallback_after
                _waits_upstream(s, job)
                live = s.exec(select(Job).where(Job.identity == job.identity, Job.state.in_(LIVE_STATES))
                              .order_by(Job.id)).first()
                if live is not None and not force:
                    raise Twin(live)
                if live is not None:
                    top = s.exec(select(func.max(Job.replica)).where(Job.identity == job.identity)).one()
                    job.replica = (top or 0) + 1
                add_job(s, job, now)
            return job
        except IntegrityError:
            continue  # another submit stored the same job meanwhile: look again
    raise Twin(store.live_twin(job.identity))


def _waits_upstream(session: Any, job: Job) -> None:
    """A downstream job is stored waiting for its first upstream job not
    succeeded yet, not in its provider's line: the tick reads the line only
    as far as it admits, and reads every job held for a reason of its own."""
    for up_id in job.upstream_job_ids or ():
        up = session.get(Job, up_id)
        if up is not None and up.state != SUCCEEDED.value:
            job.reason_code, job.reason_args = "upstream", {"agent": up.agent, "job": up.id, "state": up.state}
            return


def new_job_row(*, agent: str, provider: str, model: str, training_file: Path, content_hash: str,
                hyperparameters: dict[str, Any], now: datetime, estimated_cost: float | None = None,
                data_tokens: int | None = None, upstream_job_ids: list[int] | None = None,
                model_job_id: int | None = None, training_files: list[dict[str, Any]] | None = None) -> Job:
    return Job(agent=agent, provider=provider, model=model, training_file=str(training_file),
               content_hash=content_hash, hyperparameters=dict(hyperparameters), state=PREPARED.value,
               identity=job_identity(agent, provider, model, content_hash, dict(hyperparameters), upstream_job_ids),
               estimated_cost=estimated_cost, data_tokens=data_tokens, **Reason("daemon").stored(),
               upstream_job_ids=list(upstream_job_ids) if upstream_job_ids else None, model_job_id=model_job_id,
               training_files=training_files, created_at=now, updated_at=now)


def add_job(session: Any, job: Job, now: datetime) -> None:
    """Insert a new job and its first history row (an event: `prepared`) in
    the caller's transaction."""
    session.add(job)
    session.flush()
    record(session, job, before=None, after=PREPARED.value, trigger="create", reason="submitted", now=now)
