"""The event-driven daemon for real: wake-ups with a 5-minute poll (SQLite
and PostgreSQL), signed webhooks from the emulator process, hooks across
SIGKILLs, and event config refused in one line at start and on reload."""

import json
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (Daemon, FAKE_KEY, KEY_ENV, assert_no_key, ftctl_env, run_ftctl, run_ftctl_many, states,
                            wait_until, write_config, write_remote_config)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_5m_poll_still_reacts_at_once_to_submit_sighup_and_a_signed_webhook(tmp_path):
    from ftctl.providers.signing import new_secret

    secret, port = new_secret(), free_port()
    env = ftctl_env(**{KEY_ENV: FAKE_KEY, "WH_SECRET": secret})
    emu = subprocess.Popen([sys.executable, "-m", "ftctl", "emulator", "--kind", "openai", "--port", "0",
                            "--queue-time", "0.1s", "--validate-time", "0.1s", "--train-time", "0.5s",
                            "--state-file", str(tmp_path / "emu.db"), "--api-key-env", KEY_ENV,
                            "--webhook-url", f"http://127.0.0.1:{port}/webhooks/openai",
                            "--webhook-secret-env", "WH_SECRET"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(), env=env)
    daemon = None
    try:
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", emu.stdout.readline()).group(1)
        cfg = write_remote_config(tmp_path / "site", "openai", url, agents=("qa", "legal"), poll="5m", extra=(
            f'\n[webhooks]\nlisten = "127.0.0.1:{port}"\nsecret_env = "WH_SECRET"\n\n[logs]\ninterval = "0.2s"\n'))
        daemon = Daemon(cfg, env=env)
        assert daemon.wait_for("daemon started"), daemon.stderr[-2000:]

        def creates():
            return httpx.get(url + "/_emulator/state").json()["calls"].get("POST /v1/fine_tuning/jobs", 0)

        import ftctl  # the API the CLI's writes go through (a CLI submit wakes it in the tests below)

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(KEY_ENV, FAKE_KEY)
            with ftctl.open(cfg) as ft:
                assert ft.submit(["qa"])[0].created
        assert wait_until(lambda: creates() == 1, timeout=10)  # woken: no 5-minute wait
        # the provider's success reaches us by its signed webhook, not by a poll
        assert wait_until(lambda: states(cfg) == ["succeeded"], timeout=20), daemon.stderr[-2000:]
        assert daemon.saw("webhook")
        # a job stored without a wake-up waits for the poll; SIGHUP wakes the daemon
        from ftctl.controller.config import load_config
        from ftctl.controller.preflight.submit import plan_submissions, store_submissions
        from ftctl.models import Store

        config = load_config(cfg)
        store = Store(config.database_url)
        store_submissions(store, plan_submissions(config, ["legal"]))
        store.close()
        time.sleep(0.5)
        assert creates() == 1
        daemon.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: creates() == 2, timeout=10)
        def read_to_the_end():  # the training log's last read, after the job finished
            with sqlite3.connect(cfg.parent / "ftctl.db") as c:
                return c.execute("SELECT final FROM log_cursors JOIN jobs ON jobs.provider_job_id = "
                                 "log_cursors.provider_job_id WHERE jobs.id = 1").fetchall() == [(1,)]

        assert wait_until(read_to_the_end, timeout=20)
        log, show, events = run_ftctl_many(["logs", "1", "--json"], ["show", "1"], ["events", "--job", "1", "-o",
                                                                                    "json"], config=cfg, env=env)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    finally:
        if daemon is not None:
            daemon.kill()
        emu.send_signal(signal.SIGTERM)
        emu.wait(timeout=10)
    points = json.loads(log.stdout)["points"]
    assert sorted(p["step"] for p in points if p["kind"] == "metric") == list(range(1, 31))
    assert any(p["kind"] == "checkpoint" and "valid_loss" in p["metrics"] for p in points)
    assert re.search(r"^train_loss +[▁▂▃▄▅▆▇█]+ +\d", show.stdout, re.M), show.stdout
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    # `running` shows only where a tick happened to fall while it trained (a busy machine's ticks are slow)
    moves = [e["event"] for e in lines if e["from"] != e["to"]]
    assert [m for m in moves if m != "running"] == ["prepared", "queued", "succeeded", "promoted"], moves
    assert moves.count("running") <= 1 and ("running" not in moves or moves.index("running") == 2), moves
    assert lines[-1]["event"] == "promoted" and all(e["id"].startswith("evt_") for e in lines)
    assert_no_key(daemon.stderr + log.stdout + show.stdout, key=secret)


