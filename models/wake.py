"""Wake-ups: a write to the database tells the daemon to look now, instead
of at its next poll.

PostgreSQL: NOTIFY on a channel the daemon LISTENs on (it reaches a daemon
on another host). SQLite: one datagram to a unix socket beside the database
file (`ftctl.db.wake`), which needs no network and works under the hardened
unit (the state directory is writable, AF_UNIX is allowed, /tmp is not
involved). The socket takes the database file's permission bits: whoever
may write the database may wake the daemon.

A wake-up is only a hint. Sending never fails loudly and never waits; a
lost one costs latency (the next poll finds the work), never correctness.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

CHANNEL = "ftctl_wake"
# AF_UNIX paths are short (108 bytes with the NUL on Linux)
_MAX_PATH = 107


def socket_path(sqlite_path: Path) -> Path:
    return sqlite_path.with_name(sqlite_path.name + ".wake")


@contextlib.contextmanager
def _short(path: Path) -> Iterator[str]:
    """An address for `path` that fits AF_UNIX: the path itself, or the same
    file reached through an open descriptor of its folder (/proc/self/fd/N/NAME)."""
    if len(os.fsencode(str(path))) <= _MAX_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def send_sqlite(sqlite_path: Path, reason: str) -> bool:
    """One datagram to the daemon's socket; False if nobody listens."""
    path = socket_path(sqlite_path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, _short(path) as address:
            sock.setblocking(False)
            sock.sendto(reason.encode()[:256], address)
        return True
    except OSError:  # no daemon, a stale socket, a full queue: the poll covers it
        return False


def send_postgres(engine: Engine, reason: str) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_notify(:channel, :reason)"), {"channel": CHANNEL, "reason": reason[:256]})
            conn.commit()
        return True
    except Exception:  # noqa: BLE001 - a hint, never an error for the writer
        return False


class Listener:
    """Calls `callback(reason)` for every wake-up, from its own thread."""

    def __init__(self, callback: Callable[[str], None]):
        self.callback = callback
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.address: str | None = None

    def start(self) -> "Listener":
        self._open()
        self._thread = threading.Thread(target=self._run, name="wake-listener", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()

    def _open(self) -> None:  # pragma: no cover - overridden
        pass

    def _close(self) -> None:  # pragma: no cover - overridden
        pass

    def _run(self) -> None:  # pragma: no cover - overridden
        pass


class SqliteListener(Listener):
    """A unix datagram socket beside the database file."""

    def __init__(self, sqlite_path: Path, callback: Callable[[str], None]):
        super().__init__(callback)
        self.path = socket_path(sqlite_path)
        self.sqlite_path = sqlite_path
        self.sock: socket.socket | None = None

    def _open(self) -> None:
        # only the daemon holding the database's lock gets here: a socket left
        # by a killed one is stale
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with _short(self.path) as address:
                sock.bind(address)
            sock.settimeout(0.5)
            with contextlib.suppress(OSError):
                os.chmod(self.path, stat.S_IMODE(os.stat(self.sqlite_path).st_mode) & 0o666 | 0o600)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.address = str(self.path)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(512)
            except (socket.timeout, InterruptedError):
                continue
            except OSError:
                return
            self.callback(data.decode("utf-8", "replace") or "wake")

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class PostgresListener(Listener):
    """LISTEN on its own connection; after a lost connection it listens
    again and reports one wake-up (whatever was sent meanwhile is covered
    by the tick that follows)."""

    def __init__(self, engine: Engine, callback: Callable[[str], None]):
        super().__init__(callback)
        self.engine = engine
        self.conn: Any = None
        self.address = f"LISTEN {CHANNEL}"

    def _connect(self) -> Any:
        fairy = self.engine.raw_connection()
        conn = fairy.driver_connection
        fairy.detach()  # ours alone, never back in the pool
        conn.rollback()
        conn.autocommit = True
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _open(self) -> None:
        try:
            self.conn = self._connect()
        except Exception:  # noqa: BLE001 - the server is away now: the thread listens once it is back
            self.conn = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.conn is None:
                    self.conn = self._connect()
                    self.callback("reconnected")
                for note in self.conn.notifies(timeout=0.5):
                    self.callback(note.payload or "wake")
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - the server went away: listen again soon
                self._drop()
                self._stop.wait(1.0)

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _close(self) -> None:
        self._drop()

