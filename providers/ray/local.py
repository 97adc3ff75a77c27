"""A Ray head on this machine, for `ftctl demo --provider ray` and the
tests: `ray start --head --block` on free ports, in its own session, ready
when it says "Ray runtime started." and its Jobs API answers; stopped with
SIGTERM to its process group, then SIGKILL to what is left of it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

READY = "Ray runtime started."
# every port a head opens by default, each given a free one so heads side by side never collide
PORTS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
         "ray-client-server-port", "node-manager-port", "object-manager-port", "metrics-export-port",
         "runtime-env-agent-port")


class HeadError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_binary() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.exists() else (shutil.which("ray") or "ray")


class LocalHead:
    def __init__(self, num_cpus: int = 2, num_gpus: int = 0):
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.proc: subprocess.Popen | None = None
        self.temp = ""
        self.ports: dict[str, int] = {}
        self.output: list[str] = []

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def start(self, timeout: float = 180.0) -> "LocalHead":
        # a short path: Ray's socket names must fit in 107 bytes
        self.temp = tempfile.mkdtemp(prefix="ftray", dir="/tmp")
        low = free_port()
        workers = range(low, low + 201)
        self.ports = {}
        for name in PORTS:  # Ray refuses a component port inside the workers' range
            port = free_port()
            while port in workers or port in self.ports.values():
                port = free_port()
            self.ports[name] = port
        cmd = [ray_binary(), "start", "--head", "--block", "--disable-usage-stats", f"--num-cpus={self.num_cpus}",
               f"--num-gpus={self.num_gpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp}",
               f"--min-worker-port={low}", f"--max-worker-port={low + 200}",
               *(f"--{name}={port}" for name, port in self.ports.items())]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True, cwd=self.temp)
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if READY in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        end = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise HeadError("ray start --head failed: " + "".join(self.output[-5:]).strip()[-400:])
        while not self._answers():  # the Jobs API comes up a moment after the runtime
            if time.monotonic() > end:
                self.stop()
                raise HeadError(f"the Ray dashboard at {self.address} never answered")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.address + "/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                # a head of our own, with nothing to keep: Ray's graceful stop takes half a minute
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        # workers Ray started outside the head's group: the same session's
        self._kill_leftovers()
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        if not self.temp:
            return
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if self.temp.encode() in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass

    def __enter__(self) -> "LocalHead":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
