"""The emulators speak the providers' wire formats: the real SDKs, over real
HTTP, must parse every answer (their models are the contract)."""

import json
import time
from datetime import datetime

import httpx
import openai
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import MistralError
from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob

from ftctl.providers.base import CONCURRENCY_LIMIT_MESSAGE
from tests.conftest import FAKE_KEY, start_emulator, write_training_file


@pytest.fixture
def data(tmp_path):
    return write_training_file(tmp_path / "train.jsonl")


@pytest.fixture
def mistral(tmp_path):
    with start_emulator("mistral", tmp_path) as srv:
        yield srv, Mistral(api_key=FAKE_KEY, server_url=srv.url, timeout_ms=5000)


@pytest.fixture
def oai(tmp_path):
    with start_emulator("openai", tmp_path) as srv:
        yield srv, openai.OpenAI(api_key=FAKE_KEY, base_url=srv.url + "/v1", max_retries=0, timeout=5)


def wait_status(get, wanted, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = get()
        if job.status in wanted:
            return job
        time.sleep(0.05)
    raise AssertionError(f"still {job.status}")


def test_mistral_sdk_full_surface(mistral, data):
    srv, client = mistral
    with open(data, "rb") as fh:
        up = client.files.upload(file={"file_name": "train.jsonl", "content": fh}, purpose="fine-tune")
    assert up.num_lines == 5 and up.purpose == "fine-tune"
    assert client.files.retrieve(file_id=up.id).id == up.id
    assert [f.id for f in client.files.list().data] == [up.id]
    quote = client.fine_tuning.jobs.create(model="open-mistral-7b", training_files=[{"file_id": up.id, "weight": 1}],
                                           hyperparameters={"training_steps": 10, "learning_rate": 1e-4},
                                           suffix="qa-quote", auto_start=False)
    assert quote.metadata.cost > 0 and quote.metadata.train_tokens == 10 * quote.metadata.train_tokens_per_step
    validated = wait_status(lambda: client.fine_tuning.jobs.get(job_id=quote.id), {"VALIDATED"})
    assert validated.events[-1].data["status"] == "VALIDATED"
    started = client.fine_tuning.jobs.start(job_id=quote.id)
    assert started.status == "RUNNING"
    done = wait_status(lambda: client.fine_tuning.jobs.get(job_id=quote.id), {"SUCCESS"})
    assert done.fine_tuned_model.startswith("ft:open-mistral-7b:qa-quote:")
    listed = client.fine_tuning.jobs.list(suffix="qa-quote", created_after=datetime(2020, 1, 1))
    assert listed.total == 1 and listed.data[0].id == quote.id
    card = client.models.retrieve(model_id=done.fine_tuned_model)
    assert card.type == "fine-tuned" and card.job == quote.id
    reply = client.chat.complete(model=done.fine_tuned_model, messages=[{"role": "user", "content": "ping"}])
    assert "ping" in reply.choices[0].message.content
    other = client.fine_tuning.jobs.create(model="open-mistral-7b", training_files=[{"file_id": up.id, "weight": 1}],
                                           hyperparameters={"training_steps": 1}, suffix="qa-cancel")
    assert client.fine_tuning.jobs.cancel(job_id=other.id).status == "CANCELLED"
    assert client.files.delete(file_id=up.id).deleted is True


def test_mistral_concurrency_failure_carries_the_message_in_events(mistral, data):
    srv, client = mistral
    with open(data, "rb") as fh:
        fid = client.files.upload(file={"file_name": "t.jsonl", "content": fh}).id
    jobs = [client.fine_tuning.jobs.create(model="open-mistral-7b", training_files=[{"file_id": fid, "weight": 1}],
                                           hyperparameters={"training_steps": 1}, suffix=f"j{i}") for i in range(3)]
    third = wait_status(lambda: client.fine_tuning.jobs.get(job_id=jobs[2].id), {"FAILED_VALIDATION"})
    assert third.events[-1].data["error"] == CONCURRENCY_LIMIT_MESSAGE


@pytest.mark.parametrize("status,body", [
    (401, None), (422, {"object": "error", "message": "invalid model: open-mistral-xxl", "type": "invalid_model"}),
    (429, None), (500, None),
])
def test_mistral_failure_modes(mistral, status, body):
    srv, client = mistral
    srv.emulator.faults.add(path="/v1/fine_tuning/jobs", status=status, body=body, retry_after=3, times=1)
    with pytest.raises(MistralError) as err:
        client.fine_tuning.jobs.list()
    assert err.value.status_code == status
    if body:
        assert json.loads(err.value.body)["message"] == "invalid model: open-mistral-xxl"
    if status == 429:
        assert err.value.headers["retry-after"] == "3"
    assert client.fine_tuning.jobs.list().total == 0  # the fault was used up


def test_mistral_wrong_key_and_slow_answers(mistral):
    srv, client = mistral
    with pytest.raises(MistralError) as err:
        Mistral(api_key="another-fake-key", server_url=srv.url).fine_tuning.jobs.list()
    assert err.value.status_code == 401
    srv.emulator.faults.add(path="/v1/fine_tuning/jobs", delay=1.5, times=1)
    with pytest.raises(httpx.TimeoutException):
        Mistral(api_key=FAKE_KEY, server_url=srv.url, timeout_ms=300).fine_tuning.jobs.list()


def test_openai_sdk_full_surface_validates_strictly(oai, data):
    srv, client = oai
    with open(data, "rb") as fh:
        up = client.files.with_raw_response.create(file=("train.jsonl", fh), purpose="fine-tune")
    FileObject.model_validate(json.loads(up.text))
    fid = up.parse().id
    raw = client.fine_tuning.jobs.with_raw_response.create(model="gpt-4o-mini-2024-07-18", training_file=fid,
                                                           suffix="qa-1", metadata={"ftctl_token": "qa-1"},
                                                           method={"type": "supervised", "supervised": {
                                                               "hyperparameters": {"n_epochs": 3}}})
    job = FineTuningJob.model_validate(json.loads(raw.text))
    assert job.metadata == {"ftctl_token": "qa-1"} and job.hyperparameters.n_epochs == 3
    done = wait_status(lambda: client.fine_tuning.jobs.retrieve(job.id), {"succeeded"})
    FineTuningJob.model_validate(json.loads(client.fine_tuning.jobs.with_raw_response.retrieve(job.id).text))
    assert done.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:qa-1:")
    page = client.fine_tuning.jobs.list(metadata={"ftctl_token": "qa-1"})
    assert [j.id for j in page.data] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"ftctl_token": "nope"}).data == []
    assert client.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model
    reply = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "ping"}])
    assert "ping" in reply.choices[0].message.content
    assert client.files.delete(fid).deleted is True