@pytest.mark.postgres
def test_a_cli_write_wakes_a_daemon_on_postgresql(tmp_path, postgres_url):
    import sqlalchemy

    db = postgres_url.replace("ftctl_test", "ftctl_wake")
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text("DROP DATABASE IF EXISTS ftctl_wake"))
        c.execute(sqlalchemy.text("CREATE DATABASE ftctl_wake"))
    admin.dispose()
    cfg = write_config(tmp_path / "site", agents=("qa",), train_time="1h", poll="5m", database=db)
    daemon = Daemon(cfg)
    try:
        assert daemon.wait_for("listening for wake-ups"), daemon.stderr[-2000:]
        assert daemon.wait_for("daemon started")
        assert run_ftctl("submit", "qa", config=cfg).returncode == 0
        assert wait_until(lambda: any(l.get("event") == "created at provider" for l in daemon.lines), timeout=15)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    finally:
        daemon.kill()


HOOK = """#!/bin/sh
cd "$(dirname "$0")"
echo "$FTCTL_EVENT_ID" >> attempts.log
if [ "$FTCTL_JOB_ID" = 1 ]; then
    [ -e final ] || { echo "not yet" >&2; exit 7; }    # refused until the last daemon runs
    [ -e hung ] || { touch hung; sleep 30; }           # then its first try hangs
fi
echo "$FTCTL_EVENT_ID $FTCTL_EVENT $FTCTL_JOB_ID" >> delivered.log
"""


