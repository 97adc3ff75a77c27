"""Observing only what can still change (issue 13): the listing goes back to
the oldest job that can still change, failure details are read for our own
jobs only, and the raw listing reads as the SDK's parsed one does."""

import random
import time
from datetime import timedelta

import pytest

from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import LISTING_MARGIN, Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store
from tests.conftest import FAKE_KEY, KEY_ENV, start_emulator, write_remote_config

LIST, DETAIL = "GET /v1/fine_tuning/jobs", "GET /v1/fine_tuning/jobs/{job_id}"
SLACK = timedelta(seconds=10)
EXAMPLE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)


def history(engine, n, *, status, age_days, message=None, prefix="other"):
    """n jobs of someone else's (suffix `prefix-i`), `age_days` old, in `status`."""
    file_id = engine.upload_file("theirs.jsonl", EXAMPLE)["id"]
    ids = [engine.create_job(model="open-mistral-7b", training_files=[file_id], suffix=f"{prefix}-{i}")["id"]
           for i in range(n)]
    at = time.time() - age_days * 86400
    with engine._tx() as db:
        for i, job_id in enumerate(ids):
            db.execute("UPDATE jobs SET status = ?, created_at = ?, phase_at = ?, message = ? WHERE id = ?",
                       (status, at + i, time.time(), message, job_id))
    return ids


class Site:
    def __init__(self, tmp_path, **emulator_kw):
        self.server = start_emulator("mistral", tmp_path, **emulator_kw)
        self.emulator = self.server.emulator
        self.config = load_config(write_remote_config(tmp_path / "site", "mistral", self.server.url, agents=("qa",),
                                                      concurrency=3, max_attempts=1))
        self.store = Store(self.config.database_url)
        self.ticker = Ticker(self.config, self.store, rng=random.Random(0))
        self.asked: list[tuple] = []  # (created_after, jobs listed) of each listing
        provider = self.ticker.provider("mistral")
        listing = provider.list_jobs

        def spy(created_after=None):
            got = listing(created_after=created_after)
            self.asked.append((created_after, got))
            return got
        provider.list_jobs = spy

    def submit(self):
        store_submissions(self.store, plan_submissions(self.config, [], all_agents=True))

    def close(self):
        self.ticker.close()
        self.store.close()
        self.server.stop()


@pytest.fixture
def site(tmp_path):
    made = []

    def make(**kw):
        made.append(Site(tmp_path, **kw))
        return made[-1]
    yield make
    for s in made:
        s.close()


def test_the_listing_stops_at_the_oldest_job_in_flight(site):
    s = site(queue_time=0.05, validate_time=0.05, train_time=3600)
    history(s.emulator.engine, 150, status="SUCCESS", age_days=2)
    s.submit()
    s.ticker.tick()  # a first listing knows nothing yet: it reads back LISTING_WINDOW, then creates ours
    assert len(s.asked[0][1]) == 150
    time.sleep(0.3)
    s.ticker.tick()
    (job,) = s.store.list_jobs()
    assert job.state == "running"
    since, listed = s.asked[-1]
    assert since >= job.intent_at - LISTING_MARGIN - SLACK  # (or the previous listing's time, if older)
    assert [pj.client_token for pj in listed] == [job.client_token]  # the 150 finished ones are not read again


def test_an_older_active_job_of_someone_else_still_holds_its_slot(site):
    s = site(queue_time=0.05, validate_time=0.05, train_time=3600, limit=10)
    (theirs,) = history(s.emulator.engine, 1, status="RUNNING", age_days=3)
    history(s.emulator.engine, 120, status="SUCCESS", age_days=2)
    s.submit()
    s.ticker.tick()
    time.sleep(0.3)
    result = s.ticker.tick()
    assert result.slots["mistral"].used == 2  # ours and theirs, three days older than ours
    assert theirs in {pj.id for pj in s.asked[-1][1]}
    with s.emulator.engine._tx() as db:
        db.execute("UPDATE jobs SET status = 'SUCCESS' WHERE id = ?", (theirs,))
    assert s.ticker.tick().slots["mistral"].used == 1  # seen finished: the next listing may stop at ours
    s.ticker.tick()
    (job,) = s.store.list_jobs()
    assert s.asked[-1][0] >= job.intent_at - LISTING_MARGIN - SLACK
    assert len(s.asked[-1][1]) == 1


