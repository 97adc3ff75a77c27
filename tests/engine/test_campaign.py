"""Whole campaigns in process: the real store, the real simulated service,
a virtual clock shared by both. Crashes are injected around the create call."""

from collections import Counter

import pytest

from tests.conftest import reason_of

from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store
from ftctl.providers import build_provider
from ftctl.providers.base import AuthError, PermanentError, TransientError


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs."""


class Faulty:
    """Wraps a provider to fail or 'die' at chosen moments."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.plan: list[str] = []  # one entry consumed per create call
        self.list_error = None
        self.hidden_tokens: set[str] = set()  # a listing that misses these (eventual consistency)
        self.creates = 0

    def upload_file(self, path, h):
        return self.inner.upload_file(path, h)

    def create_job(self, spec):
        self.creates += 1
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "crash-before":
            raise Crash()
        if step == "reject-422":
            raise PermanentError("model 'open-mistral-7b' cannot be fine-tuned with these hyperparameters",
                                 status_code=422)
        job = self.inner.create_job(spec)
        if step == "crash-after":
            raise Crash()
        if step == "timeout-after":
            raise TransientError("read timeout")
        return job

    def list_jobs(self, created_after=None):
        if self.list_error:
            raise self.list_error
        return [j for j in self.inner.list_jobs(created_after) if j.client_token not in self.hidden_tokens]

    def find_by_token(self, token):
        return self.inner.find_by_token(token)

    def get_job(self, i):
        return self.inner.get_job(i)

    def cancel_job(self, i):
        return self.inner.cancel_job(i)

    def close(self):
        self.inner.close()


def setup(make_config, clock, **kw):
    cfg = load_config(make_config(**kw))
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    return cfg, store


def reconciler(cfg, store, clock, seed=0):
    import random
    sim = build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))
    faulty = Faulty(sim)
    return Ticker(cfg, store, {"sim": faulty}, clock=clock, rng=random.Random(seed)), faulty


def run_until_done(rec, clock, store, limit_ticks=2000, step=1.0, on_tick=None):
    for _ in range(limit_ticks):
        result = rec.tick()
        if on_tick:
            on_tick(result)
        if result.all_terminal:
            return result
        clock.advance(step)
    raise AssertionError(f"campaign did not finish: {Counter(j.state for j in store.list_jobs())}")


def sim_jobs(rec):
    return rec.providers["sim"].inner.engine.all_jobs()


def max_concurrent_running(jobs):
    """The most jobs RUNNING at one moment at the provider, from its events."""
    points = []
    for j in jobs:
        start = None
        for e in j["events"]:
            if e["data"]["status"] == "RUNNING":
                start = e["created_at"]
            elif start is not None:
                points += [(start, 1), (e["created_at"], -1)]
                start = None
        if start is not None:
            points.append((start, 1))
    cur = peak = 0
    for _, d in sorted(points, key=lambda p: (p[0], p[1])):
        cur += d
        peak = max(peak, cur)
    return peak


def test_five_agents_two_slots_all_succeed(make_config, clock):
    cfg, store = setup(make_config, clock, concurrency=2)
    rec, faulty = reconciler(cfg, store, clock)
    peak_ours = 0

    def watch(_):
        nonlocal peak_ours
        peak_ours = max(peak_ours, sum(1 for j in store.list_jobs() if j.state in ("queued", "running")))

    run_until_done(rec, clock, store, on_tick=watch)
    jobs = store.list_jobs()
    assert [j.state for j in jobs] == ["succeeded"] * 5
    assert all(j.fine_tuned_model.startswith("ft:open-mistral-7b:") for j in jobs)
    assert all(j.attempt == 1 for j in jobs)
    assert peak_ours == 2
    at_sim = sim_jobs(rec)
    assert len(at_sim) == 5 and faulty.creates == 5
    assert max_concurrent_running(at_sim) <= 2
    # the model id recorded is the one the provider produced for that job
    by_id = {j["id"]: j for j in at_sim}
    assert all(by_id[j.provider_job_id]["fine_tuned_model"] == j.fine_tuned_model for j in jobs)