def test_sigkill_at_random_during_a_campaign_loses_no_terminal_event_for_a_command_hook(make_config, tmp_path):
    hook = tmp_path / "hook" / "hook.sh"
    hook.parent.mkdir()
    hook.write_text(HOOK)
    hook.chmod(0o755)
    agents = ("content", "legal", "qa", "support", "analyst")
    cfg = make_config(agents=agents, concurrency=2, queue_time="0.1s", validate_time="0.1s", train_time="1.2s",
                      poll="0.1s", fail_rate=0.4, seed=3, max_attempts=1, extra=(
                          f'\n[[hooks]]\non = ["succeeded", "failed", "cancelled"]\ncommand = ["{hook}"]\n'
                          f'timeout = "0.5s"\nbackoff_initial = "0.1s"\nbackoff_max = "0.5s"\n'))
    assert run_ftctl("submit", "--all", config=cfg).returncode == 0
    rng = random.Random(11)
    kills = mid_campaign = 0
    while kills < 5 and not all(s in ("succeeded", "failed") for s in states(cfg)):
        daemon = Daemon(cfg)
        assert daemon.wait_for("daemon started", timeout=30), daemon.stderr[-2000:]
        time.sleep(rng.uniform(0.1, 1.0))
        before = states(cfg)
        daemon.kill()
        kills += 1
        mid_campaign += any(s not in ("succeeded", "failed") for s in before) and daemon.saw("transition")
    assert kills >= 3 and mid_campaign >= 2, (kills, mid_campaign)
    (hook.parent / "final").touch()
    last = Daemon(cfg, "--until-done")
    assert last.wait(timeout=90) == 0, last.stderr[-3000:]
    with sqlite3.connect(cfg.parent / "ftctl.db") as c:
        terminal = {r[0]: (r[1], r[2]) for r in c.execute(
            "SELECT event_id, name, job_id FROM job_events WHERE name IN ('succeeded', 'failed', 'cancelled')")}
    assert len(terminal) == len(agents) and {n for n, _ in terminal.values()} == {"succeeded", "failed"}
    delivered = [line.split()[0] for line in (hook.parent / "delivered.log").read_text().splitlines()]
    assert set(delivered) == set(terminal)  # every terminal event at least once, none lost, nothing else
    first = next(e for e, (_, job) in terminal.items() if job == 1)
    attempts = (hook.parent / "attempts.log").read_text().split()
    assert attempts.count(first) >= 3  # refused (exit 7) and retried, hung and killed, then delivered
    assert (hook.parent / "hung").exists()
    timed_out = [l for l in last.lines if l["event"] == "hook failed" and "timed out after 0.5s; killed" in l["error"]]
    assert timed_out and timed_out[0]["job_id"] == 1 and timed_out[0]["event_id"] == first
    assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).endswith(str(hook))]  # no hook outlived us


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_bad_event_config_refuses_a_start_and_a_reload_keeps_the_old_one(make_config, tmp_path):
    out = tmp_path / "queued.txt"
    good_hook = (f'\n[[hooks]]\non = ["queued"]\ncommand = ["/bin/sh", "-c", "echo $FTCTL_JOB_ID >> {out}"]\n')
    cfg = make_config(agents=("qa",), train_time="1h", poll="5m", extra=good_hook)
    good = cfg.read_text()
    broken_hook = good.replace('on = ["queued"]\ncommand', 'on = ["queued"]\nurl = "https://x.example"\ncommand')
    secretless = good + '\n[webhooks]\nlisten = "127.0.0.1:9"\nsecret_env = "FTCTL_NO_SUCH_SECRET"\n'
    bad_start = tmp_path / "bad-start"
    bad_start.mkdir()
    (bad_start / "hook.toml").write_text(broken_hook)
    (bad_start / "secret.toml").write_text(secretless)
    refused = run_ftctl_many(["--config", str(bad_start / "hook.toml"), "daemon"],
                             ["--config", str(bad_start / "secret.toml"), "daemon"])
    for p, needle in zip(refused, ("hooks[0].command: a hook has either command", "webhooks.secret_env: "
                                   "$FTCTL_NO_SUCH_SECRET is not set")):
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr
    daemon = Daemon(cfg)
    try:
        assert daemon.wait_for("daemon started"), daemon.stderr[-2000:]
        for text, needle in ((broken_hook, "hooks[0].command"), (secretless, "webhooks.secret_env")):
            cfg.write_text(text)
            seen = len([l for l in daemon.lines if l["event"].startswith("reload refused")])
            daemon.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: len([l for l in daemon.lines if l["event"].startswith("reload refused")])
                              > seen, timeout=10)
            assert needle in [l for l in daemon.lines if l["event"].startswith("reload refused")][-1]["error"]
        assert daemon.proc.poll() is None
        assert run_ftctl("submit", "qa", config=cfg).returncode == 0
        assert wait_until(lambda: out.exists() and out.read_text().split() == ["1"], timeout=15)  # the old hook
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    finally:
        daemon.kill()


HOOK_ENV = r"""
import json, os, sys, time
out = sys.argv[1]
with open(os.path.join(out, f"env.{os.getpid()}.json"), "w") as f:
    json.dump(dict(os.environ), f)
if os.path.exists(os.path.join(out, "block")):
    time.sleep(60)  # the event stays owed: the daemon is killed meanwhile
"""


