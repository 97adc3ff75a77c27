"""ftctl.models: the SQLModel tables, the store (SQLite or PostgreSQL),
leadership (which daemon acts, the others stand by) and the Alembic migrations."""

from ftctl.models.leadership import LockError, LockHeld, LockLost
from ftctl.models.store import Store, StoreError, utcnow
from ftctl.models.tables import (Attempt, EvalAnswer, Evaluation, Job, JobEvent, LogCursor, LogPoint, OutboxEvent,
                                 ProviderState, QuoteJob, UploadedFile, WebhookDelivery)

__all__ = ["Attempt", "EvalAnswer", "Evaluation", "Job", "JobEvent", "LockError", "LockHeld", "LockLost", "LogCursor",
           "LogPoint", "OutboxEvent", "ProviderState", "QuoteJob", "Store", "StoreError", "UploadedFile",
           "WebhookDelivery", "utcnow"]
