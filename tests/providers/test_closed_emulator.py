"""The OpenAI emulator closes mid-campaign as OpenAI's self-serve
fine-tuning did (issue 20.1): creates are refused with a 403 that says
fine-tuning is not available, which the client raises as `provider closed`,
while listings and reads go on."""

from __future__ import annotations

from ftctl.providers.base import JobSpec, ProviderClosed
from ftctl.providers.openai import OpenAISection
from ftctl.providers.registry import kind
from tests.conftest import FAKE_KEY, KEY_ENV, start_emulator, write_training_file


def test_a_closed_openai_emulator_refuses_creates_as_provider_closed(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    data = write_training_file(tmp_path / "qa.jsonl")
    with start_emulator("openai", tmp_path) as srv:
        section = OpenAISection(kind="openai", base_url=srv.url + "/v1", api_key_env=KEY_ENV, timeout=5)
        client = kind("openai").build("openai", section)
        try:
            file_id = client.upload_file(data, "h")
            spec = JobSpec(agent="qa", model="gpt-4o-mini-2024-07-18", training_files=((file_id, 1.0),),
                           hyperparameters={}, client_token="qa-1")
            first = client.create_job(spec)
            srv.emulator.close_fine_tuning()
            try:
                client.create_job(JobSpec(**{**spec.__dict__, "client_token": "qa-2"}))
            except ProviderClosed as exc:
                assert exc.status_code == 403 and "not available" in exc.message
            else:
                raise AssertionError("a closed emulator took a create")
            # what was there stays readable: the listing and the job itself
            assert [j.id for j in client.list_jobs()] == [first.id]
            assert client.get_job(first.id).id == first.id
            assert len(srv.emulator.engine.all_jobs()) == 1
        finally:
            client.close()


def test_the_emulator_closes_and_opens_over_its_control_endpoint(tmp_path):
    import httpx

    with start_emulator("openai", tmp_path) as srv:
        headers = {"Authorization": f"Bearer {FAKE_KEY}"}
        body = {"model": "gpt-4o-mini", "training_file": "file-x"}
        assert httpx.post(srv.url + "/_emulator/close", json={}).json()["closed"]
        refused = httpx.post(srv.url + "/v1/fine_tuning/jobs", json=body, headers=headers)
        assert refused.status_code == 403 and "not available" in refused.json()["error"]["message"]
        assert httpx.post(srv.url + "/_emulator/close", json={"open": True}).json() == {"closed": None}
        assert httpx.post(srv.url + "/v1/fine_tuning/jobs", json=body, headers=headers).status_code != 403
