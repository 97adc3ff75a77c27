"""What every part of ftctl.models agrees on, importable without SQLAlchemy:
the schema version this code expects, the time, the store's error."""

from __future__ import annotations

from datetime import datetime, timezone

# the Alembic revision this code expects (models/migrations/versions)
SCHEMA_HEAD = "0005"

# a job in one of these states blocks an identical submission (same agent,
# provider, model, data and hyperparameters): never pay twice for one job
LIVE_STATES = ("prepared", "queued", "running", "succeeded")
FINISHED_STATES = ("succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class StoreError(Exception):
    """The database cannot be used (one line, no secrets)."""


def redact_url(url: str) -> str:
    # never print a password that may sit in a database URL
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
