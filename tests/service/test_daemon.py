"""The daemon as systemd runs it: a real process, real signals, SIGKILL."""

import tempfile
import json
import re
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.conftest import REPO, assert_no_key, ftctl_env, run_ftctl, states, submit_jobs, wait_until

pytestmark = pytest.mark.slow


def start_daemon(config, *args):
    return subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(config), "daemon", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
                            env=ftctl_env())


@pytest.fixture
def shipped(tmp_path):
    """The shipped controller.toml with its demo data, in a scratch folder,
    its simulated service's times and its poll shortened: what is tested is
    the file's shape, not how long its jobs take."""
    text = (REPO / "controller.toml").read_text()
    for key, short in (("poll_interval", "0.2s"), ("queue_time", "0.2s"), ("validate_time", "0.2s"),
                       ("train_time", "1s")):
        text, n = re.subn(rf'^{key} = "[^"]+"', f'{key} = "{short}"', text, flags=re.M)
        assert n == 1, key
    (tmp_path / "controller.toml").write_text(text)
    shutil.copytree(REPO / "controller" / "demo" / "data", tmp_path / "controller" / "demo" / "data")
    return tmp_path / "controller.toml"


def test_shipped_config_campaign_then_sigterm(shipped):
    submit_jobs(shipped)
    daemon = start_daemon(shipped)
    try:
        db = shipped.parent / "ftctl.db"
        assert wait_until(lambda: f"pid {daemon.pid} since " in run_ftctl("status", config=shipped).stderr,
                          timeout=30)
        done = wait_until(lambda: states(db) == ["succeeded"] * 5, timeout=90)
        status = json.loads(run_ftctl("status", "--json", config=shipped).stdout)
        assert done, status
        assert all(j["fine_tuned_model"].startswith("ft:open-mistral-7b:") for j in status)
        models = {r["agent"]: r["model"] for r in json.loads(run_ftctl("models", "--format", "json",
                                                                        config=shipped).stdout)}
        assert sorted(models) == ["analyst", "content", "legal", "qa", "support"]
        assert models["qa"] == next(j["fine_tuned_model"] for j in status if j["agent"] == "qa")
        # a second daemon on the same database is refused with --no-standby ...
        second = subprocess.run([sys.executable, "-m", "ftctl", "--config", str(shipped), "daemon", "--no-standby"],
                                capture_output=True, text=True, timeout=30, cwd=tempfile.gettempdir(), env=ftctl_env())
        assert second.returncode == 3
        assert "another ftctl daemon is driving" in second.stderr and len(second.stderr.splitlines()) == 1
        # ... and stands by without it
        from tests.conftest import Daemon

        standby = Daemon(shipped)
        assert standby.wait_for("standing by", timeout=30), standby.stderr[-2000:]
        assert not standby.saw("leading")
        standby.proc.send_signal(signal.SIGTERM)
        assert standby.wait(timeout=15) == 0
        tick = run_ftctl("tick", config=shipped)
        assert tick.returncode == 3 and "another ftctl daemon" in tick.stderr
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if daemon.poll() is None:
            daemon.kill()
    err = daemon.stderr.read()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    moves = [line for line in lines if line["event"] == "transition"]
    assert {m["state"] for m in moves} >= {"queued", "running", "succeeded"}
    assert all({"job_id", "agent", "provider", "state"} <= set(m) for m in moves)
    assert lines[-1]["event"] == "daemon stopped"


def test_sigint_mid_campaign_exits_zero_and_a_restart_finishes(make_config):
    cfg = make_config(queue_time="0.3s", validate_time="0.3s", train_time="1s", poll="0.2s")
    submit_jobs(cfg)
    daemon = start_daemon(cfg)
    db = cfg.parent / "ftctl.db"
    assert wait_until(lambda: "running" in states(db), timeout=30)
    daemon.send_signal(signal.SIGINT)
    assert daemon.wait(timeout=10) == 0
    assert "running" in states(db)  # nothing was lost or cancelled by stopping
    again = start_daemon(cfg, "--until-done")
    assert again.wait(timeout=90) == 0, again.stderr.read()
    assert states(db) == ["succeeded"] * 5


