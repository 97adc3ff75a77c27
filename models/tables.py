"""SQLModel tables. Times are naive UTC datetimes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

# the Alembic revision this code expects (models/migrations/versions)
SCHEMA_HEAD = "0002"


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: Optional[int] = Field(default=None, primary_key=True)
    agent: str = Field(index=True)
    provider: str
    model: str
    training_file: str
    content_hash: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
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
    reason: Optional[str] = None
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
    paused_reason: Optional[str] = None
    paused_until: Optional[datetime] = Field(default=None, sa_type=DateTime)
