"""Webhooks in: verified with the official openai SDK; forged, stale,
oversized and replayed deliveries change nothing; a verified one reconciles
its provider at once."""

import json
import socket
import time

import httpx
import pytest

from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.controller.service.webhooks import WebhookServer
from ftctl.models import Store
from ftctl.providers.signing import headers, new_secret
from tests.conftest import FAKE_KEY, KEY_ENV, start_emulator, write_remote_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def site(tmp_path, monkeypatch):
    secret = new_secret()
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    monkeypatch.setenv("WH_SECRET", secret)
    port = free_port()
    srv = start_emulator("openai", tmp_path, train_time=0.2)
    cfg = load_config(write_remote_config(tmp_path / "site", "openai", srv.url, agents=("qa",), extra=(
        f'\n[webhooks]\nlisten = "127.0.0.1:{port}"\nsecret_env = "WH_SECRET"\nmax_body = 2048\n')))
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    rec = Ticker(cfg, store)
    yield cfg, store, rec, srv, secret, port
    rec.close()
    store.close()
    srv.stop()


def test_forged_stale_oversized_and_replayed_webhooks_change_nothing(site):
    cfg, store, rec, srv, secret, port = site
    rec.tick()  # created at the provider
    job = store.get_job(1)
    assert job.state == "queued" and job.provider_job_id
    end = time.monotonic() + 20
    while srv.emulator.engine.get_job(job.provider_job_id)["status"] != "SUCCESS" and time.monotonic() < end:
        time.sleep(0.05)
    ticks = []
    server = WebhookServer(cfg, secret, store, lambda name, why: ticks.append(rec.tick(only={name})))
    url = f"http://127.0.0.1:{port}/webhooks/openai"
    event = {"id": "evt_1", "object": "event", "created_at": int(time.time()), "type": "fine_tuning.job.succeeded",
             "data": {"id": job.provider_job_id}}
    body = json.dumps(event).encode()

    def post(data, head, to=url):
        return httpx.post(to, content=data, headers={"content-type": "application/json", **head}, timeout=10)

    def unchanged():
        return (len(ticks), len(store.events(1)), store.get_job(1).state, srv.emulator.calls["GET /v1/fine_tuning/jobs"])

    before = unchanged()
    try:
        forged = body.replace(b"evt_1", b"evt_2")
        stale = headers("wh_1", body, secret, timestamp=int(time.time()) - 301)
        big = json.dumps({**event, "pad": "x" * 4096}).encode()
        answers = {
            "forged": post(forged, headers("wh_1", body, secret)).status_code,
            "wrong secret": post(body, headers("wh_1", body, new_secret())).status_code,
            "stale": post(body, stale).status_code,
            "no signature": post(body, headers("wh_1", body, None)).status_code,
            "oversized": post(big, headers("wh_1", big, secret)).status_code,
            "unknown provider": post(body, headers("wh_1", body, secret), url.replace("openai", "nope")).status_code,
            "not a webhook path": post(body, headers("wh_1", body, secret), url.replace("/webhooks", "")).status_code,
            "GET": httpx.get(url, timeout=10).status_code,
        }
        assert answers == {"forged": 401, "wrong secret": 401, "stale": 400, "no signature": 400, "oversized": 413,
                           "unknown provider": 404, "not a webhook path": 404, "GET": 405}
        assert unchanged() == before  # no tick, no history row, no call to the provider
        ok = post(body, headers("wh_1", body, secret))
        assert ok.status_code == 200 and ok.json() == {"ok": True}
        assert len(ticks) == 1 and store.get_job(1).state == "succeeded"
        after = unchanged()
        # the sender lost our answer and sends the same delivery again: 2xx, not acted on twice
        again = post(body, headers("wh_1", body, secret))
        assert again.status_code == 200 and again.json()["duplicate"] is True
        assert unchanged() == after
    finally:
        server.close()
