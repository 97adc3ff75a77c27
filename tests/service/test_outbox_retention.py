"""The hooks' outbox at scale (issue 18.10): `status` counts what is owed in
SQL, never row by row, and settled rows (delivered, or given up) are
pruned after `[events] keep`, while the job's history keeps them."""

import random
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlmodel import func, select

from ftctl.controller.config import ConfigError, parse_config
from ftctl.controller.service.hooks import Dispatcher
from ftctl.models import JobEvent, OutboxEvent
from tests.service.test_hooks import _site


def _statements(store):
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def _add(store, clock, n: int, *, name: str, delivered=False, gave_up=False, error=None):
    now = clock.now
    with store.write() as s:
        for i in range(n):
            s.add(OutboxEvent(event_id=f"evt_{name}_{delivered}_{gave_up}_{error}_{i}", job_id=1, name=name,
                              payload={"job_id": 1, "big": "x" * 200}, created_at=now + timedelta(seconds=i),
                              next_at=now, delivered_at=now if delivered else None,
                              gave_up_at=now if gave_up else None, last_error=error))


def test_status_counts_what_is_owed_in_sql_without_loading_the_rows(make_config, clock):
    import ftctl

    cfg, store = _site(make_config, clock, '\n[[hooks]]\non = ["failed"]\ncommand = ["/bin/true"]\n')
    Dispatcher(store, cfg, {}, clock=clock).run_once()  # the 5 events of the site: none is asked for
    _add(store, clock, 300, name="failed")
    _add(store, clock, 7, name="failed", error="deploy.sh: exited 3")
    _add(store, clock, 40, name="failed", gave_up=True, error="old")
    _add(store, clock, 500, name="succeeded")  # no hook asks for it: not owed
    _add(store, clock, 20, name="failed", delivered=True)
    expected = {"pending": 307, "gave_up": 40, "oldest": clock.now, "last_error": "deploy.sh: exited 3"}
    with ftctl.Ftctl(cfg) as ft:  # what `status` runs: plain SQL on the read connection
        sql: list[str] = []
        ft.reads()._conn.set_trace_callback(sql.append)
        assert ft.undelivered() == expected
        assert ft._store is None  # no ORM, no Store opened for it
        conn = ft.reads()._conn
        conn.set_trace_callback(None)
        count = next(q for q in sql if "COUNT(*), MIN(created_at)" in q)
        assert "COVERING INDEX ix_outbox_owed" in str(conn.execute("EXPLAIN QUERY PLAN " + count).fetchall())
    assert any("outbox" in q for q in sql) and all("count(" in q.lower() or "limit" in q.lower()
                                                  for q in sql if "outbox" in q), sql
    seen = _statements(store)  # the daemon's count (its metrics) is SQL too
    assert store.undelivered(["failed"]) == expected
    outbox = [q for q in seen if "outbox" in q]
    assert outbox and not any("payload" in q for q in outbox), outbox  # no row is loaded whole
    store.close()


def test_settled_events_are_pruned_after_events_keep_and_the_history_stays(make_config, clock):
    cfg, store = _site(make_config, clock, '\n[events]\nkeep = "2d"\n[[hooks]]\non = ["succeeded"]\n'
                                           'command = ["/bin/false"]\nbackoff_initial = "1m"\ngive_up_after = "1h"\n')
    assert cfg.events.keep == 2 * 86400
    hooks = Dispatcher(store, cfg, {}, clock=clock, rng=random.Random(0))
    hooks.run_once()  # 4 settled (no hook asks), `succeeded` failing
    clock.advance(2 * 3600)
    hooks.run_once()  # `succeeded` given up

    def outbox() -> int:
        with store.read() as s:
            return s.exec(select(func.count()).select_from(OutboxEvent)).one()

    clock.advance(3600)
    _add(store, clock, 3, name="failed")  # still owed: never pruned, however old
    assert outbox() == 5 + 3
    clock.advance(2 * 86400 - 1800 - 3600)  # the 4 settled at the start are older than 2 days: pruned
    hooks.run_once()
    assert outbox() == 1 + 3  # the one given up 2 days ago less half an hour: kept
    clock.advance(3600 + 60)
    hooks.run_once()
    assert outbox() == 3
    with store.read() as s:
        assert s.exec(select(func.count()).select_from(JobEvent)).one() == 5  # the history keeps every event
    store.close()


def test_pruning_goes_in_bounded_batches(make_config, clock):
    cfg, store = _site(make_config, clock, "")
    _add(store, clock, 25, name="failed", delivered=True)
    _add(store, clock, 4, name="failed", gave_up=True)
    _add(store, clock, 2, name="failed")
    seen = _statements(store)
    assert store.prune_outbox(clock.now + timedelta(seconds=1), batch=10) == 29
    assert sum(q.startswith("DELETE FROM outbox") for q in seen) == 3
    assert store.undelivered()["pending"] == 2 + 5  # the 5 of the site, never settled here
    store.close()


def test_default_keep_is_seven_days_and_a_bad_one_is_one_line():
    cfg = parse_config('[providers.sim]\nkind = "simulated"\n', Path("/etc/ftctl/controller.toml"))
    assert cfg.events.keep == 7 * 86400
    with pytest.raises(ConfigError) as exc:
        parse_config('[events]\nkeep = "soon"\n', Path("/etc/ftctl/controller.toml"))
    assert "\n" not in str(exc.value) and "events.keep" in str(exc.value)
