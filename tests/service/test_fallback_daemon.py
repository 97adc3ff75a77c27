"""Fallback providers with the real daemon (issue 20.2): the OpenAI emulator
closes mid-campaign, agents with provider = ["openai", "sim"] move to the
simulated provider exactly once with the move in their history, and a
daemon SIGKILLed during the move never leaves two live provider jobs for
one ftctl job (counted at both providers by token)."""

from __future__ import annotations

import sqlite3
import textwrap
from collections import Counter

import pytest

from tests.conftest import (FAKE_KEY, KEY_ENV, Daemon, ftctl_env, start_emulator, states, submit_jobs, wait_until,
                            write_training_file)

pytestmark = pytest.mark.slow

TODAY = "2026-12-03"  # before OpenAI's date: only the emulator's refusal closes it


def site(directory, url, agents, *, openai_concurrency=1, timeout="1s", create_margin="3s", poll="0.2s"):
    directory.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(f"""\
        [controller]
        database = "sqlite:///ftctl.db"
        poll_interval = "{poll}"

        [retry]
        max_attempts = 5
        backoff_initial = "0.2s"
        backoff_max = "60s"
        create_margin = "{create_margin}"

        [providers.openai]
        kind = "openai"
        concurrency = {openai_concurrency}
        base_url = "{url}/v1"
        api_key_env = "{KEY_ENV}"
        timeout = "{timeout}"

        [providers.sim]
        kind = "simulated"
        concurrency = 4
        queue_time = "0.1s"
        validate_time = "0.1s"
        train_time = "0.5s"
        """)
    for a in agents:
        write_training_file(directory / "data" / f"{a}.jsonl")
        text += textwrap.dedent(f"""
            [agents.{a}]
            provider = ["openai", "sim"]
            model = {{ openai = "gpt-4o-mini-2024-07-18", sim = "open-mistral-7b" }}
            training_file = "data/{a}.jsonl"
            hyperparameters = {{ openai = {{ epochs = 3 }}, sim = {{ training_steps = 10 }} }}
            """)
    path = directory / "controller.toml"
    path.write_text(text)
    return path


def rows(db, sql):
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


def live_per_job(srv, cfg):
    """ftctl job id -> its provider jobs that are not failed or cancelled, at
    both providers, found by the client tokens of its attempts."""
    db = cfg.parent / "ftctl.db"
    owner = dict(rows(db, "SELECT client_token, job_id FROM attempts"))
    live: Counter = Counter()
    for j in srv.emulator.engine.all_jobs():
        token = ((j["metadata"] or {}).get("user") or {}).get("ftctl_token")
        if j["status"] not in ("FAILED", "FAILED_VALIDATION", "CANCELLED"):
            live[owner.get(token, f"stranger {token}")] += 1
    sim = cfg.parent / "sim-sim.db"
    made = rows(sim, "SELECT suffix, status FROM jobs") if sim.exists() else []  # the daemon makes it on its first create
    for suffix, status in made:
        if status not in ("FAILED", "FAILED_VALIDATION", "CANCELLED"):
            live[owner.get(suffix, f"stranger {suffix}")] += 1
    return live


def moves(db):
    return Counter(job_id for (job_id,) in rows(db, "SELECT job_id FROM job_events WHERE trigger = 'move'"))


def test_openai_closes_mid_campaign_and_each_job_moves_to_sim_exactly_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCTL_TODAY", TODAY)
    env = ftctl_env(**{KEY_ENV: FAKE_KEY, "FTCTL_TODAY": TODAY})
    agents = ("qa", "legal", "support")
    with start_emulator("openai", tmp_path, limit=1) as srv:
        cfg = site(tmp_path / "site", srv.url, agents)
        submit_jobs(cfg)
        db = cfg.parent / "ftctl.db"
        daemon = Daemon(cfg, "--until-done", env=env)
        try:
            # the first job reaches OpenAI; then OpenAI closes to this account
            assert wait_until(lambda: srv.emulator.engine.all_jobs() or daemon.proc.poll() is not None, timeout=30)
            srv.emulator.close_fine_tuning()
            assert daemon.wait(timeout=120) == 0, daemon.stderr[-3000:]
        finally:
            daemon.kill()
        assert states(db) == ["succeeded"] * 3
        where = dict(rows(db, "SELECT id, provider FROM jobs"))
        assert sorted(where.values()) == ["openai", "sim", "sim"], where
        moved = moves(db)
        assert {j for j, p in where.items() if p == "sim"} == set(moved) and set(moved.values()) == {1}
        reasons = [r for (r,) in rows(db, "SELECT reason FROM job_events WHERE trigger = 'move'")]
        assert all("moved from openai to sim" in r and "closed" in r for r in reasons), reasons
        # the refused creates were neither retries nor attempts against the job
        refused = rows(db, "SELECT outcome, counted FROM attempts WHERE outcome = 'moved'")
        assert refused and all(counted == 0 for _, counted in refused)
        assert srv.emulator.calls["POST /v1/fine_tuning/jobs"] <= 3  # one refusal at most per moved job
        assert set(live_per_job(srv, cfg).values()) == {1}
        assert len(srv.emulator.engine.all_jobs()) == 1
        # the estimate is sim's own now (Mistral's $4 minimum), as priced at submit; OpenAI's was tokens
        costs = dict(rows(db, "SELECT provider, estimated_cost FROM jobs"))
        assert costs["sim"] == 4.0 and costs["openai"] != 4.0, costs


