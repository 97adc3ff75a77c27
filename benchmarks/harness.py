"""What the event benchmarks share: a throwaway PostgreSQL server, a real
daemon process, percentiles. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("FTCTL_PG_BIN", "/usr/lib/postgresql/15/bin"))
FAKE_KEY = "fake-key-FOR-BENCHMARKS-0123456789"
KEY_ENV = "FTCTL_BENCH_API_KEY"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"{name}: n={len(ms)}  p50 {percentile(ms, 50):.0f} ms  p95 {percentile(ms, 95):.0f} ms  "
            f"max {max(ms):.0f} ms")


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"] + cmd
    raise RuntimeError("PostgreSQL refuses to run as root and there is no other account")


@contextlib.contextmanager
def temp_postgres() -> Iterator[str]:
    """A PostgreSQL 15 server of its own (from $FTCTL_PG_BIN), on a unix socket;
    yields a database URL."""
    if not (PG_BIN / "initdb").exists():
        raise SystemExit(f"PostgreSQL server binaries not found in {PG_BIN} (set FTCTL_PG_BIN)")
    base = Path(tempfile.mkdtemp(prefix="ftctl-bench-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        user = _as_postgres(["x"])[2]
        shutil.chown(base, user)
        shutil.chown(sock, user)
    port = 56432 + os.getpid() % 1000
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "ftctl", "-A", "trust",
                                 "--no-sync"]), check=True, capture_output=True)
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "pg.log"), "-w", "-o",
                                 f"-p {port} -k {sock} -c listen_addresses=''", "start"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres([str(PG_BIN / "createdb"), "-h", str(sock), "-p", str(port), "-U", "ftctl",
                                 "bench"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://ftctl@/bench?host={sock}&port={port}"
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


class DaemonProcess:
    """`ftctl daemon` in a subprocess; its JSON log lines read as they come."""

    def __init__(self, config: Path, env: dict[str, str]):
        self.lines: list[dict] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(config), "daemon"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=tempfile.gettempdir())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(line.get("event") == event for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"the daemon did not say {event!r}: {self.lines[-3:]}")

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}
    out.update({KEY_ENV: FAKE_KEY, "PYTHONUNBUFFERED": "1", **extra})
    return out


def training_file(directory: Path) -> Path:
    path = directory / "data" / "bench.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                     {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                            for i in range(5)))
    return path