def test_hooks_get_a_clean_environment_even_from_a_daemon_killed_with_events_owed(tmp_path):
    """A daemon SIGKILLed with events owed, restarted: it delivers them
    before its first tick reads the key, and still no hook run sees a key
    variable, a value holding 6 characters of the key, or the keys' folder."""
    from tests.conftest import start_emulator

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "block").touch()
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mistral").write_text(FAKE_KEY)
    with start_emulator("mistral", tmp_path) as srv:
        cfg = write_remote_config(tmp_path / "site", "mistral", srv.url, agents=("qa", "legal"), extra=(
            f'\n[[hooks]]\non = ["*"]\ncommand = [{json.dumps(sys.executable)}, "-c", {json.dumps(HOOK_ENV)}, '
            f'"{runs}"]\nenv = ["HOOK_OK", "COPY_OF_KEY"]\nbackoff_initial = "0.1s"\n'))
        env = ftctl_env(**{KEY_ENV: FAKE_KEY, "COPY_OF_KEY": FAKE_KEY, "PIECE_OF_KEY": f"x{FAKE_KEY[4:12]}y",
                           "CREDENTIALS_DIRECTORY": str(creds), "HOOK_OK": "visible", "LANG": "C.UTF-8"})
        assert run_ftctl("submit", "--all", config=cfg, env=env).returncode == 0
        first = Daemon(cfg, env=env)
        assert wait_until(lambda: list(runs.glob("env.*.json")), timeout=30), first.stderr[-2000:]
        first.kill()  # a hook in flight, every other event owed
        (runs / "block").unlink()
        last = Daemon(cfg, "--until-done", env=env)
        assert last.wait(timeout=60) == 0, last.stderr[-3000:]
    with sqlite3.connect(cfg.parent / "ftctl.db") as c:
        events = {r[0] for r in c.execute("SELECT event_id FROM job_events")}
    seen = [json.loads(p.read_text()) for p in runs.glob("env.*.json")]
    assert {e["FTCTL_EVENT_ID"] for e in seen} == events and len(seen) > len(events) >= 8  # one run twice: killed
    allowed = {"PATH", "HOME", "LANG", "HOOK_OK"}
    for e in seen:
        assert {k for k in e if not k.startswith("FTCTL_")} <= allowed | {"LC_ALL", "LC_CTYPE"}, sorted(e)
        assert e["HOOK_OK"] == "visible" and e["LANG"] == "C.UTF-8" and e["PATH"]
        assert KEY_ENV not in e and "CREDENTIALS_DIRECTORY" not in e and "COPY_OF_KEY" not in e
        assert_no_key("\n".join(e.values()), where=f"hook environment of {e['FTCTL_EVENT_ID']}")


def test_logs_follow_shows_a_short_job_train_while_it_trains(tmp_path):
    """18.5: with the log read every [logs] interval (here 10 minutes), a
    follower of a 6-second job saw nothing. `logs --follow` tells the daemon
    it follows; the daemon reads that job every few seconds."""
    import threading

    from tests.conftest import submit_jobs

    cfg = write_config(tmp_path / "site", agents=("qa",), queue_time="0.2s", validate_time="0.2s", train_time="8s",
                       poll="0.5s", extra='\n[logs]\ninterval = "10m"\n')
    submit_jobs(cfg)
    daemon = Daemon(cfg)
    follow = None
    try:
        assert wait_until(lambda: states(cfg) == ["running"], timeout=30), daemon.stderr[-2000:]
        follow = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(cfg), "logs", "1", "--follow",
                                   "--interval", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=tempfile.gettempdir(), env=ftctl_env())
        lines: list[tuple[str, str]] = []  # (the line, the job's state when it came)

        def read() -> None:
            for line in follow.stdout:
                lines.append((line, states(cfg)[0]))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert follow.wait(timeout=60) == 0, follow.stderr.read()[-2000:]  # it ends by itself once the job is done
        reader.join(timeout=10)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
        daemon.kill()
    steps = [(line, state) for line, state in lines if re.search(r"\bstep \d+", line)]
    assert [s for _, s in steps].count("running") >= 2, lines  # points came while it trained
    assert len({re.search(r"\bstep (\d+)", line).group(1) for line, _ in steps}) == 10, lines  # and every step
    assert re.search(r"^train_loss +[▁▂▃▄▅▆▇█]+", "".join(line for line, _ in lines), re.M)