def test_a_daemon_killed_during_the_move_leaves_one_live_provider_job_per_job(tmp_path, monkeypatch):
    """Creates go out to OpenAI: the first lands 4 s late (the client gave up
    after 1 s), two get a 5xx (nothing made, outcome unknown). The daemon is
    killed; OpenAI's date passes; the next daemon moves what holds nothing
    there to sim and is killed right after a move is stored, before the job
    reaches sim. The late job must stay at OpenAI: moving it before a listing
    read after it could land proves it absent would leave two live jobs."""
    monkeypatch.setenv("FTCTL_TODAY", TODAY)
    before = ftctl_env(**{KEY_ENV: FAKE_KEY, "FTCTL_TODAY": TODAY})
    after = ftctl_env(**{KEY_ENV: FAKE_KEY, "FTCTL_TODAY": "2027-01-07"})  # OpenAI takes no new jobs
    agents = ("qa", "legal", "support", "content")
    with start_emulator("openai", tmp_path, limit=4) as srv:
        srv.emulator.faults.add(method="POST", path="/v1/fine_tuning/jobs", delay=4.0, times=1)
        srv.emulator.faults.add(method="POST", path="/v1/fine_tuning/jobs", status=503, times=2)
        # a second between ticks: a stored move waits that long before the job is created at sim
        cfg = site(tmp_path / "site", srv.url, agents, openai_concurrency=4, create_margin="4s", poll="1s")
        submit_jobs(cfg)
        db = cfg.parent / "ftctl.db"
        first = Daemon(cfg, env=before)
        try:
            assert wait_until(lambda: sum(l.get("event") == "create at provider failed" for l in first.lines) >= 3
                              or first.proc.poll() is not None, timeout=30), first.stderr[-3000:]
        finally:
            first.kill()
        second = Daemon(cfg, env=after)
        try:
            assert second.wait_for("moved to the next provider", timeout=30), second.stderr[-3000:]
        finally:
            second.kill()
        # the kill landed mid-move: the move is stored, the job is not at sim yet
        moved = next(l["job_id"] for l in second.lines if l.get("event") == "moved to the next provider")
        (row,) = rows(db, f"SELECT provider, state, provider_job_id, client_token FROM jobs WHERE id = {moved}")
        assert row == ("sim", "prepared", None, None), row
        assert moved not in live_per_job(srv, cfg)
        assert set(live_per_job(srv, cfg).values()) <= {1}
        final = Daemon(cfg, "--until-done", env=after)
        assert final.wait(timeout=120) == 0, final.stderr[-3000:]
        assert states(db) == ["succeeded"] * len(agents)
        live = live_per_job(srv, cfg)
        assert sorted(live) == sorted(i for (i,) in rows(db, "SELECT id FROM jobs")) and set(live.values()) == {1}, live
        where = dict(rows(db, "SELECT id, provider FROM jobs"))
        at_openai = {j["id"] for j in srv.emulator.engine.all_jobs()}
        owners = {o for (o, pid) in rows(db, "SELECT job_id, provider_job_id FROM attempts") if pid in at_openai}
        assert len(at_openai) >= 1 and owners and all(where[o] == "openai" for o in owners), (at_openai, where)
        movers = moves(db)
        assert set(movers) == {i for i, p in where.items() if p == "sim"} and set(movers.values()) == {1}