def test_sigkill_at_random_moments_never_creates_a_job_twice(make_config):
    from tests.conftest import Daemon

    agents = ("content", "legal", "qa", "support", "analyst", "triage", "sales")
    cfg = make_config(agents=agents, concurrency=4, max_concurrent=2, queue_time="0.2s", validate_time="0.3s",
                      train_time="3s", poll="0.1s", fail_rate=0.2, seed=9, backoff_initial="0.2s",
                      backoff_max="1s", max_attempts=10)
    submit_jobs(cfg)
    db = cfg.parent / "ftctl.db"
    rng = random.Random(2026)
    kills = mid_campaign = 0
    for _ in range(40):
        # six kills proven mid-campaign make the point; the rest of the campaign runs to its end below
        if all(s == "succeeded" for s in states(db)) or mid_campaign >= 6:
            break
        daemon = Daemon(cfg)
        # kill relative to the moment the daemon is up and acting, not to its spawn
        assert daemon.wait_for("daemon started", timeout=30), daemon.stderr[-2000:]
        time.sleep(rng.uniform(0.0, 1.2))
        before = states(db)
        daemon.kill()
        kills += 1
        mid_campaign += any(s != "succeeded" for s in before) and daemon.saw("transition")
    # the kills landed while jobs moved (the simulated service runs on the wall clock: on a busy machine a
    # daemon's start-up eats into the campaign, so fewer kills fit in it)
    assert mid_campaign >= 4, (kills, mid_campaign)
    final = start_daemon(cfg, "--until-done")
    assert final.wait(timeout=120) == 0, final.stderr.read()
    assert states(db) == ["succeeded"] * len(agents)
    with sqlite3.connect(cfg.parent / "sim-sim.db") as sim, sqlite3.connect(db) as ours:
        at_sim = sim.execute("SELECT id, suffix, status FROM jobs").fetchall()
        tokens = [r[0] for r in ours.execute("SELECT client_token FROM attempts")]
        final_ids = [r[0] for r in ours.execute("SELECT provider_job_id FROM jobs")]
    per_suffix = Counter(s for _, s, _ in at_sim)
    assert set(per_suffix.values()) == {1}, per_suffix.most_common(3)  # one provider job per submission
    assert sorted(per_suffix) == sorted(tokens)  # and every submission is accounted for
    status = {i: st for i, _, st in at_sim}
    assert all(status[i] == "SUCCESS" for i in final_ids)
    assert Counter(st for _, _, st in at_sim)["SUCCESS"] == len(agents)  # nothing trained twice


@pytest.mark.parametrize("kind", ["mistral", "openai"])
def test_daemon_against_an_emulator_process(tmp_path, kind):
    import re

    import httpx

    from tests.conftest import FAKE_KEY, KEY_ENV, write_remote_config

    env = ftctl_env(**{KEY_ENV: FAKE_KEY})
    emu = subprocess.Popen([sys.executable, "-m", "ftctl", "emulator", "--kind", kind, "--port", "0",
                            "--queue-time", "0.2s", "--validate-time", "0.2s", "--train-time", "0.5s",
                            "--state-file", str(tmp_path / "emu.db"), "--api-key-env", KEY_ENV],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(), env=env)
    try:
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", emu.stdout.readline()).group(1)
        cfg = write_remote_config(tmp_path / "site", kind, url, concurrency=2)
        submit_jobs(cfg)
        daemon = subprocess.run([sys.executable, "-m", "ftctl", "--config", str(cfg), "daemon", "--until-done"],
                                capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir(), env=env)
        assert daemon.returncode == 0, daemon.stderr[-2000:]
        assert_no_key(daemon.stderr + daemon.stdout)
        models = {r["agent"]: r["model"] for r in json.loads(run_ftctl("models", "--format", "json", config=cfg,
                                                                        env=env).stdout)}
        assert len(models) == 5 and all(m.startswith("ft:") for m in models.values())
        state = httpx.get(url + "/_emulator/state").json()
        assert state["calls"]["POST /v1/fine_tuning/jobs"] == 5
        assert sorted(j["fine_tuned_model"] for j in state["jobs"]) == sorted(models.values())
    finally:
        emu.send_signal(signal.SIGTERM)
        assert emu.wait(timeout=10) == 0
