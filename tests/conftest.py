from __future__ import annotations

import tempfile
import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AGENTS = ("content", "legal", "qa", "support", "analyst")


class VirtualClock:
    """A clock the reconcile step and the simulated service share."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2026, 1, 5, 9, 0, 0)

    def __call__(self) -> datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.replace(tzinfo=timezone.utc).timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def write_training_file(path: Path, examples: int = 5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(examples):
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"question {i} for {path.stem}"},
                {"role": "assistant", "content": f"answer {i}"},
            ]}) + "\n")
    return path


def _site(directory: Path, agents, *, database: str, poll: str, max_attempts: int, backoff_initial: str,
          backoff_max: str, provider_block: str, provider: str, model: str, hyperparameters: str,
          extra: str = "", create_margin: str = "1s") -> Path:
    """A controller.toml and a training file per agent, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(f"""\
        [controller]
        database = "{database}"
        poll_interval = "{poll}"

        [retry]
        max_attempts = {max_attempts}
        backoff_initial = "{backoff_initial}"
        backoff_max = "{backoff_max}"
        create_margin = "{create_margin}"

        """) + textwrap.dedent(provider_block)
    for a in agents:
        write_training_file(directory / "data" / f"{a}.jsonl")
        text += (f'\n[agents.{a}]\nprovider = "{provider}"\nmodel = "{model}"\ntraining_file = "data/{a}.jsonl"\n'
                 f"hyperparameters = {hyperparameters}\n")
    path = directory / "controller.toml"
    path.write_text(text + extra)
    return path


def write_config(directory: Path, *, agents=AGENTS, concurrency: int = 2, max_concurrent: int | None = None,
                 queue_time: str = "1s", validate_time: str = "1s", train_time: str = "5s",
                 fail_rate: float = 0.0, error_rate: float = 0.0, seed: int = 0, max_attempts: int = 5,
                 backoff_initial: str = "10s", backoff_max: str = "60s", poll: str = "1s",
                 database: str = "sqlite:///ftctl.db", extra: str = "") -> Path:
    block = f"""\
        [providers.sim]
        kind = "simulated"
        concurrency = {concurrency}
        {f"max_concurrent = {max_concurrent}" if max_concurrent else ""}
        queue_time = "{queue_time}"
        validate_time = "{validate_time}"
        train_time = "{train_time}"
        fail_rate = {fail_rate}
        error_rate = {error_rate}
        seed = {seed}
        """
    return _site(directory, agents, database=database, poll=poll, max_attempts=max_attempts,
                 backoff_initial=backoff_initial, backoff_max=backoff_max, provider_block=block, provider="sim",
                 model="open-mistral-7b", hyperparameters="{ training_steps = 10, learning_rate = 0.0001 }",
                 extra=extra)


@pytest.fixture
def make_config(tmp_path):
    def _make(**kw) -> Path:
        return write_config(tmp_path / "site", **kw)
    return _make


def ftctl_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def states(where: Path) -> list[str]:
    """Every job's state, by id, read straight from the SQLite file (`where`:
    the ftctl.db, or the controller.toml beside it)."""
    import sqlite3

    db = where.parent / "ftctl.db" if where.suffix == ".toml" else where
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("SELECT state FROM jobs ORDER BY id")]


