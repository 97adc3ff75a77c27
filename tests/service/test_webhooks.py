"""Webhooks in: verified with the official openai SDK; forged, stale,
oversized and replayed deliveries change nothing; a verified one reconciles
its provider at once."""

import json
import socket
import struct
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


def _succeeded_at_provider(store, rec, srv):
    rec.tick()  # created at the provider
    job = store.get_job(1)
    assert job.state == "queued" and job.provider_job_id
    end = time.monotonic() + 20
    while srv.emulator.engine.get_job(job.provider_job_id)["status"] != "SUCCESS":
        assert time.monotonic() < end
        time.sleep(0.05)
    return job


def _event(kind, job_id):
    return json.dumps({"id": "evt_1", "object": "event", "created_at": int(time.time()), "type": kind,
                       "data": {"id": job_id}}).encode()


def test_a_signed_delivery_that_means_nothing_gets_a_4xx_saying_why_and_changes_nothing(site, tmp_path):
    cfg, store, rec, srv, secret, port = site
    job = _succeeded_at_provider(store, rec, srv)
    # another ftctl install on the same provider account: its job is real, and not ours
    other = load_config(write_remote_config(tmp_path / "other", "openai", srv.url, agents=("qa",)))
    theirs = Store(other.database_url)
    store_submissions(theirs, plan_submissions(other, [], all_agents=True))
    their_rec = Ticker(other, theirs)
    their_rec.tick()
    their_job = theirs.get_job(1).provider_job_id
    their_rec.close()
    theirs.close()
    assert their_job and their_job != job.provider_job_id
    ticks = []
    server = WebhookServer(cfg, secret, store, lambda name, why: ticks.append(rec.tick(only={name})))
    url = f"http://127.0.0.1:{port}/webhooks/openai"

    def post(data, wid="wh_1"):
        return httpx.post(url, content=data, headers={"content-type": "application/json",
                                                      **headers(wid, data, secret)}, timeout=10)

    def unchanged():
        return (len(ticks), len(store.events(1)), store.get_job(1).state, srv.emulator.calls["GET /v1/fine_tuning/jobs"])

    before = unchanged()
    try:
        meaningless = {
            "a JSON array": (b'[{"type": "fine_tuning.job.succeeded"}]', 400, "the body is a JSON list"),
            "an unknown event type": (_event("batch.completed", job.provider_job_id), 422,
                                      "event type 'batch.completed' means nothing here"),
            "an event without its job": (_event("fine_tuning.job.failed", None), 422, "without data.id"),
            "an unknown job": (_event("fine_tuning.job.succeeded", "ftjob-nope"), 422,
                               "no job of this ftctl is openai job 'ftjob-nope'"),
            "a job of another install": (_event("fine_tuning.job.succeeded", their_job), 422,
                                         f"no job of this ftctl is openai job '{their_job}'"),
        }
        for what, (data, status, why) in meaningless.items():
            answer = post(data)
            assert (answer.status_code, why in answer.json()["error"]) == (status, True), (what, answer.text)
        assert unchanged() == before  # no tick, no history row, no call to the provider
        # nothing was remembered either: the same webhook-id, now meaningful, is acted on
        ok = post(_event("fine_tuning.job.succeeded", job.provider_job_id))
        assert ok.status_code == 200 and ok.json() == {"ok": True}
        assert len(ticks) == 1 and store.get_job(1).state == "succeeded"
    finally:
        server.close()


def test_slow_idle_and_broken_clients_are_cut_off_in_one_log_line_each_while_webhooks_go_on(site, capfd):
    """50 clients that send nothing, half their headers or half their body,
    trickle their headers a byte at a time, or reset the connection: each is
    cut off (the tricklers long before they are done: the deadline is the
    request's, not a read's) and logged in one JSON line; no traceback
    reaches stderr; a valid webhook sent meanwhile is acted on."""
    import io
    import threading

    from ftctl.controller.service.logs import configure

    cfg, store, rec, srv, secret, port = site
    job = _succeeded_at_provider(store, rec, srv)
    log = io.StringIO()
    configure("info", stream=log, json=True)
    ticks = []
    server = WebhookServer(cfg, secret, store, lambda name, why: ticks.append(rec.tick(only={name})),
                           request_timeout=1.0)
    head = b"POST /webhooks/openai HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    shapes = {"idle": b"", "half the headers": head, "half the body": head + b"Content-Length: 600\r\n\r\n" + b"{" * 300,
              "reset": head, "trickle": b""}
    trickle = head + b"X-Pad: " + b"x" * 200 + b"\r\n\r\n"  # a byte each 0.3 s: 80 s, if it were let
    sent: list[int] = []

    def trickler(c):
        n = 0
        try:
            for i in range(len(trickle)):
                c.send(trickle[i:i + 1])
                n += 1
                time.sleep(0.3)  # the client's pace, not a wait of the test's
        except OSError:
            pass
        sent.append(n)

    clients, threads = [], []
    try:
        for i in range(50):
            shape = list(shapes)[i % 5]
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(shapes[shape])
            clients.append((shape, c))
            if shape == "trickle":
                threads.append(threading.Thread(target=trickler, args=(c,), daemon=True))
                threads[-1].start()
        for shape, c in clients:
            if shape == "reset":  # an abortive close: RST, not FIN
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
        body = _event("fine_tuning.job.succeeded", job.provider_job_id)
        ok = httpx.post(f"http://127.0.0.1:{port}/webhooks/openai", content=body,
                        headers={"content-type": "application/json", **headers("wh_ok", body, secret)}, timeout=10)
        assert ok.status_code == 200 and len(ticks) == 1 and store.get_job(1).state == "succeeded"
        for shape, c in clients:  # each is cut off by the server: recv sees its end
            if shape not in ("reset", "trickle"):
                answer = b""
                while chunk := c.recv(4096):
                    answer += chunk
                assert not answer or answer.startswith(b"HTTP/1.1 4"), (shape, answer[:100])
        for t in threads:
            t.join(timeout=60)
        assert len(sent) == 10 and max(sent) < len(trickle) // 2, sent  # cut off, well before the end
        refused = lambda: [json.loads(line) for line in log.getvalue().splitlines()  # noqa: E731
                           if json.loads(line)["event"] in ("webhook request refused", "webhook request broken")]
        end = time.monotonic() + 10
        while len(refused()) < 50 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        for _, c in clients:
            c.close()
        server.close()
        configure("warning")
    lines = log.getvalue().splitlines()
    assert all(line.startswith("{") for line in lines)  # JSON lines only
    import collections
    assert len(refused()) == 50, collections.Counter(r.get("why") for r in refused())
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[-2000:]
