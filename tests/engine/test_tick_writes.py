"""What a tick writes (issue 13): its notes in one write transaction, guarded
by the job's state, and nothing at all when nothing changed, not even when
the slot count or the money left changes (those numbers are rendered when
shown, never stored)."""

import random

from sqlalchemy import event

from ftctl.controller.config import load_config
from ftctl.controller.engine.jobs import note_many
from ftctl.controller.engine.lines import LINE_MARGIN
from ftctl.controller.engine.step_types import JobView, Note
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.ledger.creation import create_job
from ftctl.controller.ledger.files import file_sha256
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.controller.records import live_facts, reason_text
from ftctl.models import Store
from ftctl.models.schema import HELD_SQL, IN_LINE_SQL, TRIED_SQL
from ftctl.models.store import TICK_COLUMNS
from tests.conftest import reason_of, write_config, write_training_file


class Writes:
    """Counts the write transactions (BEGIN IMMEDIATE) a store opens."""

    def __init__(self, store):
        self.count = 0
        event.listen(store.engine, "begin", self._begin)

    def _begin(self, conn):
        if conn.get_execution_options().get("ftctl_write"):
            self.count += 1


def _site(tmp_path, clock, **kw):
    config = load_config(write_config(tmp_path / "site", agents=("qa", "legal"), train_time="1h", **kw))
    store = Store(config.database_url)
    store_submissions(store, plan_submissions(config, [], all_agents=True))
    return config, store, Ticker(config, store, clock=clock, rng=random.Random(0))


def _more_jobs(store, tmp_path, n):
    data = write_training_file(tmp_path / "more.jsonl")
    for i in range(n):
        create_job(store, agent=f"bulk{i}", provider="sim", model="open-mistral-7b", training_file=data,
                   content_hash=file_sha256(data), hyperparameters={"training_steps": 10}, estimated_cost=4.0)


def test_a_ticks_notes_are_one_write_transaction_and_an_idle_tick_writes_nothing(tmp_path, clock):
    config, store, ticker = _site(tmp_path, clock, concurrency=2)
    ticker.tick()  # both agents handed to the provider: the slots are full
    clock.advance(5)
    ticker.tick()
    _more_jobs(store, tmp_path, 300)
    writes = Writes(store)
    result = ticker.tick()  # 300 jobs wait for a slot: the head of the line is told so, the rest shown so
    assert writes.count == 1
    assert result.waiting_for_slot == 300
    waiting = [j for j in store.list_jobs() if j.agent.startswith("bulk")]
    told = [j for j in waiting if j.reason_code == "slot"]
    assert len(told) == LINE_MARGIN and told == waiting[:LINE_MARGIN]  # the oldest, and only as many as read
    assert {reason_text(j, live_facts(store, config)) for j in waiting} == {"waiting for a slot (2/2 busy on sim)"}
    writes.count = 0
    clock.advance(5)
    ticker.tick()  # nothing changed
    assert writes.count == 0
    ticker.close()
    store.close()


def test_a_new_slot_count_rewrites_no_waiting_job(tmp_path, clock):
    config, store, ticker = _site(tmp_path, clock, concurrency=3, max_concurrent=3)
    _more_jobs(store, tmp_path, 50)
    ticker.tick()
    clock.advance(5)
    ticker.tick()
    before = {j.id: (j.reason_code, j.reason_args, j.updated_at) for j in store.list_jobs() if j.state == "prepared"}
    ticker.reload(load_config(write_config(tmp_path / "site", agents=("qa", "legal"), train_time="1h",
                                           concurrency=2, max_concurrent=3)))
    writes = Writes(store)
    result = ticker.tick()  # "3/3 busy" becomes "3/2 busy": shown from live facts, stored nowhere
    assert result.slots["sim"].limit == 2
    after = {j.id: (j.reason_code, j.reason_args, j.updated_at) for j in store.list_jobs() if j.state == "prepared"}
    assert after == before and len(after) == 49
    assert writes.count == 1  # the slot count itself, on the provider's row
    ticker.close()
    store.close()


