"""SQLModel tables. Times are naive UTC datetimes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import hashlib
import json

from sqlalchemy import JSON, Column, DateTime, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# the Alembic revision this code expects, and the states a twin is refused
# in, live in models.schema (importable without SQLModel)
from ftctl.models.schema import LIVE_STATES, SCHEMA_HEAD  # noqa: F401, E402

_LIVE = text("state IN ('prepared', 'queued', 'running', 'succeeded')")
_MODELS = text("state = 'succeeded' AND fine_tuned_model IS NOT NULL")
_CANCEL = text("cancel_pending")


def job_identity(agent: str, provider: str, model: str, content_hash: str, hyperparameters: dict[str, Any]) -> str:
    """What makes two submissions the same job."""
    key = json.dumps([agent, provider, model, content_hash, hyperparameters], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    # at most one live job per identity, unless submitted again with --force
    # (which takes the next `replica`): the database refuses a twin even when
    # several `ftctl submit` run at once
    __table_args__ = (Index("ux_jobs_live_identity", "identity", "replica", unique=True,
                            sqlite_where=_LIVE, postgresql_where=_LIVE),
                      # the reads and the tick use these (migration 0005): the last finished
                      # jobs and money spent, each agent's latest model, cancels still owed
                      Index("ix_jobs_state_updated", "state", "updated_at"),
                      Index("ix_jobs_latest_model", "agent", "updated_at", sqlite_where=_MODELS,
                            postgresql_where=_MODELS),
                      Index("ix_jobs_cancel_pending", "id", sqlite_where=_CANCEL, postgresql_where=_CANCEL))

    id: Optional[int] = Field(default=None, primary_key=True)
    agent: str = Field(index=True)
    provider: str
    model: str
    training_file: str
    content_hash: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    identity: str = Field(default="")
    replica: int = 0
    state: str = Field(index=True)
    attempt: int = 0
    provider_file_id: Optional[str] = None
    provider_job_id: Optional[str] = Field(default=None, index=True)
    # the token the provider echoes back (Mistral: suffix; OpenAI: metadata);
    # stored before the create call so a crash never leads to a second job
    client_token: Optional[str] = Field(default=None, index=True)
    intent_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    provider_status: Optional[str] = None
    fine_tuned_model: Optional[str] = None
    estimated_cost: Optional[float] = None
    actual_cost: Optional[float] = None
    data_tokens: Optional[int] = None  # counted at submit with the provider's tokenizer
    trained_tokens: Optional[int] = None  # reported by the provider
    last_error: Optional[str] = None
    # why the job is where it is, as data (rendered by engine.reasons)
    reason_code: Optional[str] = None
    reason_args: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON, nullable=True))
    not_before: Optional[datetime] = Field(default=None, sa_type=DateTime)
    cancel_pending: bool = False
    created_at: datetime = Field(sa_type=DateTime)
    updated_at: datetime = Field(sa_type=DateTime)


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    at: datetime = Field(sa_type=DateTime)
    from_state: Optional[str] = None
    to_state: str
    trigger: str
    reason: Optional[str] = None
    provider_status: Optional[str] = None


class Attempt(SQLModel, table=True):
    """One submission to a provider (one client token)."""

    __tablename__ = "attempts"

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    number: int
    client_token: str = Field(unique=True)
    provider_job_id: Optional[str] = None
    submitted_at: datetime = Field(sa_type=DateTime)
    ended_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    outcome: Optional[str] = None
    counted: bool = True


class UploadedFile(SQLModel, table=True):
    __tablename__ = "uploaded_files"
    __table_args__ = (UniqueConstraint("provider", "content_hash"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    provider: str
    content_hash: str
    file_id: str
    uploaded_at: datetime = Field(sa_type=DateTime)


class ProviderState(SQLModel, table=True):
    """What the controller has learned about a provider (not its config)."""

    __tablename__ = "provider_state"

    name: str = Field(primary_key=True)
    learned_limit: Optional[int] = None
    learned_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    paused_why: Optional[str] = None  # auth, quota, unavailable
    paused_message: Optional[str] = None
    paused_until: Optional[datetime] = Field(default=None, sa_type=DateTime)
    # what the last tick's admission saw, for "2/2 busy" in status lines
    slots_used: Optional[int] = None
    slots_limit: Optional[int] = None


class QuoteJob(SQLModel, table=True):
    """A job created only to read the provider's price (auto_start=False),
    kept until the provider confirms it is no longer active."""

    __tablename__ = "quote_jobs"

    id: Optional[int] = Field(default=None, primary_key=True)
    provider: str = Field(index=True)
    provider_job_id: str
    created_at: datetime = Field(sa_type=DateTime)
    settled_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
