"""The waiting line (issue 18.9): a tick reads each provider's line of waiting
jobs only as far as admission can go, yet every rule that looks at waiting
jobs holds (order, attempts, backoff, the budget, a pause, the cluster's
room, pipelines) and every waiting job is shown with the right reason."""

import random
from datetime import timedelta

import pytest

from ftctl.controller.config import load_config
from ftctl.controller.engine import decide as rc
from ftctl.controller.engine.lines import LINE_MARGIN
from ftctl.controller.engine.policy import Budget, Policy
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.ledger.creation import create_job
from ftctl.controller.ledger.files import file_sha256
from ftctl.controller.ledger.reasons import Live, Reason, shown
from ftctl.controller.records import live_facts, reason_text
from ftctl.models import Store
from tests.conftest import write_config, write_training_file
from tests.engine.test_decide import NOW, job, pj, view

POLICY = Policy(max_attempts=3)


class Loads:
    """Counts the waiting jobs each tick reads from the store."""

    def __init__(self, store):
        self.store, self.prepared = store, []
        real_reconcile, real_head = store.jobs_to_reconcile, store.line_head

        def reconcile(*a, **kw):
            rows = real_reconcile(*a, **kw)
            self.prepared.append(sum(r[3] == "prepared" for r in rows))
            return rows

        def head(*a, **kw):
            rows = real_head(*a, **kw)
            self.prepared[-1] += len(rows)
            return rows
        store.jobs_to_reconcile, store.line_head = reconcile, head


def _site(tmp_path, clock, n, **kw):
    config = load_config(write_config(tmp_path / "site", agents=("qa",), **kw))
    store = Store(config.database_url)
    data = write_training_file(tmp_path / "bulk.jsonl")
    for i in range(n):
        create_job(store, agent=f"bulk{i}", provider="sim", model="open-mistral-7b", training_file=data,
                   content_hash=file_sha256(data), hyperparameters={"training_steps": 10}, estimated_cost=4.0,
                   now=clock.now + timedelta(milliseconds=i))
    return config, store, Ticker(config, store, clock=clock, rng=random.Random(0))


def _shown(store, config, state="prepared"):
    live = live_facts(store, config)
    return {j.id: reason_text(j, live) for j in store.list_jobs() if j.state == state}


def test_a_backlog_is_read_only_as_far_as_admission_goes_and_admitted_oldest_first(tmp_path, clock):
    n, slots = 2 * LINE_MARGIN, 4
    config, store, ticker = _site(tmp_path, clock, n, concurrency=slots, queue_time="1s", validate_time="1s",
                                  train_time="1s")
    loads = Loads(store)
    for _ in range(400):
        result = ticker.tick()
        if result.states["succeeded"] == n:
            break
        # every tick: no more waiting jobs read than the free slots and the margin
        assert loads.prepared[-1] <= slots + LINE_MARGIN, loads.prepared
        if result.states["prepared"]:
            assert set(_shown(store, config).values()) == {f"waiting for a slot ({slots}/{slots} busy on sim)"}
            assert result.waiting_for_slot == result.states["prepared"]
        clock.advance(1)
    assert result.states["succeeded"] == n, result.summary()
    with store.engine.connect() as conn:
        order = [r[0] for r in conn.exec_driver_sql(
            "SELECT job_id FROM job_events WHERE trigger = 'submit' ORDER BY id").fetchall()]
    assert order == sorted(order) and len(order) == n  # the line's order: the oldest job first
    ticker.close()
    store.close()


def test_rules_hold_deep_in_the_line(tmp_path, clock):
    """Attempts, backoff and a retried job far behind the head of the line."""
    config, store, ticker = _site(tmp_path, clock, 4 * LINE_MARGIN, concurrency=2, train_time="1h")
    ticker.tick()
    ids = [j.id for j in store.list_jobs()]
    out_of_attempts, backing_off, requeued = ids[-1], ids[-2], ids[-3]
    until = clock.now + timedelta(seconds=60)
    with store.engine.connect() as conn:
        conn.exec_driver_sql(f"UPDATE jobs SET attempt = 5 WHERE id = {out_of_attempts}")
        conn.exec_driver_sql("UPDATE jobs SET attempt = 1, reason_code = 'backoff', reason_args = ?, not_before = ? "
                             f"WHERE id = {backing_off}", (
                                 '{"until": "%s", "attempt": 2, "max": 5, "why": "boom"}' % until.isoformat(),
                                 until.strftime("%Y-%m-%d %H:%M:%S.%f")))
        conn.exec_driver_sql(f"UPDATE jobs SET reason_code = 'capacity', reason_args = '{{\"status\": \"x\"}}' "
                             f"WHERE id = {requeued}")
        conn.commit()
    loads = Loads(store)
    ticker.tick()
    assert loads.prepared[-1] <= LINE_MARGIN + 3
    assert store.get_job(out_of_attempts).state == "failed"  # out of attempts: failed at once, far back as it is
    assert store.get_job(out_of_attempts).reason_code == "attempts_exhausted"
    shown_now = _shown(store, config)
    assert shown_now[backing_off].startswith("backoff until")
    assert shown_now[requeued] == "waiting for a slot (2/2 busy on sim)"  # read on its own, told it is in line
    assert store.get_job(requeued).reason_code == "slot"
    clock.advance(61)
    ticker.tick()
    assert _shown(store, config)[backing_off] == "waiting for a slot (2/2 busy on sim)"
    ticker.close()
    store.close()