def test_a_note_is_guarded_by_the_jobs_state(tmp_path, clock):
    config, store, ticker = _site(tmp_path, clock)
    qa, legal = store.list_jobs()
    stale = [Note(qa.id, "queued", {"reason_code": "slot", "reason_args": {"provider": "sim"}}),
             Note(legal.id, "prepared", {"reason_code": "slot", "reason_args": {"provider": "sim"}})]
    assert note_many(store, stale, clock()) == 1  # qa is not queued: left alone
    assert [j.reason_code for j in store.list_jobs()] == ["daemon", "slot"]
    ticker.close()
    store.close()


def test_the_tick_loads_plain_columns_without_finished_jobs(tmp_path, clock):
    config, store, ticker = _site(tmp_path, clock)
    # JobView's fields in order, the jobs a downstream job waits for as their ids
    assert TICK_COLUMNS == tuple("upstream_job_ids" if f == "upstream" else f for f in JobView._fields)
    with store.engine.connect() as conn:
        conn.exec_driver_sql("UPDATE jobs SET state = 'succeeded' WHERE agent = 'qa'")
        conn.commit()
    rows = store.jobs_to_reconcile(["prepared", "queued", "running"])
    assert rows == []  # legal waits in its provider's line: read by line_head, as far as admission goes
    assert [JobView(*r).agent for r in store.line_head("sim", 10)] == ["legal"]
    with store.engine.connect() as conn:
        conn.exec_driver_sql("UPDATE jobs SET reason_code = 'backoff' WHERE agent = 'legal'")
        conn.commit()
    rows = store.jobs_to_reconcile(["prepared", "queued", "running"])
    assert [JobView(*r).agent for r in rows] == ["legal"] and store.line_head("sim", 10) == []
    cols = ", ".join(TICK_COLUMNS)
    with store.engine.connect() as conn:
        plans = [conn.exec_driver_sql(f"EXPLAIN QUERY PLAN SELECT {cols} FROM jobs WHERE {where}").fetchall()
                 for where in ("state IN ('queued', 'running')",
                               "cancel_pending AND state NOT IN ('prepared', 'queued', 'running')",
                               HELD_SQL, f"{TRIED_SQL} AND attempt >= 5 AND {IN_LINE_SQL}",
                               f"state = 'prepared' AND provider = 'sim' AND {IN_LINE_SQL} ORDER BY created_at, id")]
        plans.append(conn.exec_driver_sql(f"EXPLAIN QUERY PLAN SELECT count(*) FROM jobs WHERE state = 'prepared' "
                                          f"AND provider = 'sim' AND {IN_LINE_SQL}").fetchall())
    assert all(any("USING INDEX" in str(step) or "USING COVERING INDEX" in str(step) for step in plan)
               for plan in plans), plans
    assert not any("TEMP B-TREE" in str(step) for plan in plans for step in plan), plans
    # the tick's own union: the waiting jobs held or out of attempts by their own indexes, never
    # by the state index (which would walk every waiting job)
    with store.engine.connect() as conn:
        plan = str(conn.exec_driver_sql("EXPLAIN QUERY PLAN " + store.reconcile_sql(
            ["prepared", "queued", "running"], ["candidate"], 5)).fetchall())
    assert "ix_jobs_held" in plan and "ix_jobs_tried" in plan and "TEMP B-TREE" not in plan, plan
    assert "COVERING INDEX ix_jobs_line" in str(plans[-1])  # the line is counted in the index alone
    ticker.close()
    store.close()


def test_the_prices_handed_to_the_step_follow_a_chain_to_its_root_and_only_an_at_names_one(tmp_path, clock):
    config, store, ticker = _site(tmp_path, clock)
    views = [JobView(id=i, agent="x", provider="sim", state=state, model=model)
             for i, (state, model) in enumerate((("running", "@qa"), ("queued", "open-mistral-7b"),
                                                 ("running", "xqa"), ("prepared", "open-mistral-7b-v2")), 1)]
    prices = ticker._prices("sim", views)
    # a stage on qa is priced as qa's base model; "xqa" is a model name, not a reference to the agent
    # qa; a job not in flight cannot succeed this tick and needs no price
    assert set(prices) == {"@qa", "open-mistral-7b"}
    assert prices["@qa"] == prices["open-mistral-7b"] and prices["@qa"].train_per_m > 0
    store.close()