def test_capacity_rejections_are_absorbed_and_the_limit_learned(make_config, clock):
    cfg, store = setup(make_config, clock, concurrency=5, max_concurrent=2)
    rec, _ = reconciler(cfg, store, clock)
    run_until_done(rec, clock, store)
    jobs = store.list_jobs()
    assert [j.state for j in jobs] == ["succeeded"] * 5
    assert all(j.attempt == 1 for j in jobs)  # capacity rejections are not attempts
    rejected = [a for j in jobs for a in store.attempts(j.id) if a.outcome == "capacity"]
    assert len(rejected) == 3 and not any(a.counted for a in rejected)
    assert store.provider_states()["sim"].learned_limit == 2
    at_sim = sim_jobs(rec)
    assert Counter(j["status"] for j in at_sim) == {"SUCCESS": 5, "FAILED_VALIDATION": 3}
    # after learning, no further rejections: exactly 3, all in the first wave
    assert max_concurrent_running(at_sim) <= 2


def test_training_failures_retry_with_backoff_then_succeed(make_config, clock):
    cfg, store = setup(make_config, clock, fail_rate=0.4, seed=11, max_attempts=8)
    rec, _ = reconciler(cfg, store, clock)
    run_until_done(rec, clock, store)
    jobs = store.list_jobs()
    assert [j.state for j in jobs] == ["succeeded"] * 5
    retried = [j for j in jobs if j.attempt > 1]
    assert retried, "seed 11 fails some jobs in training"
    for j in retried:
        backoffs = [e for e in store.events(j.id) if e.trigger == "requeue"]
        assert len(backoffs) == j.attempt - 1
        assert all(e.reason.startswith("backoff until") and "training failed" in e.reason for e in backoffs)


def test_max_attempts_exhausted_ends_failed(make_config, clock):
    cfg, store = setup(make_config, clock, agents=("qa",), fail_rate=1.0, max_attempts=3)
    rec, faulty = reconciler(cfg, store, clock)
    run_until_done(rec, clock, store)
    (job,) = store.list_jobs()
    assert job.state == "failed" and job.attempt == 3
    assert reason_of(job).startswith("failed after 3 attempts: training failed")
    assert faulty.creates == 3


@pytest.mark.parametrize("fault", ["crash-before", "crash-after", "timeout-after"])
def test_a_crash_around_the_create_call_never_creates_twice(make_config, clock, fault):
    cfg, store = setup(make_config, clock, concurrency=2)
    rec, faulty = reconciler(cfg, store, clock)
    faulty.plan = ["ok", fault]
    try:
        rec.tick()
    except Crash:
        pass  # the process "died" mid-tick
    (intent,) = [j for j in store.list_jobs() if j.state == "queued" and j.provider_job_id is None]
    assert intent.client_token
    # a new process: new reconciler, same database and same service
    rec2, faulty2 = reconciler(cfg, store, clock, seed=1)
    clock.advance(60)
    run_until_done(rec2, clock, store)
    jobs = store.list_jobs()
    assert [j.state for j in jobs] == ["succeeded"] * 5
    suffixes = Counter(j["suffix"] for j in sim_jobs(rec2))
    assert len(sim_jobs(rec2)) == 5 and set(suffixes.values()) == {1}
    recovered = store.get_job(intent.id)
    assert recovered.client_token == intent.client_token  # found or created under its own token


def test_an_intent_the_listing_misses_is_found_by_its_token_before_creating_again(make_config, clock):
    cfg, store = setup(make_config, clock, agents=("qa",))
    rec, faulty = reconciler(cfg, store, clock)
    faulty.plan = ["crash-after"]
    with pytest.raises(Crash):
        rec.tick()
    (job,) = store.list_jobs()
    rec2, faulty2 = reconciler(cfg, store, clock, seed=1)
    faulty2.hidden_tokens = {job.client_token}
    clock.advance(1)
    rec2.tick()
    bound = store.get_job(job.id)
    assert bound.provider_job_id is not None and faulty2.creates == 0
    assert store.events(job.id)[-1].trigger == "found"
    faulty2.hidden_tokens = set()
    run_until_done(rec2, clock, store)
    assert store.get_job(job.id).state == "succeeded"
    assert len(sim_jobs(rec2)) == 1


def test_auth_failure_pauses_then_resumes_by_itself(make_config, clock):
    cfg, store = setup(make_config, clock, agents=("qa", "legal"))
    rec, faulty = reconciler(cfg, store, clock)
    rec.tick()
    faulty.list_error = AuthError("401 Unauthorized: invalid api key", status_code=401)
    for _ in range(3):
        clock.advance(5)
        rec.tick()
    jobs = store.list_jobs()
    assert all(j.state in ("queued", "running") for j in jobs)
    assert all(reason_of(j) == "provider auth failing: 401 Unauthorized: invalid api key" for j in jobs)
    assert store.provider_states()["sim"].paused_why == "auth"
    faulty.list_error = None
    run_until_done(rec, clock, store)
    assert [j.state for j in store.list_jobs()] == ["succeeded"] * 2
    assert store.provider_states()["sim"].paused_why is None


