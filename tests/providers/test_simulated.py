"""The simulated service: its own state file, time-driven, Mistral-like failures."""

import re

import pytest

from ftctl.providers.base import CONCURRENCY_LIMIT_MESSAGE, JobSpec, TransientError
from ftctl.providers.simulated.engine import EngineSettings, ServiceError, SimEngine
from ftctl.providers.simulated.provider import SimulatedProvider
from tests.conftest import write_training_file


@pytest.fixture
def engine(tmp_path, clock):
    return SimEngine(tmp_path / "sim.db", EngineSettings(limit=2, queue_time=1, validate_time=2, train_time=10),
                     clock=clock.epoch)


def _file(engine, tmp_path):
    return engine.upload_file("d.jsonl", write_training_file(tmp_path / "d.jsonl").read_bytes())["id"]


def test_job_moves_through_its_states_over_time(engine, tmp_path, clock):
    fid = _file(engine, tmp_path)
    job = engine.create_job(model="open-mistral-7b", training_files=[fid], suffix="qa-1234")
    seen = []
    for _ in range(16):
        seen.append(engine.get_job(job["id"])["status"])
        clock.advance(1)
    assert seen[0] == "QUEUED"
    assert seen[1] == "VALIDATING"
    assert seen[3] == "RUNNING"
    assert seen[-1] == "SUCCESS"
    final = engine.get_job(job["id"])
    assert re.fullmatch(r"ft:open-mistral-7b:qa-1234:\d{8}:[0-9a-f]{8}", final["fine_tuned_model"])
    assert [e["data"]["status"] for e in final["events"]] == ["QUEUED", "VALIDATING", "RUNNING", "SUCCESS"]


def test_over_the_limit_jobs_are_accepted_then_failed_like_mistral(engine, tmp_path, clock):
    fid = _file(engine, tmp_path)
    ids = [engine.create_job(model="m", training_files=[fid], suffix=f"j{i}")["id"] for i in range(5)]
    clock.advance(3.5)
    statuses = [engine.get_job(i)["status"] for i in ids]
    assert statuses == ["RUNNING", "RUNNING", "FAILED_VALIDATION", "FAILED_VALIDATION", "FAILED_VALIDATION"]
    assert engine.get_job(ids[4])["message"] == CONCURRENCY_LIMIT_MESSAGE


def test_state_survives_a_new_engine_on_the_same_file(engine, tmp_path, clock):
    fid = _file(engine, tmp_path)
    jid = engine.create_job(model="m", training_files=[fid], suffix="keep")["id"]
    engine.close()
    again = SimEngine(engine.path, engine.settings, clock=clock.epoch)
    clock.advance(20)
    assert again.get_job(jid)["status"] == "SUCCESS"
    assert [j["suffix"] for j in again.all_jobs()] == ["keep"]


def test_seeded_training_failures_are_deterministic(tmp_path, clock):
    def run(seed, where):
        eng = SimEngine(tmp_path / where, EngineSettings(limit=50, queue_time=0, validate_time=0, train_time=1,
                                                         fail_rate=0.3, seed=seed), clock=clock.epoch)
        fid = eng.upload_file("d", b'{"messages": [{"role": "user", "content": "x"}]}\n')["id"]
        ids = [eng.create_job(model="m", training_files=[fid])["id"] for _ in range(40)]
        clock.advance(5)
        return [eng.get_job(i)["status"] for i in ids]

    a, b = run(7, "a.db"), run(7, "b.db")
    assert a == b
    assert 3 <= a.count("FAILED") <= 25 and "SUCCESS" in a


def test_transient_errors_at_the_configured_rate(tmp_path, clock):
    eng = SimEngine(tmp_path / "s.db", EngineSettings(error_rate=0.5, seed=1), clock=clock.epoch)
    errors = 0
    for _ in range(200):
        try:
            eng.list_jobs()
        except ServiceError as exc:
            assert exc.status_code == 503
            errors += 1
    assert 60 <= errors <= 140


def test_bad_data_fails_validation_with_the_line(engine, clock):
    fid = engine.upload_file("bad.jsonl", b'{"messages": [{"role": "user", "content": "x"}]}\nnot json\n')["id"]
    jid = engine.create_job(model="m", training_files=[fid])["id"]
    clock.advance(4)
    job = engine.get_job(jid)
    assert job["status"] == "FAILED_VALIDATION"
    assert "line 2" in job["message"]


def test_listing_pages_and_filters(engine, tmp_path, clock):
    fid = _file(engine, tmp_path)
    for i in range(7):
        engine.create_job(model="m", training_files=[fid], suffix=f"s{i}")
        clock.advance(1)
    page0, total = engine.list_jobs(page=0, page_size=3)
    page2, _ = engine.list_jobs(page=2, page_size=3)
    assert total == 7 and len(page0) == 3 and len(page2) == 1
    assert [j["suffix"] for j in page0] == ["s6", "s5", "s4"]  # newest first
    assert [j["suffix"] for j in engine.list_jobs(suffix="s3")[0]] == ["s3"]


def test_provider_adapter_classifies_and_pages(tmp_path, clock):
    p = SimulatedProvider("sim", tmp_path / "s.db", EngineSettings(limit=1, queue_time=0, validate_time=1,
                                                                   train_time=5), clock=clock.epoch)
    f = write_training_file(tmp_path / "d.jsonl")
    fid = p.upload_file(f, "hash")
    a = p.create_job(JobSpec("qa", "m", ((fid, 1.0),), {}, "qa-1"))
    p.create_job(JobSpec("qa", "m", ((fid, 1.0),), {}, "qa-2"))
    assert (a.status, a.client_token) == ("queued", "qa-1")
    clock.advance(2)
    got = {j.client_token: j for j in p.list_jobs()}
    assert got["qa-1"].status == "running"
    assert got["qa-2"].status == "failed" and got["qa-2"].failure == "capacity"
    p.engine.settings.error_rate = 1.0
    with pytest.raises(TransientError):
        p.list_jobs()
