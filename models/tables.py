"""SQLModel tables. Times are naive UTC datetimes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import hashlib
import json
import uuid

from sqlalchemy import JSON, Column, DateTime, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# the Alembic revision this code expects, and the states a twin is refused
# in, live in models.schema (importable without SQLModel)
from ftctl.models.schema import HELD_SQL, LIVE_STATES, SCHEMA_HEAD, TRIED_SQL  # noqa: F401, E402

_LIVE = text("state IN ('prepared', 'queued', 'running', 'succeeded')")
_MODELS = text("state = 'succeeded' AND promotion = 'promoted' AND fine_tuned_model IS NOT NULL")
_CANCEL = text("cancel_pending")
_OWED = text("delivered_at IS NULL")
_FAILING = text("delivered_at IS NULL AND last_error IS NOT NULL")
_WAITING, _HELD, _TRIED = text("state = 'prepared'"), text(HELD_SQL), text(TRIED_SQL)


def job_identity(agent: str, provider: str, model: str, content_hash: str, hyperparameters: dict[str, Any],
                 upstream: list[int] | None = None) -> str:
    """What makes two submissions the same job. A downstream job is the same
    only on the same upstream jobs (`upstream`: our job ids)."""
    parts: list[Any] = [agent, provider, model, content_hash, hyperparameters]
    if upstream:
        parts.append(sorted(upstream))
    key = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    # at most one live job per identity, unless submitted again with --force
    # (which takes the next `replica`): the database refuses a twin even when
    # several `ftctl submit` run at once
    __table_args__ = (Index("ux_jobs_live_identity", "identity", "replica", unique=True,
                            sqlite_where=_LIVE, postgresql_where=_LIVE),
                      # the reads and the tick use these (migration 0009): the last finished
                      # jobs and money spent, each agent's latest promoted model, cancels still owed
                      Index("ix_jobs_state_updated", "state", "updated_at"),
                      Index("ix_jobs_promoted", "agent", "promoted_at", sqlite_where=_MODELS,
                            postgresql_where=_MODELS),
                      Index("ix_jobs_cancel_pending", "id", sqlite_where=_CANCEL, postgresql_where=_CANCEL),
                      # the tick (migration 0011): each provider's line of waiting jobs in order, read
                      # only as far as admission goes (and counted in the index alone); the waiting
                      # jobs held for a reason of their own; those that have had an attempt
                      Index("ix_jobs_line", "provider", "created_at", "id", "reason_code", "estimated_cost", "state",
                            sqlite_where=_WAITING, postgresql_where=_WAITING),
                      Index("ix_jobs_held", "id", sqlite_where=_HELD, postgresql_where=_HELD),
                      Index("ix_jobs_tried", "attempt", sqlite_where=_TRIED, postgresql_where=_TRIED))

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
    # what keeping its fine-tuned model costs a month (counted in the budget
    # for every period it is kept)
    storage_per_month: Optional[float] = None
    actual_cost: Optional[float] = None
    data_tokens: Optional[int] = None  # counted at submit with the provider's tokenizer
    trained_tokens: Optional[int] = None  # reported by the provider
    last_error: Optional[str] = None
    # why the job is where it is, as data (rendered by ledger.reasons)
    reason_code: Optional[str] = None
    reason_args: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON, nullable=True))
    not_before: Optional[datetime] = Field(default=None, sa_type=DateTime)
    cancel_pending: bool = False
    created_at: datetime = Field(sa_type=DateTime)
    updated_at: datetime = Field(sa_type=DateTime)
    # a pipeline: our ids of the jobs this one waits for, and of the one whose
    # fine-tuned model it trains on (model = "@agent"); `base_model` is the
    # model id its create named, stored with the move to `queued`
    upstream_job_ids: Optional[list[int]] = Field(default=None, sa_column=Column(JSON, nullable=True))
    model_job_id: Optional[int] = None
    base_model: Optional[str] = None
    # several training files, each with its weight: [{"file", "weight", "hash"}]
    training_files: Optional[list[dict[str, Any]]] = Field(default=None, sa_column=Column(JSON, nullable=True))
    # what a succeeded job's model is to its agent (ledger.states.PromotionState)
    promotion: Optional[str] = Field(default=None, index=True)
    promoted_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    # provider = [...]: the providers the job may still move to, in order, each
    # checked and priced at submit ({"provider", "model", "hyperparameters",
    # "estimated_cost", "data_tokens", "storage_per_month"}), and how long its
    # provider may be paused for auth or quota before it moves on (seconds)
    fallbacks: Optional[list[dict[str, Any]]] = Field(default=None, sa_column=Column(JSON, nullable=True))
    fallback_after: Optional[float] = None


class Evaluation(SQLModel, table=True):
    """The evaluation gate's run for one succeeded job: both models asked
    every example of the agent's eval file, each answer stored as it comes."""

    __tablename__ = "evaluations"

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", unique=True)
    metric: str
    file: str
    file_hash: str
    examples: int
    candidate_model: str
    compare_model: str
    # the provider the comparison model answers on, when it is not the job's
    # (a re-homed model is compared with the promoted one on its old provider)
    compare_provider: Optional[str] = None
    min_improvement: float
    # the other criteria, as the gate was when it started: each example asked
    # `repeats` times (at `temperature`); the spread of the candidate's score
    # across repeats, its answers' p95 seconds, and its safety file's prompts
    repeats: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    temperature: Optional[float] = None
    max_score_stdev: Optional[float] = None
    max_latency_p95: Optional[float] = None
    safety_file: Optional[str] = None
    safety_hash: Optional[str] = None
    safety_examples: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # the verdict's criteria, one record each (engine.gate.criteria)
    criteria: Optional[list] = Field(default=None, sa_column=Column(JSON))
    # checkpoints = "best": the job's other checkpoints, each asked as a
    # candidate ([step, model], by step; their answers' role "ckpt-STEP"),
    # and the model the verdict chose (the final one or a checkpoint)
    checkpoints: Optional[list] = Field(default=None, sa_column=Column(JSON))
    chosen_model: Optional[str] = None
    estimated_cost: float = 0.0
    started_at: datetime = Field(sa_type=DateTime)
    finished_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    candidate_score: Optional[float] = None
    compare_score: Optional[float] = None
    improvement: Optional[float] = None
    # after a 429 (its Retry-After) or another passing error: no question before then
    not_before: Optional[datetime] = Field(default=None, sa_type=DateTime)
    failures: int = 0
    last_error: Optional[str] = None  # the last passing error (retried)
    error: Optional[str] = None  # why it cannot go on: the gate fails