def test_a_downstream_job_waits_for_its_upstream_from_the_moment_it_is_stored(tmp_path, clock):
    config, store, ticker = _site(tmp_path, clock, 1)
    data = write_training_file(tmp_path / "down.jsonl")
    (up,) = store.list_jobs()
    down = create_job(store, agent="down", provider="sim", model="@bulk0", training_file=data,
                      content_hash=file_sha256(data), hyperparameters={}, upstream_job_ids=[up.id],
                      model_job_id=up.id)
    assert reason_text(down, live_facts(store, config)) == f"waiting for bulk0 (job {up.id}, prepared)"
    store.close()


# -- the decision step alone ------------------------------------------------------------------


def _decide(jobs, pv, budget=None):
    return rc.decide(jobs, {"sim": pv}, NOW, POLICY, random.Random(1), budget)


def _line(out):
    (line,) = [d for d in out if isinstance(d, rc.Line)]
    return line.reason


def test_a_job_behind_the_part_of_the_line_read_waits_for_those_ahead():
    jobs = [job(i) for i in range(1, 4)] + [job(9, reason=Reason("capacity", {"status": "x"}))]
    end = (jobs[2].created_at, jobs[2].id)  # the line was read to job 3; job 9 came on its own
    out = _decide(jobs, view([], limit=10, line_end=end))
    assert [d.job_id for d in out if isinstance(d, rc.Submit)] == [1, 2, 3]
    (note,) = [d for d in out if isinstance(d, rc.Note)]
    assert (note.job_id, note.updates["reason_code"]) == (9, "slot")
    assert _line(out).code == "daemon"  # nothing stops the line: the next tick reads on


def test_the_budget_skips_a_job_over_it_and_considers_the_next():
    jobs = [job(1, estimated_cost=9.0), job(2, estimated_cost=1.0), job(3, estimated_cost=1.0)]
    budget = Budget(total=2.5)
    out = _decide(jobs, view([], limit=5), budget)
    assert [d.job_id for d in out if isinstance(d, rc.Submit)] == [2, 3]
    # a job in line that no tick read is shown with the budget as it is now
    live = Live(budget_left=0.5, lines={"sim": _line(out)}, refusal=lambda c: budget.refuse(c, 0.5))
    unread = job(7, estimated_cost=1.0, reason=Reason("daemon"))
    assert shown(unread, live).text(live) == "over budget: estimate $1.00 > $0.50 left"


@pytest.mark.parametrize("cost,left", [(None, 5.0), (1.0, 5.0), (5.0, 5.0), (5.01, 5.0), (3.0, None), (4.0, -1.0)])
def test_the_ceiling_the_line_is_read_within_is_the_budgets_own_rule(cost, left):
    for budget in (Budget(per_job=4.0), Budget(total=10.0), Budget(per_job=4.0, total=10.0)):
        ceiling = budget.ceiling(left if budget.total is not None else None)
        fits = cost is not None and cost <= ceiling
        assert (budget.refuse(cost, left if budget.total is not None else None) is None) == fits
    assert Budget().ceiling(1.0) is None


def test_a_paused_provider_stops_its_whole_line_whatever_the_budget():
    pv = view([], limit=2, paused_why="auth", paused_message="bad key", paused_until=NOW + timedelta(hours=1))
    out = _decide([job(1)], pv)
    assert not [d for d in out if isinstance(d, rc.Submit)]
    live = Live(lines={"sim": _line(out)}, refusal=lambda c: Reason("budget_left", {"estimate": c}))
    assert shown(job(5, estimated_cost=3.0, reason=Reason("slot")), live).text(live) == \
        "provider auth failing: bad key"


def test_the_clusters_room_bounds_admission_and_is_the_lines_reason():
    out = _decide([job(i) for i in range(1, 5)], view([], limit=5, room=1, room_need="1 GPU"))
    assert [d.job_id for d in out if isinstance(d, rc.Submit)] == [1]
    live = Live(lines={"sim": _line(out)})
    assert shown(job(8, reason=Reason("daemon")), live).text(live) == \
        "waiting for 1 GPU on the sim cluster (none free now)"


def test_an_unobserved_provider_keeps_a_backoff_and_shows_why_the_line_waits():
    from ftctl.providers.base import Unreachable

    backing = job(2, attempt=1, not_before=NOW + timedelta(minutes=1),
                  reason=Reason("backoff", {"until": NOW.isoformat(), "attempt": 2, "max": 3, "why": "x"}))
    out = _decide([job(1), backing], view(None, error=Unreachable("no route")))
    assert {d.job_id for d in out if isinstance(d, rc.Note)} == {1}
    live = Live(lines={"sim": _line(out)})
    assert shown(job(7, reason=Reason("daemon")), live).text(live) == "provider unreachable: no route; retrying"


def test_a_job_of_a_provider_not_configured_is_shown_so():
    live = Live(lines={}, providers=frozenset({"other"}))
    assert shown(job(3, reason=Reason("daemon")), live).text(live) == "provider 'sim' is not in the config"
    assert shown(job(3, reason=Reason("daemon")), Live()).text() == "waiting for the daemon"  # no tick yet


def test_pv_without_jobs_read_still_gets_its_lines_reason():
    out = rc.decide([], {"sim": view([pj("x", "running", "other"), pj("y", "running", "other")], limit=2)},
                    NOW, POLICY, random.Random(1))
    assert _line(out) == Reason("slot", {"provider": "sim"})