def test_openai_paging_with_after(oai, data):
    srv, client = oai
    with open(data, "rb") as fh:
        fid = client.files.create(file=("t.jsonl", fh), purpose="fine-tune").id
    ids = [client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=fid).id for _ in range(5)]
    first = client.fine_tuning.jobs.list(limit=2)
    assert first.has_more and [j.id for j in first.data] == ids[::-1][:2]
    second = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in second.data] == ids[::-1][2:4]


@pytest.mark.parametrize("status,exc", [(401, openai.AuthenticationError), (422, openai.UnprocessableEntityError),
                                        (429, openai.RateLimitError), (500, openai.InternalServerError)])
def test_openai_failure_modes(oai, status, exc):
    srv, client = oai
    srv.emulator.faults.add(path="/v1/fine_tuning/jobs", status=status, retry_after=2, times=1)
    with pytest.raises(exc) as err:
        client.fine_tuning.jobs.list()
    assert err.value.status_code == status
    assert client.fine_tuning.jobs.list().data == []


def test_control_endpoints_over_http(mistral):
    srv, _ = mistral
    httpx.post(srv.url + "/_emulator/faults", json={"add": [{"path": "/v1/files", "status": 503, "times": 1}]})
    assert httpx.get(srv.url + "/v1/files", headers={"Authorization": f"Bearer {FAKE_KEY}"}).status_code == 503
    httpx.post(srv.url + "/_emulator/auth", json={"fail": True})
    assert httpx.get(srv.url + "/v1/files", headers={"Authorization": f"Bearer {FAKE_KEY}"}).status_code == 401
    state = httpx.get(srv.url + "/_emulator/state").json()
    assert state["kind"] == "mistral" and state["calls"]["GET /v1/files"] == 2
