"""Leadership: one daemon acts on a database; the others stand by.

Every daemon is a member (a row in `daemons`, with a heartbeat). One of them
leads, recorded in the single `leadership` row with an epoch that grows with
each takeover. Two backends:

- PostgreSQL, `LeaseLeadership`: the leader holds a lease (`lease_until`,
  counted by the database's clock) and renews it every third of the lease. A
  standby takes over only once the lease has run out, bumping the epoch. The
  leader believes it leads only until the moment its last successful renewal
  was *sent* plus the lease (less a margin): a leader that was paused
  (SIGSTOP, a long GC, a frozen VM) or cut off stops acting by itself before
  anyone can take over. Job writes are fenced: each write transaction first
  reads the leadership row FOR SHARE and goes on only if its epoch and holder
  are still this daemon's and the lease is live (a compare-and-set on the
  epoch that a takeover, which locks the row FOR UPDATE, cannot overtake).
- SQLite, `FileLeadership`: an flock on a file beside the database (one host).
  The lock is held on an inode: if the file is deleted (and another daemon
  makes a new one), the old holder's lock is no longer the one at that path,
  so `check` compares inodes. The epoch is kept in the same table, and job
  writes check it as well.

Both leave nothing stale behind when a process dies: the flock goes with it,
and a lease simply runs out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ftctl.models.schema import lock_file_pid

# the share of the lease a leader keeps in hand against clock drift and delays
MARGIN = 0.2


class LockError(Exception):
    pass


class LockHeld(LockError):
    """Another daemon leads this database."""


class LockLost(LockError):
    """This daemon led and no longer does (or cannot prove it): it must stop acting."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _times(row: Any) -> dict[str, Any]:
    """A row as a dict, its times as datetimes (SQLite hands text() results back as text)."""
    out = dict(row)
    for key, value in out.items():
        if isinstance(value, str) and key in ("since", "lease_until", "renewed_at", "started_at", "heartbeat_at"):
            out[key] = datetime.fromisoformat(value)
    return out


