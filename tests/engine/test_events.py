"""Events: every transition and promotion has a stable id, and the row the
hooks are owed is written in the transaction of the change it reports."""

import random
import sqlite3

import pytest
from sqlmodel import select

from ftctl.controller.config import load_config
from ftctl.controller.engine.jobs import StaleState, fire, note
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.ledger.states import InvalidTransition
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import JobEvent, OutboxEvent, Store
from ftctl.providers import build_provider


def _rows(store, model):
    with store.read() as s:
        return list(s.exec(select(model).order_by(model.id)))


@pytest.fixture
def site(make_config):
    cfg = load_config(make_config(agents=("qa", "legal")))
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    yield cfg, store
    store.close()


def test_a_transition_writes_its_event_and_outbox_row_together(site):
    cfg, store = site
    fire(store, 1, "submit", updates={"client_token": "qa-1"})
    fire(store, 1, "start")
    # an agent without an evaluation gate: its model is promoted with the success
    fire(store, 1, "succeed", updates={"fine_tuned_model": "ft:open-mistral-7b:qa-1:x"}, promotion="skip")
    events = [e for e in _rows(store, JobEvent) if e.job_id == 1]
    assert [e.name for e in events] == ["prepared", "queued", "running", "succeeded", "promoted"]
    assert len({e.event_id for e in events}) == 5 and all(e.event_id.startswith("evt_") for e in events)
    outbox = {o.event_id: o for o in _rows(store, OutboxEvent)}
    assert all(e.event_id in outbox and outbox[e.event_id].name == e.name for e in events)
    done = outbox[events[-2].event_id].payload
    assert done["event"] == "succeeded" and done["agent"] == "qa" and done["job_id"] == 1
    assert done["fine_tuned_model"] == "ft:open-mistral-7b:qa-1:x" and done["from"] == "running"
    assert outbox[events[-1].event_id].payload["event"] == "promoted"


def test_a_refused_or_stale_transition_owes_the_hooks_nothing_and_a_note_is_an_event(site):
    cfg, store = site
    before = len(_rows(store, OutboxEvent))
    with pytest.raises(InvalidTransition):
        fire(store, 1, "succeed")
    with pytest.raises(StaleState):
        fire(store, 1, "submit", expect="running")
    assert len(_rows(store, OutboxEvent)) == before
    note(store, 1, {"provider_status": "QUEUED"}, event=("found", "found at the provider"))
    found = _rows(store, JobEvent)[-1]
    assert found.name == "found"  # the history has the note, with its own id
    # ... and the hooks are owed it, as `ftctl events` shows it
    (owed,) = [o for o in _rows(store, OutboxEvent) if o.event_id == found.event_id]
    assert owed.name == "found" and owed.payload["reason"] == "found at the provider"


def test_a_write_that_fails_leaves_neither_the_event_nor_its_outbox_row(site, monkeypatch):
    cfg, store = site
    from ftctl.controller.engine import jobs

    events, outbox = len(_rows(store, JobEvent)), len(_rows(store, OutboxEvent))
    real = jobs.record

    def record_then_die(*a, **kw):
        real(*a, **kw)
        raise RuntimeError("the process dies mid-transaction")

    monkeypatch.setattr(jobs, "record", record_then_die)
    with pytest.raises(RuntimeError):
        fire(store, 1, "submit", updates={"client_token": "qa-1"})
    assert store.get_job(1).state == "prepared"
    assert (len(_rows(store, JobEvent)), len(_rows(store, OutboxEvent))) == (events, outbox)


def test_a_campaign_owes_one_outbox_row_per_event_of_its_history(make_config, clock):
    cfg = load_config(make_config(agents=("qa", "legal", "support"), concurrency=1))
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    sim = build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))
    rec = Ticker(cfg, store, {"sim": sim}, clock=clock, rng=random.Random(0))
    for _ in range(200):
        if rec.tick().all_terminal:
            break
        clock.advance(1.0)
    history = _rows(store, JobEvent)
    outbox = _rows(store, OutboxEvent)
    assert sorted(o.event_id for o in outbox) == sorted(e.event_id for e in history)
    assert sum(o.name == "created" for o in outbox) == 3  # the notes too
    assert sum(o.name == "succeeded" for o in outbox) == 3 and sum(o.name == "promoted" for o in outbox) == 3
    store.close()


def test_the_migration_gives_old_history_ids_and_names(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from ftctl.models.store import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    alembic = Config()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        alembic.attributes["connection"] = conn
        command.upgrade(alembic, "0004")
        conn.exec_driver_sql("INSERT INTO jobs (id, agent, provider, model, training_file, content_hash, "
                             "hyperparameters, state, attempt, cancel_pending, created_at, updated_at, identity, "
                             "replica) VALUES (1, 'qa', 'sim', 'm', 'f', 'h', '{}', 'queued', 1, 0, "
                             "'2026-01-01', '2026-01-01', 'i', 0)")
        conn.exec_driver_sql("INSERT INTO job_events (job_id, at, from_state, to_state, \"trigger\") VALUES "
                             "(1, '2026-01-01', NULL, 'prepared', 'create'), (1, '2026-01-01', 'prepared', "
                             "'queued', 'submit'), (1, '2026-01-01', 'queued', 'queued', 'found')")
    engine.dispose()
    Store(url).close()  # upgrades to the head
    with sqlite3.connect(tmp_path / "old.db") as c:
        rows = c.execute("SELECT event_id, name FROM job_events ORDER BY id").fetchall()
    assert [r[1] for r in rows] == ["prepared", "queued", "found"]
    assert len({r[0] for r in rows}) == 3 and all(r[0].startswith("evt_") and len(r[0]) == 36 for r in rows)
