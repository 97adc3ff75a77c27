"""What every part of ftctl.models agrees on, importable without SQLAlchemy:
the schema version this code expects, the time, the store's error."""

from __future__ import annotations

import fcntl
from datetime import datetime, timezone
from pathlib import Path

# the Alembic revision this code expects (models/migrations/versions)
SCHEMA_HEAD = "0016"

# a job in one of these states blocks an identical submission (same agent,
# provider, model, data and hyperparameters): never pay twice for one job
LIVE_STATES = ("prepared", "queued", "running", "succeeded")
FINISHED_STATES = ("succeeded", "failed", "cancelled")

# the reason codes of a waiting job in its provider's line: why the line does
# not move, or why the job's estimate does not fit the budget. The tick reads
# the line in order, only as far as it can admit (ix_jobs_line); a job held for
# a reason of its own (backoff, its upstream jobs, ...) is read every tick
# (ix_jobs_held). ledger.reasons.IN_LINE names the same codes.
IN_LINE_CODES = ("daemon", "slot", "paused", "unreachable", "unobserved", "unknown_provider", "budget_left",
                 "budget_cap", "budget_no_estimate", "resources", "resources_short")
_CODES = ", ".join(f"'{c}'" for c in IN_LINE_CODES)
IN_LINE_SQL = f"COALESCE(reason_code, '') IN ({_CODES})"
HELD_SQL = f"state = 'prepared' AND COALESCE(reason_code, '') NOT IN ({_CODES})"
TRIED_SQL = "state = 'prepared' AND attempt > 0"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class StoreError(Exception):
    """The database cannot be used (one line, no secrets)."""


# SQLite's result codes for a database that cannot take a write as things
# stand (sqlite3's `sqlite_errorcode`, primary code): full, I/O error,
# read-only, corrupt, not a database, cannot open
_SQLITE_UNUSABLE = {13: "the disk is full", 10: "a disk I/O error", 8: "it is read-only", 11: "it is corrupt",
                    26: "it is not a database", 14: "it cannot be opened"}


def database_problem(exc: BaseException, where: str) -> str | None:
    """One line for a database error that is no bug but the database's state
    (a full disk, a read-only or corrupt file; PostgreSQL out of space), naming
    `where` (the file, or the URL without its password); None for anything else."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    why = _SQLITE_UNUSABLE.get(code & 0xFF) if isinstance(code, int) else None
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if why is None and isinstance(state, str) and state.startswith("53"):  # insufficient resources
        why = "the disk is full" if state == "53100" else "it is out of resources"
    if why is None:
        return None
    said = str(orig).strip().splitlines()[0] if str(orig).strip() else orig.__class__.__name__
    return f"database {where}: {why} ({said}); nothing more was written"


def redact_url(url: str) -> str:
    # never print a password that may sit in a database URL
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def lock_file_pid(database: Path) -> str | None:
    """The pid written in the held lock file beside a SQLite database ("?" if
    none was written), or None when no daemon holds it: a probe that takes
    nothing and writes nothing (models.leadership.FileLeadership holds it)."""
    try:
        fh = open(database.with_name(database.name + ".lock"))
    except OSError:
        return None  # no daemon ever ran here
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "?"
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None
