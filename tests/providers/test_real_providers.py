"""Campaigns through the real Mistral and OpenAI SDKs against the emulators:
the controller, the real provider classes, real HTTP, a real clock."""

import io
import random
import time
from collections import Counter

import pytest

from ftctl.controller.config import load_config
from ftctl.controller.service.logs import configure
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store
from tests.conftest import assert_no_key, reason_of, FAKE_KEY, KEY_ENV, run_ftctl, ftctl_env, start_emulator, write_remote_config

KINDS = ["mistral", "openai"]
CREATE = "POST /v1/fine_tuning/jobs"


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)


@pytest.fixture
def log():
    stream = io.StringIO()
    configure("debug", stream=stream, json=True)
    yield stream
    configure("warning")


class Campaign:
    def __init__(self, kind, tmp_path, *, limit=2, emulator_kw=None, **config_kw):
        self.kind = kind
        self.server = start_emulator(kind, tmp_path, limit=limit, **(emulator_kw or {}))
        self.emulator = self.server.emulator
        self.config_path = write_remote_config(tmp_path / "site", kind, self.server.url, **config_kw)
        self.config = load_config(self.config_path)
        self.store = Store(self.config.database_url)
        store_submissions(self.store, plan_submissions(self.config, [], all_agents=True))
        self.rec = Ticker(self.config, self.store, rng=random.Random(1))

    def run(self, timeout=60, until=None):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            result = self.rec.tick()
            if (until or (lambda r: r.all_terminal))(result):
                return result
            time.sleep(0.1)
        raise AssertionError(f"not done: {Counter(j.state for j in self.store.list_jobs())}")

    def jobs(self):
        return self.store.list_jobs()

    def provider_jobs(self):
        return self.emulator.engine.all_jobs()

    def close(self):
        self.rec.close()
        self.store.close()
        self.server.stop()


@pytest.fixture
def campaign(tmp_path):
    made = []

    def make(kind, **kw):
        made.append(Campaign(kind, tmp_path, **kw))
        return made[-1]
    yield make
    for c in made:
        c.close()


def tokens_at_provider(c):
    if c.kind == "mistral":
        return Counter(j["suffix"] for j in c.provider_jobs())
    return Counter((j["metadata"].get("user") or {}).get("ftctl_token") for j in c.provider_jobs())


@pytest.mark.parametrize("kind", KINDS)
def test_five_agents_through_the_real_sdk(campaign, kind):
    c = campaign(kind, concurrency=2)
    c.run()
    jobs = c.jobs()
    assert [j.state for j in jobs] == ["succeeded"] * 5
    at_provider = {j["id"]: j for j in c.provider_jobs()}
    assert all(at_provider[j.provider_job_id]["fine_tuned_model"] == j.fine_tuned_model for j in jobs)
    assert c.emulator.calls[CREATE] == 5
    assert c.emulator.calls["POST /v1/files"] == 5  # one upload per distinct training file


@pytest.mark.parametrize("kind", KINDS)
def test_campaign_survives_429_500_timeouts_and_capacity(campaign, kind):
    c = campaign(kind, concurrency=5, limit=2, timeout="1s")
    faults = c.emulator.faults
    faults.add(method="POST", path="/v1/fine_tuning/jobs", status=429, retry_after=0.3, times=2)
    faults.add(method="GET", path="/v1/fine_tuning/jobs", status=500, times=3)
    # the create goes through but the answer comes after the client gave up
    faults.add(method="POST", path="/v1/fine_tuning/jobs", delay=1.5, after=True, times=1)
    faults.add(method="POST", path="/v1/files", status=503, times=1)
    c.run(timeout=90)
    jobs = c.jobs()
    assert [j.state for j in jobs] == ["succeeded"] * 5
    per_token = tokens_at_provider(c)
    assert set(per_token.values()) == {1}, per_token  # never two jobs for one submission
    assert Counter(j["status"] for j in c.provider_jobs())["SUCCESS"] == 5
    events = [e for j in jobs for e in c.store.events(j.id)]
    reasons = " | ".join(e.reason or "" for e in events)
    assert "concurrency limit" in reasons  # capacity rejections, put back without an attempt
    assert any(e.trigger == "create-failed" and "429" in e.reason for e in events)
    assert any(e.trigger == "create-failed" and "timed out" in e.reason for e in events)
    assert all(j.attempt == 1 for j in jobs)


@pytest.mark.parametrize("kind", KINDS)
def test_401_pauses_without_failing_and_resumes(campaign, kind, tmp_path):
    c = campaign(kind, agents=("qa", "legal", "support"), concurrency=2)
    c.rec.tick()
    c.emulator.auth_failing = True
    for _ in range(4):
        time.sleep(0.2)
        c.rec.tick()
    jobs = c.jobs()
    assert not any(j.state == "failed" for j in jobs)
    assert all(reason_of(j).startswith("provider auth failing: HTTP 401") for j in jobs), [reason_of(j) for j in jobs]
    status = run_ftctl("status", config=c.config_path, env=ftctl_env())
    assert status.returncode == 0 and "provider auth failing" in status.stdout
    c.emulator.auth_failing = False
    c.run()
    assert [j.state for j in c.jobs()] == ["succeeded"] * 3
    assert c.store.provider_states()[kind].paused_why is None


