"""What the providers add for events: training logs through the real SDKs,
webhooks verified by the official openai SDK, and emulators that deliver
signed webhooks."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ftctl.controller.config import load_config
from ftctl.providers import build_provider
from ftctl.providers.base import JobSpec, WebhookRejected
from ftctl.providers.openai import KIND as OPENAI
from ftctl.providers.signing import headers, new_secret
from tests.conftest import FAKE_KEY, KEY_ENV, start_emulator, write_remote_config

MODEL = {"mistral": "open-mistral-7b", "openai": "gpt-4o-mini-2024-07-18"}
HP = {"mistral": {"training_steps": 10}, "openai": {"epochs": 1}}


@pytest.mark.parametrize("kind", ["mistral", "openai"])
def test_a_training_log_has_the_loss_by_step_and_comes_again_with_the_same_keys(tmp_path, monkeypatch, kind):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with start_emulator(kind, tmp_path, train_time=0.3) as srv:
        cfg = load_config(write_remote_config(tmp_path / "site", kind, srv.url, agents=("qa",)))
        provider = build_provider(kind, cfg.providers[kind])
        try:
            file_id = provider.upload_file(tmp_path / "site" / "data" / "qa.jsonl", "h")
            job = provider.create_job(JobSpec("qa", MODEL[kind], ((file_id, 1.0),), HP[kind], "qa-1"))
            end = time.monotonic() + 20
            while provider.get_job(job.id).status != "succeeded" and time.monotonic() < end:
                time.sleep(0.05)
            first = provider.training_log(job.id)
            again = provider.training_log(job.id)
        finally:
            provider.close()
    checkpoints = [e for e in first if e.kind == "checkpoint"]
    assert len(checkpoints) == 5 and all({"train_loss", "valid_loss"} <= set(c.metrics) for c in checkpoints)
    assert sorted(c.step for c in checkpoints) == [2, 4, 6, 8, 10]
    assert any(e.kind == "event" for e in first)
    losses = {e.step: e.metrics["train_loss"] for e in first if e.metrics and "train_loss" in e.metrics}
    assert losses[max(losses)] < losses[min(losses)]  # it learned something
    if kind == "openai":  # a metrics event a step, read once: the next read brings only what is new
        assert sorted(e.step for e in first if e.kind == "metric") == list(range(1, 11))
        assert [e.kind for e in again] == ["checkpoint"] * 5
    else:  # Mistral answers the whole job every time, with the same keys
        assert sorted(e.key for e in again) == sorted(e.key for e in first)
    assert len({e.key for e in first}) == len(first)


def test_the_openai_sdk_verifies_a_signed_webhook_and_refuses_the_rest():
    secret = new_secret()
    body = json.dumps({"id": "evt_1", "object": "event", "created_at": int(time.time()),
                       "type": "fine_tuning.job.succeeded", "data": {"id": "ftjob-1"}}).encode()
    good = headers("wh_1", body, secret)
    event = OPENAI.verify_webhook(body, good, secret)
    assert (event.id, event.type, event.job_id) == ("wh_1", "fine_tuning.job.succeeded", "ftjob-1")
    refused = {
        "forged": (body.replace(b"ftjob-1", b"ftjob-2"), good, secret),
        "other secret": (body, good, new_secret()),
        "stale": (body, headers("wh_1", body, secret, timestamp=int(time.time()) - 301), secret),
        "from the future": (body, headers("wh_1", body, secret, timestamp=int(time.time()) + 400), secret),
        "unsigned": (body, headers("wh_1", body, None), secret),
    }
    status = {}
    for what, (b, h, s) in refused.items():
        with pytest.raises(WebhookRejected) as exc:
            OPENAI.verify_webhook(b, h, s)
        status[what] = exc.value.status
    assert status == {"forged": 401, "other secret": 401, "stale": 400, "from the future": 400, "unsigned": 400}


class Receiver:
    """A webhook endpoint that answers 500 to the first `fail` deliveries."""

    def __init__(self, fail=0):
        self.got, self.fail = [], fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.got.append((dict((k.lower(), v) for k, v in self.headers.items()), body))
                code = 500 if len(receiver.got) <= receiver.fail else 200
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/webhooks/openai"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_openai_emulator_delivers_signed_webhooks_and_retries_a_failed_delivery(tmp_path):
    from ftctl.providers.emulator import make_emulator
    from ftctl.providers.simulated.engine import EngineSettings

    secret, receiver = new_secret(), Receiver(fail=1)
    settings = EngineSettings(queue_time=0.05, validate_time=0.05, train_time=0.1)
    emulator = make_emulator("openai", tmp_path / "emu.db", settings, webhook_url=receiver.url, webhook_secret=secret)
    with pytest.raises(ValueError, match="sends no webhooks"):
        make_emulator("mistral", tmp_path / "m.db", webhook_url=receiver.url, webhook_secret=secret)
    try:
        file_id = emulator.engine.upload_file("qa.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n')["id"]
        job = emulator.engine.create_job(model="gpt-4o-mini", training_files=[file_id])
        end = time.monotonic() + 15
        while len(receiver.got) < 2 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        emulator.webhooks.stop()
        receiver.close()
    (h1, b1), (h2, b2) = receiver.got[:2]
    assert h1["webhook-id"] == h2["webhook-id"] and b1 == b2  # the retry is the same delivery
    event = OPENAI.verify_webhook(b2, h2, secret)
    assert (event.type, event.job_id) == ("fine_tuning.job.succeeded", job["id"])
    assert [s["status"] for s in emulator.webhooks.sent] == [500, 200]
