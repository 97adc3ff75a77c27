"""Training logs: read only for running jobs (and once after they finish),
at a bounded rate, stored once per point, answered from the database."""

import random

import ftctl
from ftctl.controller.config import load_config
from ftctl.controller.engine.trainlogs import LogFetcher
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store
from ftctl.providers import build_provider


class Counting:
    def __init__(self, inner):
        self.inner, self.name, self.reads = inner, inner.name, []

    def training_log(self, job_id):
        self.reads.append(job_id)
        return self.inner.training_log(job_id)

    def close(self):
        self.inner.close()


def test_logs_are_read_for_running_jobs_at_a_bounded_rate_and_stored_once(make_config, clock):
    cfg = load_config(make_config(agents=("qa", "legal", "support"), concurrency=3, max_concurrent=3,
                                  queue_time="1s", validate_time="1s", train_time="20s",
                                  extra='\n[logs]\ninterval = "5s"\nbatch = 2\n'))
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    rec = Ticker(cfg, store, {"sim": build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))},
                 clock=clock, rng=random.Random(0))
    reader = Counting(build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch)))
    logs = LogFetcher(cfg, store, clock=clock, providers={"sim": reader})
    assert logs.run_once() == 0 and reader.reads == []  # nothing runs yet: nothing is asked
    for _ in range(4):
        rec.tick()
        clock.advance(1)
    assert {j.state for j in store.list_jobs()} == {"running"}
    clock.advance(6)  # 8 of 20 s trained: 4 of 10 steps
    assert logs.run_once() > 0 and len(reader.reads) == 2  # at most `batch` jobs a pass
    assert logs.run_once() >= 0 and len(reader.reads) == 3  # the third, then nobody before `interval`
    assert logs.run_once() == 0 and len(reader.reads) == 3
    clock.advance(5)
    stored = logs.run_once()
    assert len(reader.reads) == 5 and stored > 0  # read again: only the new points were stored
    with ftctl.Ftctl(cfg) as ft:
        log = ft.logs(1)
        steps = [p["step"] for p in log["points"] if p["kind"] in ("metric", "checkpoint")]
        assert steps == sorted(set(steps)) and 4 <= len(steps) < 10
        assert not log["done"]
    for _ in range(30):  # to the end: one last read after it succeeded, then none
        rec.tick()
        logs.run_once()
        clock.advance(5)
    reads = len(reader.reads)
    clock.advance(60)
    logs.run_once()
    assert len(reader.reads) == reads
    with ftctl.Ftctl(cfg) as ft:
        log, shown = ft.logs(1), ft.show(1)
    assert log["done"] and [p["step"] for p in log["points"] if p["step"]] == list(range(1, 11))
    curve = shown["training"]["train_loss"]
    assert [s for s, _ in curve] == list(range(1, 11)) and curve[-1][1] < curve[0][1]
    assert [s for s, _ in shown["training"]["valid_loss"]] == [2, 4, 6, 8, 10]
    logs.close()
    rec.close()
    store.close()


def test_a_paused_provider_or_one_without_logs_is_not_asked(make_config, clock):
    cfg = load_config(make_config(agents=("qa",), train_time="1h"))
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    rec = Ticker(cfg, store, {"sim": build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))},
                 clock=clock)
    for _ in range(4):
        rec.tick()
        clock.advance(1)
    from ftctl.models import ProviderState

    store.save_provider_state(ProviderState(name="sim", paused_why="auth", paused_message="401"))
    reader = Counting(build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch)))
    logs = LogFetcher(cfg, store, clock=clock, providers={"sim": reader})
    assert logs.run_once() == 0 and reader.reads == []
    with ftctl.Ftctl(cfg) as ft:
        assert ft.logs(1)["note"] == "provider paused"
    logs.close()
    rec.close()
    store.close()


def test_a_followed_job_is_read_every_few_seconds_whatever_the_interval(make_config, clock):
    """18.5: `logs --follow` on a short job showed nothing, the log being read
    every [logs] interval. A followed job is read every FOLLOWED_EVERY
    seconds while it trains, once more after it finished, then never."""
    from ftctl.controller.engine.trainlogs import FOLLOWED_EVERY

    cfg = load_config(make_config(agents=("qa", "legal"), concurrency=2, max_concurrent=2, queue_time="1s",
                                  validate_time="1s", train_time="10s", extra='\n[logs]\ninterval = "10m"\n'))
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    rec = Ticker(cfg, store, {"sim": build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))},
                 clock=clock, rng=random.Random(0))
    reader = Counting(build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch)))
    logs = LogFetcher(cfg, store, clock=clock, providers={"sim": reader})
    for _ in range(4):
        rec.tick()
        clock.advance(1)
    assert logs.run_once() >= 0 and len(reader.reads) == 2  # the interval's first read of each
    qa = store.get_job(1).provider_job_id
    assert logs.run_once() == 0 and logs.run_followed([1]) == 0 and len(reader.reads) == 2  # just read
    steps = []
    while store.get_job(1).state != "succeeded":
        clock.advance(FOLLOWED_EVERY)
        rec.tick()
        logs.run_once()  # nobody else is due before 10 minutes
        logs.run_followed([1])
        steps.append(len([p for p in store.log_points(1) if p.step]))
    assert set(reader.reads[2:]) == {qa}  # legal, not followed, waits for its interval
    assert steps[0] < steps[-2] and steps[-1] == 10  # read as it trained, and its last read after it finished
    reads = len(reader.reads)
    clock.advance(FOLLOWED_EVERY * 3)
    assert logs.run_followed([1]) == 0 and len(reader.reads) == reads  # done: never again
    logs.close()
    rec.close()
    store.close()
