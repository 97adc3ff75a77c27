"""The daemon lock: only one process drives a database at a time, and it
can tell, right before every provider mutation, that it still does.

SQLite: an flock on a file beside the database. The lock is held on an
inode: if someone deletes the file (and another daemon makes a new one),
the old holder's lock is no longer the one at that path, so `check` compares
the inode it holds with the one the path names now.

PostgreSQL: a session advisory lock on a connection held for it. An idle
timeout, a failover or a pooler restart ends that session and the lock with
it; `check` asks the server, on that same connection, whether the lock is
still granted to it.

Both vanish with the process, so a SIGKILLed daemon leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

# a fixed advisory-lock key on PostgreSQL: "the daemon of this database"
PG_LOCK_KEY = 0x66746374  # "ftct"


def sqlite_holder(database: Path) -> str | None:
    """Who holds the lock beside a SQLite database ("pid 123"), or None: a
    probe that takes nothing and writes nothing (and needs no SQLAlchemy)."""
    try:
        fh = open(database.with_name(database.name + ".lock"))
    except OSError:
        return None  # no daemon ever ran here
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"pid {fh.read().strip() or '?'}"
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None


class LockError(Exception):
    pass


class LockHeld(LockError):
    """Another process drives this database."""


class LockLost(LockError):
    """This process held the lock and no longer does: it must stop acting."""


class DaemonLock:
    def __init__(self, engine: "Engine", sqlite_path: Path | None, where: str):
        self.engine = engine
        self.sqlite_path = sqlite_path
        self.where = where  # the database, for messages (no password)
        self._file: Any = None
        self._inode: tuple[int, int] | None = None
        self._conn: Any = None

    @property
    def path(self) -> Path | None:
        return self.sqlite_path.with_name(self.sqlite_path.name + ".lock") if self.sqlite_path else None

    @property
    def held(self) -> bool:
        return self._file is not None or self._conn is not None

    def acquire(self) -> None:
        if self.sqlite_path is not None:
            self._acquire_file()
        elif not self.engine.url.get_backend_name().startswith("sqlite"):
            self._acquire_pg()

    def _acquire_file(self) -> None:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise LockHeld(f"another ftctl daemon is driving {self.where} (pid {holder})") from None
        info = os.fstat(fh.fileno())
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._file, self._inode = fh, (info.st_dev, info.st_ino)

    def _acquire_pg(self) -> None:
        from sqlalchemy import text

        conn = self.engine.connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_KEY}).scalar()
        conn.commit()
        if not got:
            conn.close()
            raise LockHeld(f"another ftctl daemon is driving {self.where}")
        self._conn = conn

    def check(self) -> None:
        """Raise LockLost unless this process still holds the lock."""
        if self._file is not None:
            try:
                info = os.stat(self.path)
            except OSError:
                raise LockLost(f"the daemon lock {self.path} was removed") from None
            if (info.st_dev, info.st_ino) != self._inode:
                raise LockLost(f"the daemon lock {self.path} was replaced by another file")
        elif self._conn is not None:
            from sqlalchemy import text
            from sqlalchemy.exc import SQLAlchemyError

            try:
                held = self._conn.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND granted"
                    " AND pid = pg_backend_pid()"), {"k": PG_LOCK_KEY}).scalar()
                self._conn.commit()
            except SQLAlchemyError as exc:
                raise LockLost(f"the database session holding the daemon lock ended "
                               f"({exc.__class__.__name__})") from None
            if not held:
                raise LockLost("the database no longer grants this daemon its advisory lock")

    def holder(self) -> str | None:
        """Who drives this database now ("pid 123"), or None: a probe that
        takes nothing and writes nothing."""
        if self.sqlite_path is not None:
            return sqlite_holder(self.sqlite_path)
        if self.engine.url.get_backend_name().startswith("sqlite"):
            return None
        from sqlalchemy import text

        with self.engine.connect() as conn:
            pid = conn.execute(text(
                "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
                " AND l.objid = :k AND l.granted AND l.database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())"), {"k": PG_LOCK_KEY}).scalar()
            return f"backend pid {pid}" if pid else None

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = self._inode = None
        if self._conn is not None:
            from sqlalchemy import text
            from sqlalchemy.exc import SQLAlchemyError

            with contextlib.suppress(SQLAlchemyError):
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                self._conn.commit()
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None
