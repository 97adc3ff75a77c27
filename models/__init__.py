"""The store: SQLModel tables and the database they live in."""

from ftctl.models.store import LockHeld, Store, StoreError, utcnow
from ftctl.models.tables import Attempt, Job, JobEvent, ProviderState, UploadedFile

__all__ = ["Attempt", "Job", "JobEvent", "LockHeld", "ProviderState", "Store", "StoreError", "UploadedFile", "utcnow"]