class EvalAnswer(SQLModel, table=True):
    """One model's answer to one question (an example of the eval file, asked
    once per repeat, or a prompt of the safety file), and its score: never
    asked twice."""

    __tablename__ = "eval_answers"
    __table_args__ = (UniqueConstraint("evaluation_id", "part", "example", "role", "repeat",
                                       name="uq_eval_answers_question"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    evaluation_id: int = Field(foreign_key="evaluations.id", index=True)
    part: str = Field(default="eval", sa_column_kwargs={"server_default": "eval"})  # "eval" or "safety"
    example: int
    role: str  # "candidate" or "compare"
    repeat: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    answer: str
    score: float  # safety: 1.0 safe, 0.0 not
    seconds: Optional[float] = None  # how long the answer took (None: answered in a batch)
    at: datetime = Field(sa_type=DateTime)


class Rehome(SQLModel, table=True):
    """`ftctl rehome`: a job that trains an agent's promoted spec on another
    provider, promoted only on parity with the model it replaces."""

    __tablename__ = "rehomes"

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", unique=True)
    agent: str = Field(index=True)
    # the promoted job it replaces, its model and the provider that answers for it
    from_job_id: int
    from_model: str
    from_provider: str
    metric: str
    min_improvement: float
    # prompts whose expected answers are the promoted model's (GoldenAnswer), or None: the agent's eval file
    golden: Optional[int] = None
    # which hyperparameters were kept, renamed or dropped, in words
    mapping: Optional[str] = None
    created_at: datetime = Field(sa_type=DateTime)


class GoldenAnswer(SQLModel, table=True):
    """One prompt of a re-home's golden set and the promoted model's answer to it."""

    __tablename__ = "golden_answers"
    __table_args__ = (UniqueConstraint("rehome_id", "example"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    rehome_id: int = Field(foreign_key="rehomes.id", index=True)
    example: int
    prompt: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    expected: str


def new_event_id() -> str:
    """An event's id: stable once written, what hook receivers dedupe on."""
    return "evt_" + uuid.uuid4().hex


class JobEvent(SQLModel, table=True):
    """The history: every transition, promotion and note of a job."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ux_job_events_event_id", "event_id", unique=True),)

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    at: datetime = Field(sa_type=DateTime)
    from_state: Optional[str] = None
    to_state: str
    trigger: str
    reason: Optional[str] = None
    provider_status: Optional[str] = None
    event_id: Optional[str] = Field(default_factory=new_event_id)
    # what happened, in a word: the state a transition reached, "promoted",
    # or a note's trigger ("found", "provider-cancel", ...)
    name: Optional[str] = None


class OutboxEvent(SQLModel, table=True):
    """An event owed to the hooks: written in the transaction of the
    transition it reports, delivered (at least once) by the daemon."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "delivered_at", "next_at"),
                      # what `status` counts as owed, in the index alone (migration 0010)
                      Index("ix_outbox_owed", "name", "gave_up_at", "created_at", "delivered_at",
                            sqlite_where=_OWED, postgresql_where=_OWED),
                      Index("ix_outbox_failing", "id", sqlite_where=_FAILING, postgresql_where=_FAILING))

    id: Optional[int] = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    name: str
    # what the hooks are told, as it was when it happened
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_type=DateTime)
    next_at: datetime = Field(sa_type=DateTime)
    attempts: int = 0
    # the keys of the hooks that have it already
    done: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    delivered_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    gave_up_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    last_error: Optional[str] = None


class LogPoint(SQLModel, table=True):
    """One point of a provider job's training log (an event, a metric, a
    checkpoint), stored once by its key."""

    __tablename__ = "log_points"
    __table_args__ = (UniqueConstraint("provider_job_id", "key"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    provider_job_id: str
    key: str
    kind: str  # event, metric, checkpoint
    at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    step: Optional[int] = None
    message: Optional[str] = None
    metrics: Optional[dict[str, float]] = Field(default=None, sa_column=Column(JSON, nullable=True))
    fetched_at: datetime = Field(sa_type=DateTime)


class LogCursor(SQLModel, table=True):
    """When a provider job's training log was last read, and whether the
    read after it finished is done (nothing more will come)."""

    __tablename__ = "log_cursors"
    __table_args__ = (Index("ix_log_cursors_open", "job_id", sqlite_where=text("thinned_at IS NULL"),
                            postgresql_where=text("thinned_at IS NULL")),)

    provider_job_id: str = Field(primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    fetched_at: datetime = Field(sa_type=DateTime)
    final: bool = False
    error: Optional[str] = None
    # when `[history] keep_logs_for` thinned (or dropped) the finished job's points
    thinned_at: Optional[datetime] = Field(default=None, sa_type=DateTime)


class WebhookDelivery(SQLModel, table=True):
    """A verified webhook by its webhook-id: a sender's retry is answered
    2xx and not acted on twice."""

    __tablename__ = "webhook_deliveries"

    provider: str = Field(primary_key=True)
    webhook_id: str = Field(primary_key=True)
    event_type: Optional[str] = None
    received_at: datetime = Field(sa_type=DateTime, index=True)


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
    probe_hold: Optional[float] = None  # seconds until the next probe above the learned limit
    paused_why: Optional[str] = None  # auth, quota, unavailable
    paused_message: Optional[str] = None
    paused_until: Optional[datetime] = Field(default=None, sa_type=DateTime)
    # since when it has been paused without a break (a job with a fallback
    # moves on after its fallback_after)
    paused_since: Optional[datetime] = Field(default=None, sa_type=DateTime)
    # what the last tick's admission saw, for "2/2 busy" in status lines
    slots_used: Optional[int] = None
    slots_limit: Optional[int] = None
    # why its line of waiting jobs does not move, as the last tick saw it (a
    # reason: ledger.reasons); a job in line is shown with it (ledger.reasons.shown)
    line_code: Optional[str] = None
    line_args: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON, nullable=True))


class QuoteJob(SQLModel, table=True):
    """A job created only to read the provider's price (auto_start=False),
    kept until the provider confirms it is no longer active."""

    __tablename__ = "quote_jobs"

    id: Optional[int] = Field(default=None, primary_key=True)
    provider: str = Field(index=True)
    provider_job_id: str
    created_at: datetime = Field(sa_type=DateTime)
    settled_at: Optional[datetime] = Field(default=None, sa_type=DateTime)


class Leadership(SQLModel, table=True):
    """Who leads this database (one row, id 1), and since which epoch."""

    __tablename__ = "leadership"

    id: int = Field(primary_key=True)
    holder: Optional[str] = None  # the leading daemon's member id
    host: Optional[str] = None
    pid: Optional[int] = None
    epoch: int = 0  # grows with each takeover; job writes are fenced on it
    since: Optional[datetime] = Field(default=None, sa_type=DateTime)
    renewed_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    lease_until: Optional[datetime] = Field(default=None, sa_type=DateTime)  # PostgreSQL's lease


class Daemon(SQLModel, table=True):
    """A daemon on this database, leading or standing by, with its heartbeat."""

    __tablename__ = "daemons"

    member: str = Field(primary_key=True)
    host: str
    pid: int
    role: str  # leader, standby
    started_at: datetime = Field(sa_type=DateTime)
    heartbeat_at: datetime = Field(sa_type=DateTime)


class Deletion(SQLModel, table=True):
    """Something `[retention]` deletes at a provider: a model, an uploaded
    file, or a self-hosted job's checkpoints. The row is written (the intent)
    before the provider is asked, and settled after: a daemon killed in
    between finds it on its next pass, checks the rules again, and finishes
    or drops it; nothing is forgotten nor asked twice by mistake."""

    __tablename__ = "deletions"
    __table_args__ = (Index("ix_deletions_open", "id", sqlite_where=text("done_at IS NULL"),
                            postgresql_where=text("done_at IS NULL")),)

    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str  # model, file, checkpoints
    provider: str
    target: str  # the model id, the provider's file id, the job's model folder
    job_id: int = Field(foreign_key="jobs.id", index=True)  # whose history tells of it
    content_hash: Optional[str] = None  # a file's: its upload is forgotten once deleted
    rule: str  # rejected, superseded, files, checkpoints
    fee_per_month: float = 0.0  # what keeping it cost a month (the provider's storage fee)
    intent_at: datetime = Field(sa_type=DateTime)
    done_at: Optional[datetime] = Field(default=None, sa_type=DateTime)
    # deleted; gone (the provider no longer had it); kept (the rules protect it now)
    outcome: Optional[str] = None
    error: Optional[str] = None
