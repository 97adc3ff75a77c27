"""High availability on PostgreSQL: three daemons on one database, one leads,
the leader is killed and paused again and again, and the provider still holds
exactly one job per submission, none of them created by a fenced leader."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from datetime import datetime

import pytest
import sqlalchemy

from tests.conftest import (FAKE_KEY, KEY_ENV, Daemon, ftctl_env, leader_of, run_ftctl, start_emulator, wait_until,
                            write_remote_config)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE = 1.0


def site(tmp_path, url, emulator_url, agents, **kw):
    cfg = write_remote_config(tmp_path / "site", "mistral", emulator_url, agents=agents, database=url,
                              timeout="1s", create_margin="1s", poll="0.2s", **kw)
    cfg.write_text(cfg.read_text().replace('poll_interval = "0.2s"', f'poll_interval = "0.2s"\nlease = "{LEASE}s"'))
    return cfg


def test_three_daemons_survive_kills_and_a_pause_without_a_twin(tmp_path, postgres_server):
    url = postgres_server.database("ftctl_ha")
    # ten agents and six kills (one a freeze past the lease) prove what twenty did: every kill lands
    # mid-campaign (asserted below), a standby takes over after each (asserted at the next kill), and
    # each restart costs a daemon's start-up on a busy machine
    agents = tuple(f"a{i:02d}" for i in range(10))
    env = ftctl_env(**{KEY_ENV: FAKE_KEY})
    rng = random.Random(14)
    with start_emulator("mistral", tmp_path, limit=2, queue_time=0.2, validate_time=0.2, train_time=3.0) as srv:
        cfg = site(tmp_path, url, srv.url, agents, concurrency=2)
        assert run_ftctl("submit", "--all", config=cfg, env=env).returncode == 0
        daemons = [Daemon(cfg, env=env) for _ in range(3)]
        everyone = list(daemons)
        try:
            assert wait_until(lambda: leader_of(daemons), 30), [d.stderr[-500:] for d in daemons]
            # the standbys show once they have said so in the database (a heartbeat each)
            shown = wait_until(lambda: (lambda line: "daemon: running (leader host" in line and line.count(
                "host ") == 3 and "standing by: host" in line)(run_ftctl("status", config=cfg, env=env).stderr), 10)
            assert shown, run_ftctl("status", config=cfg, env=env).stderr
            kills, paused, takeovers = 0, False, []
            while kills < 5 or not paused:
                leader = wait_until(lambda: leader_of(daemons), 15)
                assert leader is not None, "no daemon took over"
                if kills == 2 and not paused:
                    # a leader frozen for longer than its lease must not act once it thaws
                    leader.proc.send_signal(signal.SIGSTOP)
                    time.sleep(LEASE * 3)
                    others = [d for d in daemons if d is not leader]
                    assert wait_until(lambda: leader_of(others), 15)  # a standby took over meanwhile
                    leader.proc.send_signal(signal.SIGCONT)
                    assert leader.wait_for("leadership lost; acting no more", timeout=15), leader.stderr[-2000:]
                    paused = True
                    continue
                time.sleep(rng.uniform(0.2, 1.0))
                leader.kill()
                killed_at = time.monotonic()
                kills += 1
                daemons.remove(leader)
                fresh = Daemon(cfg, env=env)
                daemons.append(fresh)
                everyone.append(fresh)
                if wait_until(lambda: leader_of(daemons), 15):
                    takeovers.append(time.monotonic() - killed_at)
            with sqlalchemy.create_engine(url).connect() as c:
                unfinished_at_end_of_kills = c.execute(sqlalchemy.text(
                    "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')")).scalar()
            assert unfinished_at_end_of_kills > 0  # the kills landed mid-campaign
            assert wait_until(lambda: all(j["state"] == "succeeded" for j in
                                    __import__("json").loads(run_ftctl("status", "--json", config=cfg,
                                                                       env=env).stdout or "[]")), 120)
        finally:
            for d in everyone:
                if d.proc.poll() is None:
                    d.proc.send_signal(signal.SIGCONT)
                    d.kill()
        assert kills >= 5 and paused
        # exactly one provider job per submission
        jobs = srv.emulator.engine.all_jobs()
        per_token = Counter(j["suffix"] for j in jobs)
        assert set(per_token.values()) == {1}, per_token.most_common(3)
        assert sum(1 for j in jobs if j["status"] == "SUCCESS") == len(agents)
    # and no create from a leader whose epoch had been overtaken
    leads = sorted((_at(line), line["epoch"]) for d in everyone for line in d.lines if line["event"] == "leading")
    for d in everyone:
        epoch = None
        for line in d.lines:
            if line["event"] == "leading":
                epoch = line["epoch"]
            elif line["event"] in ("created at provider", "transition"):
                newest = max(e for at, e in leads if at <= _at(line))
                assert epoch == newest, (line, epoch, newest)
    print(f"takeover seconds: {sorted(round(t, 2) for t in takeovers)}")


def _at(line) -> datetime:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))


def test_a_database_away_for_five_leases_leaves_the_daemons_standing(tmp_path, postgres_server):
    url = postgres_server.database("ftctl_outage")
    env = ftctl_env(**{KEY_ENV: FAKE_KEY})
    with start_emulator("mistral", tmp_path, limit=2, queue_time=0.2, validate_time=0.2, train_time=4) as srv:
        cfg = site(tmp_path, url, srv.url, ("qa", "legal", "support"), concurrency=2)
        assert run_ftctl("submit", "--all", config=cfg, env=env).returncode == 0
        daemons = [Daemon(cfg, env=env) for _ in range(2)]
        try:
            assert wait_until(lambda: leader_of(daemons), 30)
            assert wait_until(lambda: srv.emulator.calls["POST /v1/fine_tuning/jobs"] >= 2, 30)
            postgres_server.stop()
            try:
                time.sleep(5 * LEASE)
            finally:
                postgres_server.start()
            assert all(d.proc.poll() is None for d in daemons)  # still standing
            assert wait_until(lambda: leader_of(daemons), 30), [d.stderr[-1500:] for d in daemons]
            for d in daemons:
                said = [line["event"] for line in d.lines if line.get("level") in ("warning", "error")]
                assert said.count("database unreachable; acting no more until it answers (standing by)") == 1, d.stderr[-3000:]
                assert len(said) <= 2, said  # one line for the outage, not a storm
            import json

            assert wait_until(lambda: [j["state"] for j in json.loads(run_ftctl(
                "status", "--json", config=cfg, env=env).stdout)] == ["succeeded"] * 3, 60)
        finally:
            for d in daemons:
                d.kill()
        per_token = Counter(j["suffix"] for j in srv.emulator.engine.all_jobs())
        assert set(per_token.values()) == {1}
