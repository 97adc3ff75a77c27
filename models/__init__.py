"""ftctl.models: the SQLModel tables, the store (SQLite or PostgreSQL),
leadership (which daemon acts, the others stand by), the Alembic migrations,
and the reads the command line makes without the ORM (`reads`).

Names load on first use: a read command never imports SQLModel.
"""

from __future__ import annotations

from typing import Any

from ftctl.models.schema import StoreError, utcnow  # noqa: F401 - re-exported

_TABLES = ("Attempt", "Deletion", "EvalAnswer", "Evaluation", "GoldenAnswer", "Job", "JobEvent", "LogCursor",
           "LogPoint", "OutboxEvent", "ProviderState", "QuoteJob", "Rehome", "UploadedFile", "WebhookDelivery")
_WHERE = {"LockError": "leadership", "LockHeld": "leadership", "LockLost": "leadership", "Store": "store",
          **{name: "tables" for name in _TABLES}}

__all__ = sorted([*_WHERE, "StoreError", "utcnow"])


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"ftctl.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ftctl.models' has no attribute {name!r}")