def test_failure_details_are_read_for_our_own_failing_job_only_and_once(site):
    s = site(queue_time=0.05, validate_time=0.05, train_time=0.2, fail_rate=1.0)
    history(s.emulator.engine, 40, status="FAILED", age_days=1, message="their training failed")
    s.submit()
    for _ in range(40):
        s.ticker.tick()
        if s.store.list_jobs()[0].state == "failed":
            break
        time.sleep(0.1)
    (job,) = s.store.list_jobs()
    assert job.state == "failed" and "the worker running this job was lost" in job.last_error
    for _ in range(3):
        s.ticker.tick()
    assert s.emulator.calls[DETAIL] == 1  # ours, once; the 40 others' never


@pytest.mark.parametrize("refuse", [False, True], ids=["shorter pages", "size refused"])
def test_the_listing_follows_a_service_that_pages_smaller(tmp_path, refuse):
    from ftctl.providers.mistral import MistralProvider

    server = start_emulator("mistral", tmp_path, train_time=3600)
    try:
        server.emulator.max_page_size, server.emulator.refuse_big_pages = 100, refuse
        history(server.emulator.engine, 250, status="SUCCESS", age_days=1)
        p = MistralProvider("mistral", FAKE_KEY, base_url=server.url)
        got = p.list_jobs()
        assert len({j.id for j in got}) == 250
        assert server.emulator.calls[LIST] == 3 + refuse
        assert len(p.list_jobs()) == 250 and server.emulator.calls[LIST] == 6 + refuse  # the size is remembered
        p.close()
    finally:
        server.stop()


def _fields(pj):
    return (pj.id, pj.status, pj.raw_status, pj.client_token, pj.model, pj.fine_tuned_model, pj.created_at,
            pj.trained_tokens, pj.cost)


@pytest.mark.parametrize("kind", ["mistral", "openai", "together"])
def test_the_raw_listing_reads_as_the_sdk_parses_it(tmp_path, kind):
    """The listing skips the SDK's model parsing, not its client: the same
    jobs, field for field; a failed job only comes without its details."""
    from ftctl.providers.base import JobSpec
    from ftctl.providers.registry import kind as kind_of
    from ftctl.providers.kind import BuildEnv

    server = start_emulator(kind, tmp_path, limit=10, queue_time=0.05, validate_time=0.05, train_time=0.2,
                            fail_rate=0.5)
    config = load_config(write_remote_config(tmp_path / "site", kind, server.url, agents=("qa",)))
    p = kind_of(kind).build(kind, config.providers[kind], BuildEnv(state_dir=tmp_path))
    try:
        file_id = p.upload_file(tmp_path / "site" / "data" / "qa.jsonl", "sha")
        hp = {"mistral": {"training_steps": 2}, "openai": {"epochs": 1}, "together": {"epochs": 1}}[kind]
        for i in range(6):
            p.create_job(JobSpec("qa", {"mistral": "open-mistral-7b", "openai": "gpt-4o-mini-2024-07-18",
                                        "together": "mistralai/Mistral-7B-Instruct-v0.2"}[kind],
                                 ((file_id, 1.0),), hp, f"qa-{i}"))
        time.sleep(0.8)
        raw = p.list_jobs()
        if kind == "mistral":
            parsed = [p._to_job(j) for j in p.client.fine_tuning.jobs.list(page_size=100).data]
        elif kind == "openai":
            parsed = [p._to_job(j) for j in p.client.fine_tuning.jobs.list(limit=100).data]
        else:
            parsed = sorted((p._to_job(j) for j in p.client.fine_tuning.list().data),
                            key=lambda j: j.created_at, reverse=True)
        assert [_fields(j) for j in raw] == [_fields(j) for j in parsed]
        assert {j.status for j in raw} >= {"succeeded", "failed"}
        for thin, full in zip(raw, parsed):
            if thin.detailed:
                assert (thin.failure, thin.message) == (full.failure, full.message)
            else:
                assert thin.status == "failed" and p.get_job(thin.id).failure == full.failure
    finally:
        p.close()
        server.stop()


def test_a_page_orjson_refuses_is_still_read_and_a_listed_job_can_be_logged():
    """A lone surrogate escape in one job's message (a server that cut a
    string in half) must not make the whole listing unreadable; and a listed
    job, a NamedTuple, goes through the logs' key masking whole."""
    from ftctl.providers.base import ProviderJob, parse_json
    from ftctl.providers.keys import redact

    body = b'{"data": [{"id": "j1", "message": "cut \\ud83d"}], "total": 1}'
    assert parse_json(body)["data"][0]["id"] == "j1"
    assert parse_json(b'{"data": []}') == {"data": []}
    job = ProviderJob("j1", "running", "RUNNING", client_token="qa-1")
    assert redact({"job": job})["job"] == job