def test_a_422_on_create_fails_that_job_only(make_config, clock):
    cfg, store = setup(make_config, clock, agents=("qa", "legal", "support"))
    rec, faulty = reconciler(cfg, store, clock)
    faulty.plan = ["reject-422"]
    run_until_done(rec, clock, store)
    states = {j.agent: j for j in store.list_jobs()}
    assert states["qa"].state == "failed"
    assert "cannot be fine-tuned with these hyperparameters" in reason_of(states["qa"])
    assert states["legal"].state == states["support"].state == "succeeded"


def test_transient_service_errors_do_not_stop_the_campaign(make_config, clock):
    cfg, store = setup(make_config, clock, error_rate=0.3, seed=5, concurrency=5, max_concurrent=2)
    rec, _ = reconciler(cfg, store, clock)
    run_until_done(rec, clock, store)
    assert [j.state for j in store.list_jobs()] == ["succeeded"] * 5
    assert set(Counter(j["suffix"] for j in sim_jobs(rec)).values()) == {1}


def test_training_file_changed_after_submit_fails_clearly(make_config, clock, tmp_path):
    cfg, store = setup(make_config, clock, agents=("qa",))
    (tmp_path / "site" / "data" / "qa.jsonl").write_text('{"messages": [{"role": "user", "content": "new"}]}\n')
    rec, faulty = reconciler(cfg, store, clock)
    rec.tick()
    (job,) = store.list_jobs()
    assert job.state == "failed" and reason_of(job).startswith("training file changed since submit")
    assert faulty.creates == 0


def test_upload_is_reused_for_unchanged_content(make_config, clock):
    cfg, store = setup(make_config, clock, agents=("qa",))
    rec, _ = reconciler(cfg, store, clock)
    run_until_done(rec, clock, store)
    store_submissions(store, plan_submissions(cfg, ["qa"]), force=True)
    run_until_done(rec, clock, store)
    jobs = store.list_jobs()
    assert len(jobs) == 2 and jobs[0].provider_file_id == jobs[1].provider_file_id
    assert len(rec.providers["sim"].inner.engine.list_files()) == 1


@pytest.mark.parametrize("train,step", [("3s", 1.0), ("45m", 30.0), ("3h", 120.0)])
def test_the_seed_batch_wastes_at_most_three_creates_whatever_the_job_length(make_config, clock, train, step):
    """5 agents, a provider that runs 2 at once, ftctl told 5: the first wave
    teaches the limit (3 creates refused) and nothing after it is wasted."""
    cfg, store = setup(make_config, clock, concurrency=5, max_concurrent=2, train_time=train, queue_time="10s",
                       validate_time="20s")
    rec, _ = reconciler(cfg, store, clock)
    run_until_done(rec, clock, store, limit_ticks=4000, step=step)
    jobs = sim_jobs(rec)
    wasted = [j for j in jobs if j["status"] == "FAILED_VALIDATION"]
    assert len(jobs) - 5 == len(wasted) <= 3, Counter(j["status"] for j in jobs)
    assert [j.state for j in store.list_jobs()] == ["succeeded"] * 5


def test_a_probe_finds_room_once_the_provider_allows_more(make_config, clock):
    agents = tuple(f"a{i}" for i in range(20))
    path = make_config(agents=agents, concurrency=4, max_concurrent=2, train_time="60s", queue_time="5s",
                       validate_time="5s")
    path.write_text(path.read_text().replace("[retry]\n", '[retry]\ncapacity_hold = "1m"\n'))
    cfg = load_config(path)
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    rec, faulty = reconciler(cfg, store, clock)
    engine = faulty.inner.engine
    seen_limits = []

    def on_tick(_):
        state = store.provider_states().get("sim")
        seen_limits.append(state.learned_limit if state else None)
        if len([j for j in store.list_jobs() if j.state == "succeeded"]) >= 5:
            engine.settings.limit = 3  # the provider raised its limit mid-batch

    run_until_done(rec, clock, store, limit_ticks=6000, step=10.0, on_tick=on_tick)
    from itertools import groupby
    assert 2 in seen_limits and seen_limits[-1] in (3, None), [k for k, _ in groupby(seen_limits)]
    assert [j.state for j in store.list_jobs()] == ["succeeded"] * len(agents)
