"""`[history]` (issue 18.11): a finished job's training log is kept whole
for `keep_logs_for`, then thinned to its events, its checkpoints and
`keep_points` metric points, or dropped; the job row and its transitions are
kept for ever. On a virtual clock, through the Ticker and the log reader."""

import random

import pytest
from sqlmodel import func, select

import ftctl
from ftctl.controller.config import ConfigError, load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.engine.trainlogs import LogFetcher
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.controller.service.retention import Retention
from ftctl.models import JobEvent, LogCursor, Store
from ftctl.providers import build_provider

DAY = 86400


def _campaign(make_config, clock, history: str):
    """qa and legal succeeded (their logs read to the end), support running."""
    cfg = load_config(make_config(agents=("qa", "legal", "support"), concurrency=3, max_concurrent=3,
                                  queue_time="1s", validate_time="1s", train_time="20s",
                                  extra=f'\n[logs]\ninterval = "5s"\nbatch = 10\n[history]\n{history}\n'))
    store = Store(cfg.database_url)
    plans = plan_submissions(cfg, [], all_agents=True)
    store_submissions(store, [p for p in plans if p.agent != "support"])
    sim = build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))
    rec = Ticker(cfg, store, {"sim": sim}, clock=clock, rng=random.Random(0))
    logs = LogFetcher(cfg, store, clock=clock,
                      providers={"sim": build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))})
    for _ in range(12):
        rec.tick()
        logs.run_once()
        clock.advance(5)
    store_submissions(store, [p for p in plans if p.agent == "support"])
    for _ in range(4):
        rec.tick()
        clock.advance(3)
    logs.run_once()
    assert [j.state for j in store.list_jobs()] == ["succeeded", "succeeded", "running"]
    logs.close()
    rec.close()
    return cfg, store


def _points(cfg, job_id):
    with ftctl.Ftctl(cfg) as ft:
        return [(p["kind"], p["step"]) for p in ft.logs(job_id)["points"]]


def _history(store):
    with store.read() as s:
        return s.exec(select(func.count()).select_from(JobEvent)).one()


def test_a_finished_jobs_log_is_thinned_after_keep_logs_for_and_its_history_stays(make_config, clock):
    cfg, store = _campaign(make_config, clock, 'keep_logs_for = "30d"\nkeep_points = 3')
    whole = _points(cfg, 1)
    assert [s for k, s in whole if k == "metric"] == [1, 3, 5, 7, 9]
    assert [s for k, s in whole if k == "checkpoint"] == [2, 4, 6, 8, 10]
    running, events, shown = _points(cfg, 3), _history(store), ftctl.Ftctl(cfg).show(1)
    retention = Retention(cfg, store, clock=clock)
    clock.advance(29 * DAY)
    assert retention.run_once() == (0, 0) and _points(cfg, 1) == whole  # not yet
    clock.advance(2 * DAY)
    assert retention.run_once(limit=1) == (1, 2)  # a bounded batch: one log this pass
    assert retention.run_once() == (1, 2)
    assert retention.run_once() == (0, 0)  # thinned once: never looked at again
    for job in (1, 2):
        thinned = _points(cfg, job)
        assert [s for k, s in thinned if k == "metric"] == [1, 5, 9]  # the first, the last, evenly between
        assert [p for p in thinned if p[0] != "metric"] == [p for p in whole if p[0] != "metric"]
    assert _points(cfg, 3) == running  # a job still running keeps all of its log
    assert _history(store) == events  # the transitions are kept for ever
    with ftctl.Ftctl(cfg) as ft:
        after = ft.show(1)
    assert {k: after[k] for k in ("state", "fine_tuned_model", "events", "attempts")} == \
        {k: shown[k] for k in ("state", "fine_tuned_model", "events", "attempts")}
    with store.read() as s:
        assert all(c.final and c.thinned_at == clock.now for c in s.exec(select(LogCursor))
                   if c.job_id in (1, 2))
    store.close()


def test_keep_points_0_drops_the_whole_log(make_config, clock):
    cfg, store = _campaign(make_config, clock, 'keep_logs_for = "2d"\nkeep_points = 0')
    n = len(_points(cfg, 1))
    clock.advance(2 * DAY + 60)
    assert Retention(cfg, store, clock=clock).run_once() == (2, 2 * n)
    with ftctl.Ftctl(cfg) as ft:
        log = ft.logs(1)
    assert log["points"] == [] and log["done"] and _points(cfg, 3)
    store.close()


def test_history_defaults_and_bad_values(make_config):
    cfg = load_config(make_config(agents=("qa",)))
    assert cfg.history.keep_logs_for == 30 * DAY and cfg.history.keep_points == 20
    for bad, key in (('keep_logs_for = "1h"', "history.keep_logs_for"), ("keep_points = -1", "history.keep_points"),
                     ("keep = 3", "history.keep")):
        with pytest.raises(ConfigError) as exc:
            load_config(make_config(agents=("qa",), extra=f"\n[history]\n{bad}\n"))
        assert "\n" not in str(exc.value) and key in str(exc.value)