class Leadership:
    """What both backends share: who this member is, heartbeats, probes."""

    def __init__(self, engine: Engine, where: str, lease: float = 15.0):
        self.engine = engine
        self.where = where  # the database, for messages (no password)
        self.lease = lease
        self.member = uuid.uuid4().hex[:12]
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.epoch: int | None = None
        self.since: datetime | None = None
        self.renewals = 0
        self.why_lost: str | None = None  # what `renew` or `fence` found, in words

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    # -- the members ---------------------------------------------------------------

    def _begin(self) -> Any:
        """A write transaction on the database (SQLite: BEGIN IMMEDIATE)."""
        if self.engine.url.get_backend_name().startswith("sqlite"):
            return self.engine.execution_options(ftctl_write=True).begin()
        return self.engine.begin()

    def heartbeat(self, role: str) -> None:
        """Record this member and its role now (never fenced: standbys write it)."""
        now = _utcnow()
        with self._begin() as conn:
            updated = conn.execute(text("UPDATE daemons SET role = :role, heartbeat_at = :now, host = :host, "
                                        "pid = :pid WHERE member = :member"),
                                   {"role": role, "now": now, "host": self.host, "pid": self.pid,
                                    "member": self.member}).rowcount
            if not updated:
                conn.execute(text("INSERT INTO daemons (member, host, pid, role, started_at, heartbeat_at) "
                                  "VALUES (:member, :host, :pid, :role, :now, :now)"),
                             {"member": self.member, "host": self.host, "pid": self.pid, "role": role, "now": now})

    def leave(self) -> None:
        with contextlib.suppress(SQLAlchemyError), self._begin() as conn:
            conn.execute(text("DELETE FROM daemons WHERE member = :member"), {"member": self.member})

    def leader(self) -> dict[str, Any] | None:
        """The leadership row (host, pid, since, epoch), if someone leads now."""
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT holder, host, pid, epoch, since, lease_until FROM leadership "
                                    "WHERE id = 1")).mappings().first()
        if row is None or row["holder"] is None:
            return None
        row = _times(row)
        return row if self._live(row) else None

    def members(self, within: float = 300.0) -> list[dict[str, Any]]:
        """Members seen within `within` seconds, newest heartbeat first."""
        since = datetime.fromtimestamp(time.time() - within, timezone.utc).replace(tzinfo=None)
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT member, host, pid, role, started_at, heartbeat_at FROM daemons "
                                     "WHERE heartbeat_at >= :since ORDER BY heartbeat_at DESC"),
                                {"since": since}).mappings().all()
        return [_times(r) for r in rows]

    def _live(self, row: Any) -> bool:
        return True

    def holder(self) -> str | None:
        """Who leads, in words ("host h pid 12, epoch 3"), or None: a probe that takes nothing."""
        row = self.leader()
        if row is None:
            return None
        return f"host {row['host']} pid {row['pid']}, epoch {row['epoch']}"

    # -- to be filled in ---------------------------------------------------------

    def acquire(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def renew(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def fence(self, conn: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def release(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def acquire_or_raise(self) -> None:
        if not self.acquire():
            who = self.holder()
            raise LockHeld(f"another ftctl daemon is driving {self.where}" + (f" ({who})" if who else ""))


class LeaseLeadership(Leadership):
    """PostgreSQL: a lease in the `leadership` row, by the database's clock."""

    def __init__(self, engine: Engine, where: str, lease: float = 15.0):
        super().__init__(engine, where, lease)
        self._deadline = 0.0  # monotonic: until when this member may act

    def _live(self, row: Any) -> bool:
        return row["lease_until"] is not None and row["lease_until"] > self._db_now()

    def _db_now(self) -> datetime:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT (now() AT TIME ZONE 'UTC')")).scalar()

    def _ms(self, share: float) -> int:
        return max(100, int(self.lease * share * 1000))

    def acquire(self) -> bool:
        sent = time.monotonic()
        with self.engine.begin() as conn:
            # a leader frozen inside a fenced write holds the row FOR SHARE until
            # the server ends its session (see `fence`): wait a while, not forever,
            # and try again at the next heartbeat
            conn.execute(text(f"SET LOCAL lock_timeout = {self._ms(0.5)}"))
            try:
                row = conn.execute(text("SELECT holder, epoch, lease_until > (now() AT TIME ZONE 'UTC') AS live "
                                        "FROM leadership WHERE id = 1 FOR UPDATE")).mappings().first()
            except OperationalError as exc:
                if getattr(getattr(exc, "orig", None), "sqlstate", None) == "55P03":  # lock_not_available
                    return False
                raise
            if row is None:
                conn.execute(text("INSERT INTO leadership (id, epoch) VALUES (1, 0) ON CONFLICT DO NOTHING"))
                return False  # the next attempt takes it
            if row["live"] and row["holder"] != self.member:
                return False
            epoch = row["epoch"] if row["live"] and row["holder"] == self.member else row["epoch"] + 1
            conn.execute(text("UPDATE leadership SET holder = :m, host = :h, pid = :p, epoch = :e, "
                              "since = (now() AT TIME ZONE 'UTC'), renewed_at = (now() AT TIME ZONE 'UTC'), "
                              "lease_until = (now() AT TIME ZONE 'UTC') + make_interval(secs => :lease) "
                              "WHERE id = 1"),
                         {"m": self.member, "h": self.host, "p": self.pid, "e": epoch, "lease": self.lease})
        self.epoch, self.since = epoch, _utcnow()
        self._deadline = sent + self.lease * (1 - MARGIN)
        return True

    def renew(self) -> bool:
        """Extend the lease; False once it is definitely someone else's (or
        ran out). A database that does not answer raises: the lease still
        runs out locally, and `check` says so."""
        if self.epoch is None:
            return False
        sent = time.monotonic()
        with self.engine.begin() as conn:
            renewed = conn.execute(text(
                "UPDATE leadership SET renewed_at = (now() AT TIME ZONE 'UTC'), "
                "lease_until = (now() AT TIME ZONE 'UTC') + make_interval(secs => :lease) "
                "WHERE id = 1 AND holder = :m AND epoch = :e AND lease_until > (now() AT TIME ZONE 'UTC')"),
                {"m": self.member, "e": self.epoch, "lease": self.lease}).rowcount
        if renewed != 1:
            self.epoch = None
            self.why_lost = "another daemon took over the lease"
            return False
        self._deadline = sent + self.lease * (1 - MARGIN)
        self.renewals += 1
        return True

    def check(self) -> None:
        if self.epoch is None:
            raise LockLost("this daemon does not lead")
        if time.monotonic() >= self._deadline:
            raise LockLost(f"the lease (epoch {self.epoch}) ran out before it could be renewed")

    def fence(self, conn: Any) -> None:
        self.check()
        # a leader paused (SIGSTOP, a frozen VM) in the middle of this transaction
        # would hold the leadership row FOR SHARE for as long as it is paused,
        # and no standby could take over: the server ends such a session once
        # it has been idle in its transaction for the lease
        conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {self._ms(1.0)}"))
        ok = conn.execute(text("SELECT 1 FROM leadership WHERE id = 1 AND holder = :m AND epoch = :e "
                               "AND lease_until > (now() AT TIME ZONE 'UTC') FOR SHARE"),
                          {"m": self.member, "e": self.epoch}).first()
        if ok is None:
            self.epoch = None
            self.why_lost = "another daemon leads now (the epoch moved on)"
            raise LockLost(self.why_lost)

    def release(self) -> None:
        if self.epoch is None:
            return
        with contextlib.suppress(SQLAlchemyError), self.engine.begin() as conn:
            conn.execute(text("UPDATE leadership SET holder = NULL, lease_until = (now() AT TIME ZONE 'UTC') "
                              "WHERE id = 1 AND holder = :m AND epoch = :e"), {"m": self.member, "e": self.epoch})
        self.epoch = None


class FileLeadership(Leadership):
    """SQLite: an flock beside the database file, held on an inode."""

    def __init__(self, engine: Engine, sqlite_path: Path | None, where: str, lease: float = 15.0):
        super().__init__(engine, where, lease)
        self.sqlite_path = sqlite_path
        self._file: Any = None
        self._inode: tuple[int, int] | None = None

    @property
    def path(self) -> Path | None:
        return self.sqlite_path.with_name(self.sqlite_path.name + ".lock") if self.sqlite_path else None

    def acquire(self) -> bool:
        if self.sqlite_path is None:  # an in-memory database: this process is all there is
            self.epoch = self.epoch or 1
            return True
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        info = os.fstat(fh.fileno())
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._file, self._inode = fh, (info.st_dev, info.st_ino)
        try:
            with self._begin() as conn:
                epoch = (conn.execute(text("SELECT epoch FROM leadership WHERE id = 1")).scalar() or 0) + 1
                updated = conn.execute(text("UPDATE leadership SET holder = :m, host = :h, pid = :p, epoch = :e, "
                                            "since = :now, renewed_at = :now, lease_until = NULL WHERE id = 1"),
                                       {"m": self.member, "h": self.host, "p": self.pid, "e": epoch,
                                        "now": _utcnow()}).rowcount
                if not updated:
                    conn.execute(text("INSERT INTO leadership (id, holder, host, pid, epoch, since, renewed_at) "
                                      "VALUES (1, :m, :h, :p, :e, :now, :now)"),
                                 {"m": self.member, "h": self.host, "p": self.pid, "e": epoch, "now": _utcnow()})
        except BaseException:
            self.release()
            raise
        self.epoch, self.since = epoch, _utcnow()
        return True

    def renew(self) -> bool:
        try:
            self.check()
        except LockLost as exc:
            self.epoch = None
            self.why_lost = str(exc)
            return False
        self.renewals += 1
        return True

    def check(self) -> None:
        if self.epoch is None:
            raise LockLost("this daemon does not lead")
        if self._file is None:
            return
        try:
            info = os.stat(self.path)
        except OSError:
            raise LockLost(f"the daemon lock {self.path} was removed") from None
        if (info.st_dev, info.st_ino) != self._inode:
            raise LockLost(f"the daemon lock {self.path} was replaced by another file")

    def fence(self, conn: Any) -> None:
        self.check()
        row = conn.execute(text("SELECT holder, epoch FROM leadership WHERE id = 1")).first()
        if row is None or row[0] != self.member or row[1] != self.epoch:
            self.epoch = None
            self.why_lost = "another daemon leads now (the epoch moved on)"
            raise LockLost(self.why_lost)

    def leader(self) -> dict[str, Any] | None:
        if self.sqlite_path is None or self._probe() is None:
            return None
        return super().leader()

    def _probe(self) -> str | None:
        """The pid in a held lock file, or None: takes nothing, writes nothing."""
        return lock_file_pid(self.sqlite_path) if self.sqlite_path is not None else None

    def holder(self) -> str | None:
        pid = self._probe() if self.sqlite_path is not None else None
        return f"pid {pid}" if pid else None

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = self._inode = None
        self.epoch = None