def wait_until(pred, timeout: float = 30.0, step: float = 0.05):
    """The first true value `pred` gives within `timeout` seconds, else its
    value at the end."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


def leader_of(daemons: list) -> Daemon | None:
    """The live daemon whose last word on leadership is that it leads."""
    for d in daemons:
        if d.proc.poll() is not None:
            continue
        said = [line["event"] for line in d.lines
                if line["event"] in ("leading", "standing by") or line["event"].startswith("leadership lost")]
        if said and said[-1] == "leading":
            return d
    return None


def submit_jobs(config: Path, *agents: str, force: bool = False) -> list:
    """Setup: `ftctl submit` (every agent, or these) through the Python API in
    this process, where a test is about what happens after a submit. What
    the submit command itself prints and exits with is tested through the
    CLI (tests/cli)."""
    import ftctl

    with ftctl.open(config) as ft:
        return ft.submit(list(agents), all_agents=not agents, force=force)


# commands whose process's own life matters (signals, a long run, what it
# leaves behind when it ends): always a process of their own
_OWN_PROCESS = {"daemon", "demo", "emulator"}
# what changes how an interpreter starts: a run with these set gets its own process
_STARTUP_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONNOUSERSITE")


def run_ftctl(*args: str, config: Path | None = None, cwd: Path | None = None, timeout: float = 60,
              env: dict | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """One command of the real CLI through its console script's entry point
    (`ftctl.controller.cli.main`: its one-line errors and exit codes), with
    its own stdout, stderr, environment and working directory. In this
    process by default (no interpreter start-up); in a fresh one for the
    daemon, the demo, the emulator, an environment that changes how Python
    starts, or `process=True`."""
    cmd = ["--config", str(config)] if config is not None else []
    cmd += list(args)
    env = env or ftctl_env()
    if process or _OWN_PROCESS & set(args) or any(env.get(k) != os.environ.get(k) for k in _STARTUP_ENV):
        return subprocess.run([sys.executable, "-m", "ftctl", *cmd], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or tempfile.gettempdir(), env=env)
    return _in_process(cmd, env, cwd or Path(tempfile.gettempdir()), timeout)


def _in_process(args: list[str], env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import logging

    import structlog

    from ftctl.controller.cli import main

    import signal
    import threading

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_log = structlog.get_config()
    root_handlers, root_level = list(logging.root.handlers), logging.root.level
    out, err = io.StringIO(), io.StringIO()
    code = 0

    class TooLong(BaseException):  # not an Exception: the CLI's own one-line error handler lets it by
        pass

    def too_long(*_):
        raise TooLong

    # `timeout` holds as it would for a process: a timer thread signals this
    # one (SIGUSR2: SIGALRM is pytest-timeout's)
    previous = signal.signal(signal.SIGUSR2, too_long)
    timer = threading.Timer(timeout, signal.pthread_kill, (threading.get_ident(), signal.SIGUSR2))
    timer.daemon = True
    timer.start()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.argv = ["ftctl", *args]
        structlog.reset_defaults()  # logging as a fresh process has it, writing to this command's streams
        logging.root.handlers.clear()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except TooLong:
        raise subprocess.TimeoutExpired(["ftctl", *args], timeout, out.getvalue(), err.getvalue()) from None
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        structlog.configure(**saved_log)  # the test's own logging, as it was
        logging.root.handlers[:] = root_handlers
        logging.root.setLevel(root_level)
    return subprocess.CompletedProcess(["ftctl", *args], code, out.getvalue(), err.getvalue())


# -- a real PostgreSQL server, started from the Debian binaries as a non-root user ----------

PG_BIN = Path(os.environ.get("FTCTL_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _pg_user() -> str:
    """PostgreSQL refuses to run as root: use the postgres account (or nobody)."""
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("no non-root account to run PostgreSQL as")


def _as_postgres_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", _pg_user(), "--"] + cmd


class PostgresServer:
    """A PostgreSQL server of this test session's own (one per xdist worker)."""

    def __init__(self, base: Path, port: int):
        self.base, self.port = base, port
        self.data, self.sock, self.log = base / "data", base / "sock", base / "pg.log"
        self.url = f"postgresql+psycopg://ftctl@/ftctl_test?host={self.sock}&port={port}"

    def ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
                       check=True, capture_output=True)

    def start(self) -> None:
        self.ctl("-l", str(self.log), "-w", "-o",
                 f"-p {self.port} -k {self.sock} -c listen_addresses='' -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "-w", "stop")

    @classmethod
    def create(cls) -> "PostgresServer":
        """initdb in a temporary folder, start, and make the ftctl_test database."""
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="ftctl-pg-"))
        (base / "sock").mkdir()
        if os.geteuid() == 0:
            shutil.chown(base, _pg_user())
            shutil.chown(base / "sock", _pg_user())
        server = cls(base, 55432 + os.getpid() % 1000)
        subprocess.run(_as_postgres_user([str(PG_BIN / "initdb"), "-D", str(server.data), "-U", "ftctl", "-A",
                                          "trust", "--no-sync"]), check=True, capture_output=True)
        server.start()
        subprocess.run(_as_postgres_user([str(PG_BIN / "createdb"), "-h", str(server.sock), "-p", str(server.port),
                                          "-U", "ftctl", "ftctl_test"]), check=True, capture_output=True)
        return server

    def destroy(self) -> None:
        subprocess.run(_as_postgres_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def database(self, name: str) -> str:
        """A fresh, empty database on this server; its URL."""
        import sqlalchemy

        admin = sqlalchemy.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        admin.dispose()
        return self.url.replace("/ftctl_test?", f"/{name}?")


@pytest.fixture(scope="session")
def postgres_server():
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN}")
    server = PostgresServer.create()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgres_url(postgres_server):
    return postgres_server.url