@pytest.mark.parametrize("kind", KINDS)
def test_422_on_create_fails_only_that_job(campaign, kind):
    c = campaign(kind, agents=("qa", "legal", "support"), concurrency=1)
    body = ({"object": "error", "message": "Invalid model: this model cannot be fine-tuned", "type": "invalid_model"}
            if kind == "mistral" else
            {"error": {"message": "Invalid model: this model cannot be fine-tuned", "type": "invalid_request_error",
                       "param": "model", "code": "model_not_available"}})
    c.emulator.faults.add(method="POST", path="/v1/fine_tuning/jobs", status=422, body=body, times=1)
    c.run()
    by_agent = {j.agent: j for j in c.jobs()}
    assert by_agent["qa"].state == "failed"
    assert reason_of(by_agent["qa"]) == "provider refused the job: HTTP 422: Invalid model: this model cannot be fine-tuned"
    assert by_agent["legal"].state == by_agent["support"].state == "succeeded"


@pytest.mark.parametrize("kind", KINDS)
def test_training_failures_are_retried_and_bad_data_fails(campaign, kind, tmp_path):
    c = campaign(kind, agents=("qa", "legal", "support", "analyst"), concurrency=4,
                 emulator_kw={"fail_rate": 0.5, "seed": 4}, max_attempts=8)
    # data our checks accept but the provider refuses
    c.emulator.engine.settings.reject_marker = "analyst"
    c.run(timeout=90)
    by_agent = {j.agent: j for j in c.jobs()}
    assert by_agent["analyst"].state == "failed"
    assert reason_of(by_agent["analyst"]).startswith("provider rejected the data: ")
    assert "line 1: the provider refused this example" in reason_of(by_agent["analyst"])
    others = [by_agent[a] for a in ("qa", "legal", "support")]
    assert all(j.state == "succeeded" for j in others)
    assert any(j.attempt > 1 for j in others)  # seed 4 fails some in training


@pytest.mark.parametrize("kind", KINDS)
def test_the_key_never_leaks(campaign, kind, log, tmp_path):
    c = campaign(kind, agents=("qa", "legal"), concurrency=2)
    # a provider that echoes the key back in an error: whole, or a prefix
    # (and OpenAI's emulator, refusing a key, its first 8 and last 4 characters)
    echo = (f"invalid api key {FAKE_KEY}; bad key {FAKE_KEY[:10]}..." if kind == "mistral" else None)
    body = ({"object": "error", "message": echo, "type": "auth"} if kind == "mistral" else
            {"error": {"message": f"Incorrect API key provided: {FAKE_KEY}", "type": "invalid_request_error",
                       "code": "invalid_api_key", "param": None}})
    c.emulator.faults.add(method="GET", path="/v1/fine_tuning/jobs", status=401, body=body, times=2)
    c.rec.tick()
    paused = c.jobs()
    assert all("***" in reason_of(j) for j in paused)
    for j in paused:
        assert_no_key(reason_of(j))
    if kind == "openai":
        c.emulator.auth_failing = True
        c.rec.tick()
        c.emulator.auth_failing = False
        reasons = [reason_of(j) for j in c.jobs()]
        assert all("Incorrect API key provided: ***" in r for r in reasons), reasons
    c.run()
    assert [j.state for j in c.jobs()] == ["succeeded"] * 2
    outputs = [run_ftctl(*args, config=c.config_path, env=ftctl_env(**{KEY_ENV: FAKE_KEY}))
               for args in (["status"], ["status", "--json"], ["show", "1", "--json"], ["models", "--format", "env"],
                            ["tick"], ["show", "2"])]
    for p in outputs:
        assert_no_key(p.stdout + p.stderr)
    assert outputs[0].returncode == 0
    db_bytes = b"".join(f.read_bytes() for f in (tmp_path / "site").glob("ftctl.db*"))
    assert_no_key(db_bytes)
    text = log.getvalue()
    assert "provider observation failed" in text and "***" in text
    assert_no_key(text)


def test_missing_key_pauses_with_a_clear_reason(campaign, monkeypatch):
    c = campaign("mistral", agents=("qa",))
    monkeypatch.delenv(KEY_ENV)
    c.rec.close()
    c.rec.tick()
    (job,) = c.jobs()
    assert job.state == "prepared"
    assert reason_of(job) == f"provider unavailable: providers.mistral.api_key_env: ${KEY_ENV} is not set"


def test_retry_after_on_the_listing_is_honoured(campaign):
    c = campaign("mistral", agents=("qa",))
    c.emulator.faults.add(method="GET", path="/v1/fine_tuning/jobs", status=429, retry_after=1.5, times=1)
    c.rec.tick()
    (job,) = c.jobs()
    assert reason_of(job).startswith("provider unreachable: HTTP 429")
    before = c.emulator.calls["GET /v1/fine_tuning/jobs"]
    c.rec.tick()
    assert c.emulator.calls["GET /v1/fine_tuning/jobs"] == before  # not asked again before Retry-After
    time.sleep(1.6)
    c.rec.tick()
    assert c.emulator.calls["GET /v1/fine_tuning/jobs"] > before
    c.run()
    assert c.jobs()[0].state == "succeeded"
