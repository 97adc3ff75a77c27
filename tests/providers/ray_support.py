"""What the Ray tests share: a real Ray head for the session (one xdist
worker runs every test of the "ray" group), a tiny model built once from a
config with a tokenizer trained on the tests' data (nothing is downloaded),
and a controller.toml for a `ray` provider on that head."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ftctl.controller.demo.ray_demo import LEGAL, QA, write_pairs  # noqa: E402,F401 - the demo's own data

# the trainer's environment on the cluster: offline, one thread a job (two jobs share the head's two CPUs)
RUNTIME_ENV = '{ env_vars = { HF_HUB_OFFLINE = "1", TRANSFORMERS_OFFLINE = "1", FTCTL_TRAIN_THREADS = "1", ' \
              'TOKENIZERS_PARALLELISM = "false" } }'


def ray_config(directory: Path, address: str, base: Path, agents: str, *, concurrency: int = 2,
               max_attempts: int = 3) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_pairs(directory / "data" / "qa.jsonl", QA)
    write_pairs(directory / "data" / "legal.jsonl", LEGAL)
    text = textwrap.dedent(f"""\
        [controller]
        database = "sqlite:///ftctl.db"
        poll_interval = "0.3s"

        [retry]
        max_attempts = {max_attempts}
        backoff_initial = "0.3s"
        backoff_max = "1s"
        create_margin = "1s"

        [logs]
        interval = "1s"

        [providers.gpu]
        kind = "ray"
        address = "{address}"
        artifacts = "artifacts"
        gpus_per_job = 0
        cpus_per_job = 1
        cpu_hour_price = 0.36
        concurrency = {concurrency}
        timeout = "3s"
        python = "{sys.executable}"
        runtime_env = {RUNTIME_ENV}
        """).replace("BASE", str(base))
    path = directory / "controller.toml"
    path.write_text(text + textwrap.dedent(agents).replace("BASE", str(base)))
    return path


class Proxy:
    """A TCP forwarder in front of the head: `down()` closes its port (the
    controller's connections are refused, the cluster runs on), `up()` opens
    it again on the same port."""

    def __init__(self, target_port: int):
        self.target = target_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server: socket.socket | None = None
        self.up()

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


@pytest.fixture(scope="session")
def ray_head():
    from ftctl.providers.ray.local import LocalHead

    head = LocalHead(num_cpus=2).start()
    yield head
    head.stop()
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline_has(pid, head.temp)]
    assert not left, f"processes of the stopped Ray head are left: {left}"
    assert not Path(head.temp).exists()


def _cmdline_has(pid: str, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A 2-layer Llama (hidden size 64) and a BPE tokenizer trained on the tests' data."""
    import subprocess

    where = tmp_path_factory.mktemp("tiny")
    files = [write_pairs(where / "qa.jsonl", QA), write_pairs(where / "legal.jsonl", LEGAL)]
    subprocess.run([sys.executable, "-m", "ftctl.providers.trainer", "tiny", str(where / "base"), *map(str, files)],
                   check=True, capture_output=True, timeout=300)
    return where / "base"


def ray_jobs(address: str) -> list:
    """Every job the cluster knows, through the official client."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address).list_jobs()
