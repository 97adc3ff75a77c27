"""ftctl.models: the SQLModel tables, the store (SQLite or PostgreSQL), the
daemon lock and the Alembic migrations."""

from ftctl.models.locks import LockError, LockHeld, LockLost
from ftctl.models.store import Store, StoreError, utcnow
from ftctl.models.tables import Attempt, EvalAnswer, Evaluation, Job, JobEvent, ProviderState, QuoteJob, UploadedFile

__all__ = ["Attempt", "EvalAnswer", "Evaluation", "Job", "JobEvent", "LockError", "LockHeld", "LockLost", "ProviderState", "QuoteJob", "Store",
           "StoreError", "UploadedFile", "utcnow"]
