"""ftctl.models: the SQLModel tables, the store (SQLite or PostgreSQL), the
daemon lock, the Alembic migrations, and the reads the command line makes
without the ORM (`reads`).

Names load on first use: a read command never imports SQLModel.
"""

from __future__ import annotations

from typing import Any

from ftctl.models.schema import StoreError, utcnow

_WHERE = {"LockError": "locks", "LockHeld": "locks", "LockLost": "locks", "Store": "store",
          "Attempt": "tables", "Job": "tables", "JobEvent": "tables", "ProviderState": "tables",
          "QuoteJob": "tables", "UploadedFile": "tables"}

__all__ = ["Attempt", "Job", "JobEvent", "LockError", "LockHeld", "LockLost", "ProviderState", "QuoteJob", "Store",
           "StoreError", "UploadedFile", "utcnow"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"ftctl.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ftctl.models' has no attribute {name!r}")
