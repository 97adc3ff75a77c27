"""The dashboard's server without a browser (issue 22): read-only (GET only,
405 otherwise), every value escaped and keys masked, a token off loopback
(header or login cookie), a 10k-point loss curve downsampled under 200 KB,
and `ftctl dashboard`'s URL and bad input. tests/service/test_dashboard_browser.py
drives the same pages in a real Chromium."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime, timedelta

import httpx
import pytest

from ftctl.controller.config import ConfigError, load_config
from ftctl.controller.service.dashboard.server import COOKIE, start_dashboard
from ftctl.controller.service.dashboard.svg import MAX_POINTS, downsample
from ftctl.providers.keys import register_secret
from tests.conftest import FAKE_KEY, assert_no_key, run_ftctl, submit_jobs, wait_until, write_config

SCRIPT = "<script>document.title='PWNED'</script>"
TOKEN = "fake-token-FOR-TESTS-9876543210"


def build_site(tmp_path, extra: str = "", points: int = 0):
    """Two agents in a pipeline (down depends on up), submitted; job 1 made
    succeeded with a provider job, `points` loss points, a provider message
    and an error holding a <script> and the fake key."""
    config = write_config(tmp_path / "site", agents=("up", "down"), extra='depends_on = ["up"]\n' + extra)
    submit_jobs(config)
    db = sqlite3.connect(config.parent / "ftctl.db")
    with db:
        db.execute("UPDATE jobs SET state = 'succeeded', provider_job_id = 'pj-1', actual_cost = 3.5, "
                   "fine_tuned_model = 'ft:up:1', last_error = ? WHERE id = 1", (f"{SCRIPT} key {FAKE_KEY}",))
        db.execute("UPDATE job_events SET reason = ? WHERE job_id = 1", (SCRIPT,))
        db.execute("INSERT INTO provider_state (name, paused_why, paused_message) VALUES ('ghost', 'auth', ?)",
                   (f"{SCRIPT} bad key {FAKE_KEY}",))
        start = datetime(2026, 1, 1)
        db.executemany("INSERT INTO log_points (job_id, provider_job_id, key, kind, at, step, message, metrics, "
                       "fetched_at) VALUES (1, 'pj-1', ?, ?, ?, ?, NULL, ?, ?)",
                       [(f"step:{s}", "checkpoint" if s % 1000 == 0 else "metric",
                         str(start + timedelta(seconds=s)), s,
                         json.dumps({"train_loss": 2.0 / (1 + s / 100) + (1.5 if s == 4321 else 0.0)}), str(start))
                        for s in range(1, points + 1)])
    db.close()
    return config


@pytest.fixture
def site(tmp_path):
    register_secret(FAKE_KEY)
    config = build_site(tmp_path, points=10_000)
    server = start_dashboard(load_config(config), listen="127.0.0.1:0")
    yield config, server
    server.close()


def test_every_page_answers_and_every_value_is_text(site):
    _, server = site
    with httpx.Client(base_url=server.url) as http:
        for path in ("/", "/?state=succeeded", "/jobs/1", "/jobs/2", "/pipelines", "/spend", "/providers"):
            r = http.get(path)
            assert r.status_code == 200, (path, r.text[:300])
            assert "<script>document.title" not in r.text, path
            assert_no_key(r.text, where=path)
            scripts = re.findall(r"<script[^>]*>", r.text)
            nonce = re.search(r"'nonce-([^']+)'", r.headers["content-security-policy"]).group(1)
            assert all(f'nonce="{nonce}"' in s for s in scripts), path  # only our own script may run
        job = http.get("/jobs/1").text
        assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;&lt;/script&gt;" in job  # the error and the history
        providers = http.get("/providers").text
        assert "&lt;script&gt;" in providers and "ghost" in providers and "***" in providers
        assert http.get("/jobs/99").status_code == 404
        assert http.get("/nowhere").status_code == 404
        bad = http.get("/?state=bogus")
        assert bad.status_code == 400 and "state: unknown value &#x27;bogus&#x27;" in bad.text


def test_the_filters_are_links_and_select_rows(site):
    _, server = site
    with httpx.Client(base_url=server.url) as http:
        page = http.get("/").text
        assert 'href="/?state=running"' in page and 'href="/?agent=down"' in page and 'href="/?provider=sim"' in page
        rows = re.findall(r'<tr id="job-(\d+)" data-state="(\w+)"', http.get("/?state=prepared").text)
        assert rows == [("2", "prepared")]
        assert re.findall(r'<tr id="job-(\d+)"', http.get("/?agent=up").text) == ["1"]


def test_the_dashboard_serves_get_only(site):
    _, server = site
    with httpx.Client(base_url=server.url) as http:
        for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"):
            r = http.request(method, "/jobs/1")
            assert r.status_code == 405 and r.headers["allow"] == "GET", method
        assert http.post("/login", data={"token": "x"}).status_code == 405  # no token configured: no login


def test_on_loopback_a_page_asked_for_by_another_name_is_refused(site):
    # a web page whose own name was rebound to 127.0.0.1 must not read the dashboard
    _, server = site
    port = server.httpd.server_address[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert httpx.get(server.url, headers={"Host": host}).status_code == 200, host
    for host in (f"evil.example:{port}", "attacker.test", ""):
        r = httpx.get(server.url + "jobs/1", headers={"Host": host})
        assert r.status_code == 403 and "ft:up:1" not in r.text and "loopback address" in r.text, host


def test_a_ten_thousand_point_curve_is_downsampled_under_200_kb(site):
    _, server = site
    r = httpx.get(server.url + "jobs/1")
    assert len(r.content) < 200_000, len(r.content)
    drawn = re.search(r'data-series="train_loss" data-points="([^"]+)"', r.text).group(1).split()
    assert len(drawn) <= MAX_POINTS
    steps = [float(p.split(":")[0]) for p in drawn]
    assert steps[0] == 1 and steps[-1] == 10_000 and steps == sorted(steps)
    assert "4321:" in r.text  # the spike survives downsampling
    assert re.findall(r'class="checkpoint" data-step="(\d+)"', r.text) == [str(s) for s in range(1000, 10_001, 1000)]


def test_downsample_keeps_the_extremes_of_each_stretch():
    points = [[s, (s * 7919) % 101] for s in range(5000)]
    out = downsample(points, 100)
    assert len(out) <= 100 and out[0] == (0, 0) and out[-1] == (4999, float(4999 * 7919 % 101))
    assert max(v for _, v in out) == 100 and min(v for _, v in out) == 0
    assert downsample(points[:50], 100) == [(float(s), float(v)) for s, v in points[:50]]


def test_off_loopback_every_request_needs_the_token(tmp_path, monkeypatch):
    monkeypatch.setenv("DASH_TOKEN", TOKEN)
    config = build_site(tmp_path, extra='\n[dashboard]\nlisten = "0.0.0.0:0"\ntoken_env = "DASH_TOKEN"\n')
    server = start_dashboard(load_config(config))
    try:
        url = f"http://127.0.0.1:{server.httpd.server_address[1]}"
        with httpx.Client(base_url=url) as http:
            for path in ("/", "/jobs/1", "/pipelines", "/spend", "/providers", "/events"):
                r = http.get(path)
                assert r.status_code == 401 and "ft:up:1" not in r.text, path
            assert http.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert http.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            wrong = http.post("/login", data={"token": "nope"})
            assert wrong.status_code == 401 and "nope" not in wrong.text
            ok = http.post("/login", data={"token": TOKEN})
            assert ok.status_code == 303
            cookie = ok.cookies[COOKIE]
            assert TOKEN not in ok.headers["set-cookie"] and "HttpOnly" in ok.headers["set-cookie"]
        # each with no cookie jar: only the cookie named
        assert httpx.get(url + "/jobs/1", headers={"Cookie": f"{COOKIE}={cookie}"}).status_code == 200
        forged = cookie[:-1] + ("1" if cookie[-1] == "0" else "0")
        assert httpx.get(url + "/jobs/1", headers={"Cookie": f"{COOKIE}={forged}"}).status_code == 401
        assert httpx.get(url + "/jobs/1", headers={"Cookie": f"{COOKIE}={TOKEN}"}).status_code == 401
    finally:
        server.close()


def test_off_loopback_without_a_token_is_refused_in_one_line(tmp_path):
    config = write_config(tmp_path / "site", agents=("qa",), extra='\n[dashboard]\nlisten = "0.0.0.0:9466"\n')
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "dashboard.token_env: listen 0.0.0.0:9466 is not a loopback address" in str(err.value)
    p = run_ftctl("daemon", "--until-done", config=config)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "dashboard.token_env" in p.stderr
    assert not (config.parent / "ftctl.db").exists()


def test_the_dashboard_command_prints_the_url_or_says_what_is_missing(tmp_path):
    plain = write_config(tmp_path / "a", agents=("qa",))
    p = run_ftctl("dashboard", config=plain)
    assert p.returncode == 2 and "dashboard.listen is not set" in p.stderr and p.stderr.count("\n") == 1
    served = write_config(tmp_path / "b", agents=("qa",), extra='\n[dashboard]\nlisten = "127.0.0.1:9470"\n')
    p = run_ftctl("dashboard", config=served)
    assert p.returncode == 0 and p.stdout == "http://127.0.0.1:9470/\n"
    p = run_ftctl("dashboard", "--listen", "127.0.0.1:1", config=served)
    assert p.returncode == 2 and "--listen goes with --serve" in p.stderr
    p = run_ftctl("dashboard", "--serve", "--listen", "nowhere", config=served)
    assert p.returncode == 2 and "--listen" in p.stderr and "HOST:PORT" in p.stderr


@pytest.mark.postgres
def test_every_page_reads_postgresql_too(tmp_path, postgres_server):
    """The same SQL on PostgreSQL (spend by month is to_char there, strftime on SQLite)."""
    from sqlalchemy import create_engine, text

    url = postgres_server.database("dashboard_pages")
    config = write_config(tmp_path / "site", agents=("up", "down"), database=url, extra='depends_on = ["up"]\n')
    submit_jobs(config)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as c:
        c.execute(text("UPDATE jobs SET state = 'succeeded', actual_cost = 3.5, updated_at = '2026-02-03 04:05:06', "
                       "last_error = :e WHERE id = 1"), {"e": SCRIPT})
    engine.dispose()
    server = start_dashboard(load_config(config), listen="127.0.0.1:0")
    try:
        with httpx.Client(base_url=server.url) as http:
            for path in ("/", "/jobs/1", "/pipelines", "/spend", "/providers"):
                r = http.get(path)
                assert r.status_code == 200 and "<script>document" not in r.text, (path, r.text[-500:])
            spend = http.get("/spend").text
            assert re.search(r"<td>2026-02</td><td>up</td><td>sim</td><td>1</td><td>\$4\.00</td><td>\$3\.50</td>",
                             spend), spend
            assert 'data-from="up" data-to="down"' in http.get("/pipelines").text
    finally:
        server.close()


def _next_job_event(lines) -> dict:
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line[6:])
    raise AssertionError("the stream ended")


def test_the_events_stream_sends_changed_rows_and_drops_those_the_filters_no_longer_select(site):
    config, server = site
    db = sqlite3.connect(config.parent / "ftctl.db")
    (after,) = db.execute("SELECT MAX(id) FROM job_events").fetchone()
    with httpx.stream("GET", server.url + f"events?state=prepared&after={after}", timeout=10) as live, \
            httpx.stream("GET", server.url + f"events?after={after}", timeout=10) as every:
        assert live.headers["content-type"].startswith("text/event-stream")
        with db:
            db.execute("UPDATE jobs SET state = 'queued' WHERE id = 2")
            db.execute("INSERT INTO job_events (job_id, at, from_state, to_state, trigger, reason, event_id) "
                       "VALUES (2, '2026-01-01 00:00:00', 'prepared', 'queued', 'submit', ?, 'evt_test')", (SCRIPT,))
        assert _next_job_event(live.iter_lines()) == {"id": 2, "remove": True}
        row = _next_job_event(every.iter_lines())
        assert row["id"] == 2 and row["state"] == "queued"
        assert row["html"].startswith('<tr id="job-2" data-state="queued">') and "<script" not in row["html"]
    db.close()


def test_event_streams_are_bounded(site):
    import threading

    _, server = site
    server.streams = threading.BoundedSemaphore(1)  # MAX_STREAMS, made small
    with httpx.stream("GET", server.url + "events", timeout=10) as first:
        lines = first.iter_lines()  # kept: a dropped iterator closes the response
        assert first.status_code == 200 and next(lines) == "retry: 2000"
        second = httpx.get(server.url + "events", timeout=10)
        assert second.status_code == 503 and second.headers["retry-after"] == "10"
    assert wait_until(lambda: server.streams.acquire(blocking=False), timeout=10)  # the first one's slot is back


@pytest.mark.slow
def test_the_daemon_serves_it_and_a_reload_shows_new_agents(tmp_path):
    import signal

    from tests.conftest import Daemon

    config = write_config(tmp_path / "site", agents=("qa",), extra='\n[dashboard]\nlisten = "127.0.0.1:0"\n')
    daemon = Daemon(config)
    try:
        assert daemon.wait_for("dashboard serving"), daemon.stderr[-2000:]
        url = next(line["url"] for line in daemon.lines if line.get("event") == "dashboard serving")
        assert 'href="/?agent=qa"' in httpx.get(url).text and "agent=triage" not in httpx.get(url).text
        (config.parent / "data" / "triage.jsonl").write_text((config.parent / "data" / "qa.jsonl").read_text())
        config.write_text(config.read_text() + '\n[agents.triage]\nprovider = "sim"\nmodel = "open-mistral-7b"\n'
                          'training_file = "data/triage.jsonl"\n')
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_for("config reloaded"), daemon.stderr[-2000:]
        assert 'href="/?agent=triage"' in httpx.get(url).text  # the same address, the new config
    finally:
        daemon.kill()


def test_a_job_page_shows_its_gate_and_the_examples_that_regressed(site):
    config, server = site
    with sqlite3.connect(config.parent / "ftctl.db") as db:
        db.execute("INSERT INTO evaluations (id, job_id, metric, file, file_hash, examples, candidate_model, "
                   "compare_model, min_improvement, estimated_cost, started_at, finished_at, candidate_score, "
                   "compare_score, improvement, failures) VALUES (7, 1, 'exact', 'eval.jsonl', 'h', 3, 'ft:up:1', "
                   "'open-mistral-7b', 0.05, 0.01, '2026-01-01 00:00:00', '2026-01-01 00:01:00', 0.33, 0.67, "
                   "-0.34, 0)")
        answers = [(0, "candidate", SCRIPT, 0.0), (0, "compare", "Paris", 1.0), (1, "candidate", "yes", 1.0),
                   (1, "compare", "yes", 1.0), (2, "candidate", "half", 0.5), (2, "compare", "no", 0.0)]
        db.executemany("INSERT INTO eval_answers (evaluation_id, example, role, answer, score, at) "
                       "VALUES (7, ?, ?, ?, ?, '2026-01-01 00:00:30')", answers)
    page = httpx.get(server.url + "jobs/1").text
    gate = page[page.index("<h2>Evaluation gate</h2>"):page.index("<h2>History</h2>")]
    assert "exact on n=3 examples (6 answers)" in gate and "needed +0.05" in gate and "ft:up:1: 0.33" in gate
    regressed = gate[gate.index("Regressed examples"):]
    assert re.findall(r"<tr><td>(\d+)</td>", regressed) == ["0"]  # only the example the candidate did worse on
    assert "&lt;script&gt;" in regressed and "<script>document" not in regressed and "Paris" in regressed


def test_spend_against_the_budget_and_the_providers_learned_limits(tmp_path):
    config = build_site(tmp_path, extra="\n[budget]\ntotal = 100.0\nperiod = \"30d\"\n")
    with sqlite3.connect(config.parent / "ftctl.db") as db:
        db.execute("INSERT INTO provider_state (name, learned_limit, learned_at, slots_used, slots_limit) "
                   "VALUES ('sim', 2, '2026-01-02 03:04:05', 1, 2)")
    server = start_dashboard(load_config(config), listen="127.0.0.1:0")
    try:
        spend = httpx.get(server.url + "spend").text
        # job 1 succeeded at $3.50; job 2 (prepared, $4.00 estimated) holds nothing until it is queued
        assert "$3.50 spent and $0.00 committed of $100.00 over 30 days" in spend
        assert re.search(r'<td>\d{4}-\d{2}</td><td>\$3\.50</td><td>\$100\.00</td><td><svg class="bar" [^>]*'
                         r'data-value="3\.5" data-total="100"', spend), spend
        providers = httpx.get(server.url + "providers").text
        assert re.search(r"<td>sim</td><td>simulated</td><td>2</td><td>1/2</td><td>2 \(since 2026-01-02 03:04\)</td>",
                         providers), providers
    finally:
        server.close()