# -- provider emulators (real HTTP on 127.0.0.1) -----------------------------------------------

# an obviously fake key: tests look for it everywhere it must not be
FAKE_KEY = "fake-key-FOR-TESTS-0123456789"
KEY_ENV = "FTCTL_TEST_API_KEY"


def start_emulator(kind, directory, *, limit=2, queue_time=0.1, validate_time=0.2, train_time=0.4, api_key=FAKE_KEY,
                   **kw):
    from ftctl.providers.emulator import make_emulator
    from ftctl.providers.simulated.engine import EngineSettings

    settings = EngineSettings(limit=limit, queue_time=queue_time, validate_time=validate_time,
                              train_time=train_time, **kw)
    return make_emulator(kind, directory / f"{kind}-emulator.db", settings, api_key=api_key).serve()


def write_remote_config(directory: Path, kind: str, url: str, *, agents=AGENTS, concurrency: int = 2,
                        timeout: str = "2s", max_attempts: int = 5, backoff_initial: str = "0.2s",
                        backoff_max: str = "1s", hyperparameters: str | None = None, poll: str = "0.2s",
                        create_margin: str = "1s", extra: str = "", database: str = "sqlite:///ftctl.db") -> Path:
    base = url + ("/v1" if kind == "openai" else "")
    hp = hyperparameters or {"mistral": "{ training_steps = 10, learning_rate = 0.0001 }",
                             "openai": "{ epochs = 3 }", "together": "{ epochs = 2 }"}[kind]
    model = {"mistral": "open-mistral-7b", "openai": "gpt-4o-mini-2024-07-18",
             "together": "mistralai/Mistral-7B-Instruct-v0.2"}[kind]
    block = f"""\
        [providers.{kind}]
        kind = "{kind}"
        concurrency = {concurrency}
        base_url = "{base}"
        api_key_env = "{KEY_ENV}"
        timeout = "{timeout}"
        """
    return _site(directory, agents, database=database, poll=poll, max_attempts=max_attempts,
                 backoff_initial=backoff_initial, backoff_max=backoff_max, provider_block=block, provider=kind,
                 model=model, hyperparameters=hp, create_margin=create_margin, extra=extra)


def reason_of(job, live=None) -> str | None:
    """A stored job's reason, rendered to its one line."""
    from ftctl.controller.ledger.reasons import render

    return render(job.reason_code, job.reason_args, live)


