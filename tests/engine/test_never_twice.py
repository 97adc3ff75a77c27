"""Never twice, at the edges: late-landing creates, kills aimed at the create,
a lock that is lost, concurrent submits, leaked quote jobs, Retry-After."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter

import pytest

from tests.conftest import (AGENTS, Daemon, FAKE_KEY, KEY_ENV, ftctl_env, run_ftctl, run_ftctl_many, start_emulator,
                            states, submit_jobs, wait_until, write_config, write_remote_config)

pytestmark = pytest.mark.slow


def one_job_per_token(emulator, db):
    """Every provider job carries a token of ours, and no token made two."""
    jobs = emulator.engine.all_jobs()
    per_token = Counter(j["suffix"] for j in jobs)
    with sqlite3.connect(db) as c:
        ours = {r[0] for r in c.execute("SELECT client_token FROM attempts")}
    return per_token, ours


def test_late_landing_creates_and_kills_aimed_at_the_create_never_bill_twice(tmp_path):
    """A fifth of creates are processed 3-5 s late while the client gives up
    after 1 s, and the daemon is SIGKILLed right after create calls go out:
    the provider still holds exactly one job per submission."""
    agents = tuple(f"agent{i}" for i in range(8))
    env = ftctl_env(**{KEY_ENV: FAKE_KEY})
    with start_emulator("mistral", tmp_path, limit=8, queue_time=0.2, validate_time=0.2, train_time=1.0) as srv:
        srv.emulator.faults.rng.seed(7)
        srv.emulator.faults.add(method="POST", path="/v1/fine_tuning/jobs", delay=[3, 5], chance=0.2)
        cfg = write_remote_config(tmp_path / "site", "mistral", srv.url, agents=agents, concurrency=8,
                                  timeout="1s", create_margin="5s", poll="0.2s")
        submit_jobs(cfg)
        db = cfg.parent / "ftctl.db"
        rng = random.Random(11)
        landed = 0
        for _ in range(12):
            # six kills aimed at creates of a campaign in progress make the point; the final daemon ends it
            if all(s == "succeeded" for s in states(db)) or landed >= 6:
                break
            daemon = Daemon(cfg, env=env)
            assert daemon.wait_for("daemon started", timeout=30), daemon.stderr[-2000:]
            creates = srv.emulator.calls["POST /v1/fine_tuning/jobs"]
            # aim at the create: kill right after the next one goes out
            wait_until(lambda: srv.emulator.calls["POST /v1/fine_tuning/jobs"] > creates
                       or daemon.proc.poll() is not None, timeout=6)
            time.sleep(rng.uniform(0.0, 1.5))
            unfinished = [s for s in states(db) if s != "succeeded"]
            daemon.kill()
            landed += bool(unfinished)
        assert landed >= 4, landed  # the kills hit a campaign in progress
        final = Daemon(cfg, "--until-done", env=env)
        assert final.wait(timeout=120) == 0, final.stderr[-3000:]
        assert states(db) == ["succeeded"] * len(agents)
        late = sum(rule.hits for rule in srv.emulator.faults._rules)
        assert late >= 1  # some creates really landed late
        per_token, ours = one_job_per_token(srv.emulator, db)
        assert set(per_token.values()) == {1}, per_token.most_common(3)
        assert set(per_token) <= ours
        assert sum(1 for j in srv.emulator.engine.all_jobs() if j["status"] == "SUCCESS") == len(agents)


@pytest.mark.parametrize("standby", [False, True], ids=["no-standby exits 6", "stands by"])
def test_a_removed_lock_file_stops_the_daemon_that_held_it(make_config, standby):
    cfg = make_config(agents=("qa", "legal", "support"), concurrency=1, queue_time="0.3s", validate_time="0.3s",
                      train_time="1s", poll="0.2s")
    submit_jobs(cfg)
    first = Daemon(cfg, *([] if standby else ["--no-standby"]))
    second = None
    try:
        assert first.wait_for("daemon started")
        db = cfg.parent / "ftctl.db"
        assert wait_until(lambda: "running" in states(db) or "queued" in states(db))
        (cfg.parent / "ftctl.db.lock").unlink()
        second = Daemon(cfg)
        assert second.wait_for("leading")
        if standby:  # it found out before its next move, and stands by behind the new leader
            assert first.wait_for("standing by", timeout=15), first.stderr[-2000:]
            assert first.proc.poll() is None
        else:  # it found out before its next move and stopped
            assert first.wait(timeout=15) == 6
        lost = [l for l in first.lines if l["event"].startswith("leadership lost")]
        assert len(lost) == 1 and ("removed" in lost[0]["error"] or "replaced" in lost[0]["error"])
        assert second.proc.poll() is None
        assert wait_until(lambda: states(db) == ["succeeded"] * 3, timeout=60)
        moves = [l for l in first.lines if l["event"] in ("transition", "created at provider")]
        after = first.lines.index(lost[0])
        assert all(first.lines.index(m) < after for m in moves)  # nothing after it lost the lead
    finally:
        first.kill()
        if second is not None:
            second.proc.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    with sqlite3.connect(cfg.parent / "sim-sim.db") as sim:
        per_suffix = Counter(r[0] for r in sim.execute("SELECT suffix FROM jobs"))
    assert set(per_suffix.values()) == {1}


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_three_concurrent_submits_store_each_job_once(tmp_path, request, database):
    url = "sqlite:///ftctl.db"
    if database == "postgres":
        import sqlalchemy

        base = request.getfixturevalue("postgres_url")
        url = base.replace("ftctl_test", "ftctl_submit")
        admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sqlalchemy.text("DROP DATABASE IF EXISTS ftctl_submit"))
            c.execute(sqlalchemy.text("CREATE DATABASE ftctl_submit"))
        admin.dispose()
    cfg = write_config(tmp_path / "site", database=url)
    # the schema first, so the three race on the jobs and not on the migration
    assert run_ftctl("status", config=cfg).returncode == 0 or database == "sqlite"
    procs = [subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(cfg), "submit", "--all", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
                              env=ftctl_env()) for _ in range(3)]
    outs = [p.communicate(timeout=90) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    created = [r for out, _ in outs for r in json.loads(out) if r["created"]]
    assert sorted(r["agent"] for r in created) == sorted(AGENTS)
    jobs, forced = run_ftctl_many(["status", "--json"], ["submit", "qa", "--force", "--json"], config=cfg)
    jobs = json.loads(jobs.stdout)
    assert sorted(j["agent"] for j in jobs) == sorted(AGENTS)
    assert json.loads(forced.stdout)[0]["created"] is True


def test_retry_refuses_to_revive_a_twin_of_a_live_job(make_config):
    cfg = make_config(agents=("qa",))
    _, _, again, p = run_ftctl_many(["submit", "qa"], ["cancel", "1"], ["submit", "qa", "--json"], ["retry", "1"],
                                    config=cfg)
    assert json.loads(again.stdout)[0]["created"] is True
    assert p.returncode == 3 and len(p.stderr.splitlines()) == 1
    assert "job 2 has the same data and settings and is prepared" in p.stderr


def test_a_quote_job_whose_cancel_failed_is_never_a_slot_and_is_cancelled_later(tmp_path):
    env = ftctl_env(**{KEY_ENV: FAKE_KEY})
    with start_emulator("mistral", tmp_path, limit=2, train_time=30) as srv:
        cfg = write_remote_config(tmp_path / "site", "mistral", srv.url, agents=("qa", "legal"), concurrency=2)
        data = cfg.parent / "data" / "qa.jsonl"
        srv.emulator.faults.add(method="POST", path="/v1/fine_tuning/jobs/", status=500, times=1)
        est, doctor = run_ftctl_many(["estimate", str(data), "--provider", "mistral", "--model", "open-mistral-7b",
                                      "--training-steps", "10"], ["doctor"], config=cfg, env=env)
        assert est.returncode == 0, est.stderr
        assert "provider's quote" in est.stdout
        (quote,) = srv.emulator.engine.all_jobs()
        assert quote["status"] not in ("CANCELLED",)  # its cancel failed: it is still there
        assert "quote jobs" in doctor.stdout and quote["id"] in doctor.stdout
        # uploaded once per content hash: a second estimate uploads nothing new
        uploads = srv.emulator.calls["POST /v1/files"]
        run_ftctl_many(["estimate", str(data), "--provider", "mistral", "--model", "open-mistral-7b"], config=cfg,
                       env=env)
        assert srv.emulator.calls["POST /v1/files"] == uploads
        submitted, tick, status, doctor = run_ftctl_many(["submit", "--all"], ["tick"], ["status", "--json"],
                                                         ["doctor", "--json"], config=cfg, env=env)
        assert submitted.returncode == 0
        assert tick.returncode == 0, tick.stderr
        jobs = json.loads(status.stdout)
        assert [j["state"] for j in jobs] == ["queued", "queued"]  # both slots: the quote is not one
        assert next(j for j in srv.emulator.engine.all_jobs() if j["id"] == quote["id"])["status"] == "CANCELLED"
        checks = {c["check"]: c for c in json.loads(doctor.stdout)}
        assert checks["quote jobs"]["level"] == "ok"


def test_retry_after_on_a_create_counts_from_the_answers_arrival(tmp_path):
    env = ftctl_env(**{KEY_ENV: FAKE_KEY})
    with start_emulator("mistral", tmp_path) as srv:
        cfg = write_remote_config(tmp_path / "site", "mistral", srv.url, agents=("qa",), poll="0.1s")
        # the 429 comes back 1.5 s after the request: a wait counted from the
        # tick's start would be 1.5 s short
        srv.emulator.faults.add(method="POST", path="/v1/fine_tuning/jobs", status=429, retry_after=2,
                                delay=1.5, times=1)
        submit_jobs(cfg)
        daemon = Daemon(cfg, "--until-done", env=env)
        assert daemon.wait(timeout=60) == 0, daemon.stderr[-2000:]
        creates = [(at, status) for at, name, status in srv.emulator.requests if name == "POST /v1/fine_tuning/jobs"]
        assert [s for _, s in creates] == [429, 200]
        answered = creates[0][0] + 1.5
        assert creates[1][0] - answered >= 2.0 - 0.05, creates


def test_the_watchdog_stops_when_every_tick_fails(make_config, tmp_path):
    from tests.service.test_service import NotifySocket

    sock_dir = tempfile.mkdtemp(prefix="ftw-")
    notify = NotifySocket(os.path.join(sock_dir, "notify"))
    cfg = make_config(agents=("qa",), train_time="1h", poll="0.2s",
                      extra="")
    cfg.write_text(cfg.read_text().replace('poll_interval = "0.2s"', 'poll_interval = "0.2s"\nfailed_ticks_limit = 3'))
    submit_jobs(cfg)
    daemon = Daemon(cfg, env=ftctl_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="600000"))
    try:
        assert daemon.wait_for("daemon started")
        assert wait_until(lambda: notify.times("WATCHDOG=1"), timeout=10)
        with sqlite3.connect(cfg.parent / "ftctl.db") as c:
            c.execute("DROP TABLE provider_state")  # from now on every tick raises
        broken = time.monotonic()
        assert wait_until(lambda: any(f.startswith("STATUS=unhealthy: 3 ticks failed in a row")
                                      for _, fields in notify.drain() for f in fields), timeout=10)
        time.sleep(1.0)
        late = [t for t in notify.times("WATCHDOG=1") if t > broken + 1.5]
        assert late == []  # no pings: systemd would restart it
        assert daemon.proc.poll() is None
    finally:
        daemon.kill()
        notify.close()
