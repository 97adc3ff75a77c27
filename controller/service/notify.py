"""systemd's notify protocol: one datagram to $NOTIFY_SOCKET per message.

READY=1 once the store and providers are set up, STATUS=<one line> after
each tick, WATCHDOG=1 while the loop is healthy, STOPPING=1 on shutdown,
RELOADING=1 around a SIGHUP reload. Without $NOTIFY_SOCKET every call is a
no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from ftctl.providers.keys import redact


class Notifier:
    def __init__(self, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        address = env.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self.address = address
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_seconds: float | None = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if not self.address:
            return False
        # a status line can quote an error: never a key in the journal
        message = redact("\n".join(fields)).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    # a full queue at the receiver must not stall the loop for long
                    self._sock.settimeout(1.0)
                self._sock.sendto(message, self.address)
                return True
            except OSError:
                return False  # systemd gone, socket closed or backed up: never fatal

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)}")

    def reloaded(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Watchdog:
    """Pings WATCHDOG=1 at half the interval systemd asked for, but only while
    `healthy()` says the loop is alive; a hung loop stops the pings and
    systemd restarts the service."""

    def __init__(self, notifier: Notifier, healthy: Callable[[], bool]):
        self.notifier = notifier
        self.healthy = healthy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.notifier.watchdog_seconds is None or not self.notifier.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = max(0.05, self.notifier.watchdog_seconds / 2)
        while not self._stop.wait(interval):
            if self.healthy():
                self.notifier.send("WATCHDOG=1")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