def key_pieces(key: str = FAKE_KEY, size: int = 6) -> set[str]:
    """The key, its escaped forms (JSON, URL, repr), and every piece of them
    `size` characters long (what a provider's partial echo can keep)."""
    import urllib.parse

    forms = {key, json.dumps(key)[1:-1], urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key),
             repr(key)[1:-1]}
    return forms | {f[i:i + size] for f in forms for i in range(len(f) - size + 1)}


def assert_no_key(blob, key: str = FAKE_KEY, where: str = "") -> None:
    """No trace of the key in `blob` (text or bytes): not whole, not escaped,
    not any 6-character piece of it."""
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else str(blob)
    found = sorted(p for p in key_pieces(key) if p in text)
    assert not found, f"key pieces {found[:3]} found in {where or 'output'}"


class Daemon:
    """`ftctl daemon` as a real subprocess whose stderr (JSON log lines) is
    read as it comes, so a test can act relative to what it says."""

    def __init__(self, config, *args, env=None):
        import queue
        import threading

        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self.proc = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(config), "daemon", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     cwd=tempfile.gettempdir(), env=env or ftctl_env())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.raw.append(line)
            if line.startswith("{"):
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass

    def saw(self, event: str) -> bool:
        return any(line.get("event") == event for line in self.lines)

    def wait_for(self, event: str, timeout: float = 30.0) -> bool:
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.saw(event):
                return True
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                return self.saw(event)
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.raw)


_MANY = r"""
import contextlib, io, json, logging, sys
import structlog

from ftctl.controller.cli import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.argv = ["ftctl", *args]
    structlog.reset_defaults()  # logging as a fresh process has it, writing to this command's streams
    logging.root.handlers.clear()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()  # the console script's own entry: its one-line errors and exit codes
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    results.append([code, out.getvalue(), err.getvalue()])
sys.__stdout__.write(json.dumps(results))
"""


def run_ftctl_many(*arglists, config: Path | None = None, env: dict | None = None,
                   timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Several commands of the real CLI, one after the other in one fresh
    process (one start-up instead of one each), each through the console
    script's entry point with its own stdout, stderr and exit code. For what
    a process's own life does not matter to: a daemon, a kill or a working
    directory still need run_ftctl or a subprocess of their own. An argument
    list that starts with --config overrides `config`."""
    prefix = ["--config", str(config)] if config is not None else []
    lists = [list(a) if a[:1] == ["--config"] else prefix + list(a) for a in map(list, arglists)]
    p = subprocess.run([sys.executable, "-c", _MANY, json.dumps(lists)],
                       capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir(),
                       env=env or ftctl_env())
    assert p.returncode == 0, p.stderr[-2000:]
    return [subprocess.CompletedProcess(["ftctl", *a], code, out, err)
            for a, (code, out, err) in zip(arglists, json.loads(p.stdout))]


# -- the order the workers take the tests in ------------------------------------------------
# The real-daemon runs (marked slow) mostly wait on real clocks for seconds
# to tens of seconds; the rest mostly use the CPU for a second or less.
# Handed out mixed, longest first (one slow run, then its share of the
# others), the two cores stay busy while the daemons wait, and no worker is
# left finishing a long campaign alone at the end.
LONGEST_FIRST = ("test_campaign_with_daemon_kills_one_ray_job", "test_three_daemons_survive_kills", "test_late_landing_creates", "test_a_database_away",
                 "test_shipped_config_campaign", "test_sigkill_at_random_moments")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        for i, name in enumerate(LONGEST_FIRST):
            if item.name.startswith(name):
                return i
        return len(LONGEST_FIRST)

    slow = sorted((i for i in items if i.get_closest_marker("slow")), key=rank)
    rest = [i for i in items if not i.get_closest_marker("slow")]
    share = max(1, len(rest) // max(1, len(slow)))
    mixed = []
    for n, item in enumerate(slow):
        mixed.append(item)
        mixed.extend(rest[n * share:(n + 1) * share])
    mixed.extend(rest[len(slow) * share:])
    assert len(mixed) == len(items)
    items[:] = mixed
