"""The store on a real PostgreSQL server (started by the fixture)."""

import random

import pytest

from ftctl.controller.config import load_config
from ftctl.controller.engine.jobs import fire
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.ledger.creation import create_job
from ftctl.controller.ledger.states import InvalidTransition
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import LockHeld, Store
from ftctl.providers import build_provider

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_store(postgres_url):
    store = Store(postgres_url)
    with store.write() as s:
        for table in ("outbox", "log_points", "log_cursors", "webhook_deliveries", "attempts", "job_events",
                      "uploaded_files", "provider_state", "jobs", "daemons"):
            s.connection().exec_driver_sql(f"DELETE FROM {table}")
        s.connection().exec_driver_sql("UPDATE leadership SET holder = NULL, lease_until = NULL")
    yield store
    store.close()


def test_transitions_and_history_on_postgres(pg_store, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("{}\n")
    job = create_job(pg_store, agent="qa", provider="sim", model="m", training_file=f, content_hash="h",
                     hyperparameters={"training_steps": 3})
    fire(pg_store, job.id, "submit", updates={"attempt": 1, "client_token": "qa-pg1"})
    fire(pg_store, job.id, "start")
    fire(pg_store, job.id, "succeed", updates={"fine_tuned_model": "ft:m:qa:1:a"}, promotion="skip")
    with pytest.raises(InvalidTransition):
        fire(pg_store, job.id, "cancel")
    row = pg_store.get_job(job.id)
    assert (row.state, row.fine_tuned_model, row.hyperparameters) == ("succeeded", "ft:m:qa:1:a",
                                                                       {"training_steps": 3})
    # a success is a promotion at once (no evaluation gate), with its own event
    assert [e.trigger for e in pg_store.events(job.id)] == ["create", "submit", "start", "succeed", "skip"]


def test_one_daemon_per_postgres_database(postgres_url, pg_store):
    pg_store.acquire_daemon_lock()
    other = Store(postgres_url)
    try:
        with pytest.raises(LockHeld):
            other.acquire_daemon_lock()
        pg_store.release_daemon_lock()
        other.acquire_daemon_lock()  # free again once released (or the holder dies)
    finally:
        other.close()


def test_campaign_on_postgres(postgres_url, pg_store, make_config, clock):
    path = make_config(concurrency=5, max_concurrent=2, database=postgres_url)
    cfg = load_config(path)
    store_submissions(pg_store, plan_submissions(cfg, [], all_agents=True))
    rec = Ticker(cfg, pg_store, {"sim": build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))}, clock=clock,
                     rng=random.Random(0))
    for _ in range(500):
        if rec.tick().all_terminal:
            break
        clock.advance(1)
    jobs = pg_store.list_jobs()
    assert [j.state for j in jobs] == ["succeeded"] * 5
    assert all(j.attempt == 1 for j in jobs)
    assert pg_store.provider_states()["sim"].learned_limit == 2


def test_daemon_probe_on_postgres(postgres_url, pg_store):
    other = Store(postgres_url)
    try:
        assert other.daemon_holder() is None
        pg_store.acquire_daemon_lock()
        assert other.daemon_holder().startswith(f"host {pg_store.leadership.host} pid ")
        pg_store.release_daemon_lock()
        assert other.daemon_holder() is None
    finally:
        other.close()


@pytest.fixture
def standby(postgres_url, pg_store):
    """A second store on the same database; both keep a 1 s lease, and the
    first leads (its epoch is the second item)."""
    pg_store.leadership.lease = 1.0
    other = Store(postgres_url)
    other.leadership.lease = 1.0
    pg_store.acquire_daemon_lock()
    try:
        yield other, pg_store.leadership.epoch
    finally:
        other.close()


def test_a_lease_runs_out_and_a_standby_takes_over_with_a_new_epoch(pg_store, standby):
    import time

    from ftctl.models import LockLost

    other, first_epoch = standby
    assert not other.leadership.acquire()
    assert pg_store.leadership.renew()  # the leader renews while alive
    time.sleep(1.1)  # ... then stops renewing (paused, killed, cut off)
    with pytest.raises(LockLost, match="ran out"):
        pg_store.assert_lock_held()  # it knows by itself, before anyone takes over
    assert other.leadership.acquire()
    assert other.leadership.epoch == first_epoch + 1
    # the old leader's writes are fenced, and so is its renewal
    with pytest.raises(LockLost):
        with pg_store.write():
            pass
    assert pg_store.leadership.renew() is False
    other.fenced = True
    with other.write():
        pass  # the new leader writes


def test_a_leader_frozen_inside_a_write_does_not_keep_the_standbys_out(pg_store, standby):
    """SIGSTOP landing inside a fenced write leaves the leadership row held FOR
    SHARE by a session that says nothing: the server ends that session after
    the lease, and a standby takes over (its own wait for the row is bounded)."""
    import time

    from sqlalchemy.exc import SQLAlchemyError

    other, first_epoch = standby
    took_over = None
    with pytest.raises(SQLAlchemyError):  # its session was ended while it was frozen
        with pg_store.write():  # the frozen leader, in the middle of a fenced write
            started = time.monotonic()
            while time.monotonic() - started < 6:
                if other.leadership.acquire():
                    took_over = time.monotonic() - started
                    break
                time.sleep(0.1)
    assert took_over is not None and took_over < 4, took_over
    assert other.leadership.epoch == first_epoch + 1


def test_the_command_lines_reads_on_postgres(postgres_url, pg_store, tmp_path):
    """models.reads' SQL on PostgreSQL too: the listing, the last finished,
    the grouped models, the money and the daemon probe."""
    from datetime import timedelta

    from ftctl.models import utcnow
    from ftctl.models.reads import Filter, open_reads

    f = tmp_path / "d.jsonl"
    f.write_text("{}\n")
    for i, agent in enumerate(("qa", "legal", "qa", "support")):
        job = create_job(pg_store, agent=agent, provider="sim", model="m", training_file=f, content_hash=f"h{i}",
                         hyperparameters={}, estimated_cost=4.0)
        if i < 3:
            fire(pg_store, job.id, "submit", updates={"attempt": 1, "client_token": f"t{i}"})
            fire(pg_store, job.id, "succeed", updates={"fine_tuned_model": f"ft:m:{agent}:{i}"}, promotion="skip")
    reads = open_reads(postgres_url)
    try:
        assert [j.agent for j in reads.jobs(Filter(states=["prepared"]))] == ["support"]
        assert [j.fine_tuned_model for j in reads.last_finished(Filter(), 2)] == ["ft:m:legal:1", "ft:m:qa:2"]
        assert [(m.agent, m.model) for m in reads.promoted_models()] == [("legal", "ft:m:legal:1"), ("qa", "ft:m:qa:2")]
        assert reads.count(Filter(agents=["qa"])) == 2
        # a read while another streams (status merges two listings and counts): neither is cut short
        ids = [j.id for j in reads.jobs(Filter())]
        streaming = reads.jobs(Filter())
        assert next(streaming).id == ids[0]
        assert reads.count(Filter()) == len(ids) and len(reads.last_finished(Filter(), 3)) == 3
        assert [j.id for j in streaming] == ids[1:]
        assert reads.spent_in(utcnow() - timedelta(hours=1), utcnow()) == 12.0 and reads.committed() == 0.0
        assert reads.daemon_holder() is None
        pg_store.acquire_daemon_lock()
        assert reads.daemon_holder().startswith("host ")
        assert reads.daemons()["leader"]["epoch"] == pg_store.leadership.epoch
        pg_store.release_daemon_lock()
    finally:
        reads.close()
