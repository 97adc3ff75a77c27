"""Events out: the outbox's dispatcher with real commands and a real HTTP
receiver, on a virtual clock; and the hooks' config, refused in one line."""

import json
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ftctl.controller.config import ConfigError, load_config, parse_config
from ftctl.controller.engine.jobs import fire
from ftctl.controller.preflight.submit import plan_submissions
from ftctl.controller.service.hooks import Dispatcher, hook_secrets
from ftctl.models import OutboxEvent, Store
from ftctl.providers.keys import register_secret
from ftctl.providers.openai import KIND as OPENAI
from ftctl.providers.signing import new_secret
from tests.conftest import FAKE_KEY, assert_no_key


def _site(make_config, clock, hooks: str):
    """A job that went all the way to `succeeded` (5 events) on the virtual clock."""
    from ftctl.controller.ledger.creation import create_job

    cfg = load_config(make_config(agents=("qa",), extra=hooks))
    store = Store(cfg.database_url)
    plan = plan_submissions(cfg, [], all_agents=True)[0]
    create_job(store, agent="qa", provider="sim", model=plan.model, training_file=plan.training_file,
               content_hash=plan.content_hash, hyperparameters=plan.hyperparameters, now=clock.now)
    fire(store, 1, "submit", updates={"client_token": "qa-1"}, now=clock.now)
    fire(store, 1, "start", now=clock.now)
    fire(store, 1, "succeed", updates={"fine_tuned_model": "ft:open-mistral-7b:qa-1:x"}, now=clock.now, promotion="skip")
    return cfg, store


def _outbox(store):
    with store.read() as s:
        from sqlmodel import select

        return {o.name: o for o in s.exec(select(OutboxEvent))}


def test_a_command_gets_the_event_in_its_environment_once_and_no_secret(make_config, clock, tmp_path, monkeypatch):
    register_secret(FAKE_KEY)
    monkeypatch.setenv("SOME_PROVIDER_KEY", FAKE_KEY)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("UNRELATED", "not asked for")
    monkeypatch.setenv("DEPLOY_TARGET", "staging")
    monkeypatch.setenv("NAMED_BUT_A_KEY", f"Bearer {FAKE_KEY}")
    out = tmp_path / "env.txt"
    dump = "import json, os, sys; open(sys.argv[1], 'a').write(json.dumps(dict(os.environ)) + chr(10))"
    cfg, store = _site(make_config, clock, f'\n[[hooks]]\non = ["succeeded"]\ncommand = [{json.dumps(sys.executable)}, '
                                           f'"-c", {json.dumps(dump)}, "{out}"]\n'
                                           f'env = ["DEPLOY_TARGET", "NAMED_BUT_A_KEY", "NOT_SET"]\n')
    hooks = Dispatcher(store, cfg, {}, clock=clock)
    assert hooks.run_once() == 5  # prepared, queued, running, succeeded, promoted
    assert hooks.run_once() == 0  # each is settled: delivered, or asked for by no hook
    text = out.read_text()
    assert text.count("\n") == 1  # one event: one run
    env = json.loads(text)
    # an allow-list: PATH, HOME, LANG, LC_ALL, what `env` names, and the event
    assert {k for k in env if not k.startswith("FTCTL_")} <= {"PATH", "HOME", "LANG", "LC_ALL", "DEPLOY_TARGET",
                                                          "LC_CTYPE"}  # (Python sets LC_CTYPE itself in a C locale)
    assert env["DEPLOY_TARGET"] == "staging" and env["PATH"]
    assert env["FTCTL_EVENT"] == "succeeded" and env["FTCTL_JOB_ID"] == "1" and env["FTCTL_AGENT"] == "qa"
    assert env["FTCTL_MODEL"] == "ft:open-mistral-7b:qa-1:x" and env["FTCTL_EVENT_ID"].startswith("evt_")
    assert env["FTCTL_EVENT_ID"] == _outbox(store)["succeeded"].event_id
    assert "FTCTL_REASON" in env and json.loads(env["FTCTL_EVENT_JSON"])["provider"] == "sim"
    assert "SOME_PROVIDER_KEY" not in env and "NAMED_BUT_A_KEY" not in env  # a value holding a key stays here
    assert_no_key(text)
    assert all(o.delivered_at is not None for o in _outbox(store).values())
    store.close()


def test_a_failing_command_is_retried_with_a_capped_backoff(make_config, clock, tmp_path):
    marker = tmp_path / "ran"
    # fails the first two times, then succeeds
    script = f"n=$(cat {marker} 2>/dev/null || echo 0); echo $((n+1)) > {marker}; [ $n -ge 2 ] || {{ echo boom; exit 3; }}"
    cfg, store = _site(make_config, clock, f'\n[[hooks]]\non = ["failed", "succeeded"]\ncommand = ["/bin/sh", "-c", '
                                    f'{json.dumps(script)}]\nbackoff_initial = "10s"\nbackoff_max = "15s"\n')
    hooks = Dispatcher(store, cfg, {}, clock=clock, rng=random.Random(1))
    hooks.run_once()
    row = _outbox(store)["succeeded"]
    assert row.delivered_at is None and row.attempts == 1 and "exited 3: boom" in row.last_error
    assert 5 <= (row.next_at - clock.now).total_seconds() <= 10  # backoff_initial, with jitter
    hooks.run_once()
    assert marker.read_text().strip() == "1"  # not due yet: not run again
    clock.advance(10)
    hooks.run_once()
    row = _outbox(store)["succeeded"]
    assert row.attempts == 2 and (row.next_at - clock.now).total_seconds() <= 15  # capped at backoff_max
    clock.advance(15)
    hooks.run_once()
    row = _outbox(store)["succeeded"]
    assert row.delivered_at is not None and marker.read_text().strip() == "3"
    store.close()


def test_a_hanging_command_is_killed_at_its_timeout(make_config, clock, tmp_path):
    pid_file = tmp_path / "pid"
    cfg, store = _site(make_config, clock, f'\n[[hooks]]\non = ["succeeded"]\ncommand = ["/bin/sh", "-c", '
                                    f'"echo $$ > {pid_file}; sleep 30"]\ntimeout = "0.3s"\n')
    started = time.monotonic()
    Dispatcher(store, cfg, {}, clock=clock).run_once()
    assert time.monotonic() - started < 5
    row = _outbox(store)["succeeded"]
    assert row.delivered_at is None and "timed out after 0.3s; killed" in row.last_error
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    store.close()


class Receiver:
    def __init__(self, codes):
        self.got, self.codes = [], list(codes)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.got.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.codes.pop(0) if receiver.codes else 200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_url_gets_signed_json_with_a_text_line_and_a_5xx_is_retried(make_config, clock, monkeypatch):
    secret = new_secret()
    monkeypatch.setenv("HOOK_SECRET", secret)
    signed, slack = Receiver([503]), Receiver([])
    try:
        cfg, store = _site(make_config, clock, f'\n[[hooks]]\non = ["succeeded"]\nurl = "{signed.url}/ftctl"\n'
                                        f'secret_env = "HOOK_SECRET"\nbackoff_initial = "1s"\n'
                                        f'\n[[hooks]]\non = ["*"]\nurl = "{slack.url}/services/T0/B0/XYZ"\n')
        hooks = Dispatcher(store, cfg, hook_secrets(cfg), clock=clock)
        hooks.run_once()
        assert _outbox(store)["succeeded"].delivered_at is None  # the signed one answered 503
        assert len(slack.got) == 5  # every event, once: the slack hook has them already
        clock.advance(2)
        hooks.run_once()
        assert _outbox(store)["succeeded"].delivered_at is not None and len(slack.got) == 5
    finally:
        signed.close()
        slack.close()
    (_, h1, b1), (path, h2, b2) = signed.got
    assert path == "/ftctl" and h1["webhook-id"] == h2["webhook-id"] == _outbox(store)["succeeded"].event_id
    verified = OPENAI.verify_webhook(b2, h2, secret)  # the openai SDK checks the Standard Webhooks signature
    assert verified.id == h2["webhook-id"]
    body = json.loads(b2)
    assert body["type"] == "ftctl.job.succeeded" and body["data"]["fine_tuned_model"] == "ft:open-mistral-7b:qa-1:x"
    assert body["text"] == "ftctl: job 1 (qa on sim) succeeded: ft:open-mistral-7b:qa-1:x"
    texts = [json.loads(b)["text"] for _, h, b in slack.got]
    assert "webhook-signature" not in slack.got[0][1]  # no secret named: unsigned
    assert "ftctl: job 1 (qa on sim): ft:open-mistral-7b:qa-1:x is now qa's model" in texts
    store.close()


def test_an_event_undelivered_past_give_up_after_is_given_up_and_shown(make_config, clock):
    import ftctl

    cfg, store = _site(make_config, clock, '\n[[hooks]]\non = ["succeeded"]\ncommand = ["/bin/false"]\n'
                                    'backoff_initial = "1m"\ngive_up_after = "2m"\n')
    hooks = Dispatcher(store, cfg, {}, clock=clock, rng=random.Random(0))
    hooks.run_once()
    with ftctl.Ftctl(cfg) as ft:
        owed = ft.undelivered()
    assert owed["pending"] == 1 and owed["gave_up"] == 0 and "exited 1" in owed["last_error"]
    for _ in range(4):
        clock.advance(60)
        hooks.run_once()
    with ftctl.Ftctl(cfg) as ft:
        assert ft.undelivered() == {"pending": 0, "gave_up": 1, "oldest": None, "last_error": None}
    store.close()


@pytest.mark.parametrize("text,needle", [
    ('[[hooks]]\non = ["failed"]\n', "hooks[0].command: a hook has either command"),
    ('[[hooks]]\non = ["failed"]\ncommand = ["x"]\nurl = "https://a.example"\n', "hooks[0].command: a hook has"),
    ('[[hooks]]\non = ["failed", "exploded"]\ncommand = ["x"]\n', "hooks[0].on: unknown event 'exploded'"),
    ('[[hooks]]\non = []\ncommand = ["x"]\n', "hooks[0].on:"),
    ('[[hooks]]\non = ["failed"]\ncommand = []\n', "hooks[0].command: a command is a list"),
    ('[[hooks]]\non = ["failed"]\nurl = "ftp://a.example/x"\n', "hooks[0].url: not an http:// or https:// URL"),
    ('[[hooks]]\non = ["failed"]\ncommand = ["x"]\nsecret_env = "S"\n', "hooks[0].secret_env: only a url hook"),
    ('[[hooks]]\non = ["failed"]\ncommand = ["x"]\n[[hooks]]\non = ["failed"]\ncommand = ["x"]\ntimeout = "1h"\n',
     "hooks[1].timeout: '1h' is too long"),
    ('[[hooks]]\non = ["failed"]\ncommand = ["x"]\nretries = 3\n', "hooks[0].retries: unknown key"),
    ('[webhooks]\nlisten = "127.0.0.1:9465"\n', "webhooks.secret_env: webhooks are verified with a secret"),
    ('[webhooks]\nlisten = "9465"\nsecret_env = "S"\n', "webhooks.listen: '9465' is not HOST:PORT"),
    ('[webhooks]\nlisten = "127.0.0.1:9465"\nsecret_env = "S"\nsecret = "x"\n', "webhooks.secret: unknown key"),
    ('[logs]\ninterval = "0s"\n', "logs.interval:"),
    ('[[hooks]]\non = ["failed"]\ncommand = ["x"]\nenv = ["A B"]\n', "hooks[0].env: 'A B' is not an environment"),
    ('[[hooks]]\non = ["failed"]\ncommand = ["x"]\nenv = ["CREDENTIALS_DIRECTORY"]\n',
     "hooks[0].env: CREDENTIALS_DIRECTORY is never passed to a hook"),
    ('[[hooks]]\non = ["failed"]\nurl = "https://a.example/x"\nenv = ["HTTPS_PROXY"]\n',
     "hooks[0].env: only a command hook has an environment"),
    ('[providers.m]\nkind = "mistral"\n[[hooks]]\non = ["failed"]\ncommand = ["x"]\nenv = ["MISTRAL_API_KEY"]\n',
     "hooks[0].env: MISTRAL_API_KEY holds providers.m's secret; a hook never gets a key"),
    ('[providers.m]\nkind = "openai"\napi_key_env = "K"\n[[hooks]]\non = ["failed"]\ncommand = ["x"]\n'
     '[[hooks]]\non = ["failed"]\ncommand = ["y"]\nenv = ["TZ", "K"]\n', "hooks[1].env: K holds providers.m's secret"),
])
def test_bad_hook_webhook_or_logs_config_is_one_line_naming_the_key(text, needle):
    with pytest.raises(ConfigError) as exc:
        parse_config('[providers.sim]\nkind = "simulated"\n' + text, Path("/etc/ftctl/controller.toml"))
    message = str(exc.value)
    assert "\n" not in message and message.startswith("/etc/ftctl/controller.toml: ") and needle in message, message


def test_a_secret_that_cannot_be_had_is_one_line_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_SECRET", raising=False)
    cfg = parse_config('[[hooks]]\non = ["failed"]\nurl = "https://hooks.example/x"\nsecret_env = "NOPE_SECRET"\n',
                       tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"c\.toml: hooks\[0\]\.secret_env: \$NOPE_SECRET is not set"):
        hook_secrets(cfg)
    loose = tmp_path / "loose.secret"
    loose.write_text(new_secret())
    loose.chmod(0o644)
    cfg = parse_config(f'[[hooks]]\non = ["failed"]\nurl = "https://hooks.example/x"\nsecret_file = "{loose}"\n',
                       tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"hooks\[0\]\.secret_file: secret file .* readable by group or others"):
        hook_secrets(cfg)


def test_hooks_can_ask_for_every_kind_of_event_that_events_shows(tmp_path, monkeypatch):
    """`events` and the hooks agree on what an event is: "*" gets every event
    `ftctl events` lists, notes (created, create-failed) included, and a hook
    can ask for a note by its name."""
    import random as rnd

    from ftctl.controller.ledger.states import EVENTS
    from ftctl.controller.engine.tick import Ticker
    from ftctl.controller.preflight.submit import store_submissions
    from tests.conftest import KEY_ENV, run_ftctl, start_emulator, write_remote_config

    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    every, notes = tmp_path / "every.log", tmp_path / "notes.log"
    line = "echo $FTCTL_EVENT_ID $FTCTL_EVENT >>"
    hooks = "".join(f'\n[[hooks]]\non = {on}\ncommand = ["/bin/sh", "-c", "{line} {out}"]\n'
                    for on, out in (('["*"]', every), ('["created", "create-failed"]', notes)))
    with start_emulator("mistral", tmp_path) as srv:
        path = write_remote_config(tmp_path / "site", "mistral", srv.url, agents=("qa", "legal"), extra=hooks)
        srv.emulator.faults.add(method="POST", path="/v1/fine_tuning/jobs", status=429, retry_after=0.1, times=1)
        cfg = load_config(path)
        store = Store(cfg.database_url)
        store_submissions(store, plan_submissions(cfg, [], all_agents=True))
        ticker, dispatcher = Ticker(cfg, store, rng=rnd.Random(1)), Dispatcher(store, cfg, {})
        end = time.monotonic() + 60
        while not ticker.tick().all_terminal:
            dispatcher.run_once()
            assert time.monotonic() < end, [j.state for j in store.list_jobs()]
            time.sleep(0.05)
        while dispatcher.run_once():
            pass
        ticker.close()
        store.close()
    listed = run_ftctl("events", "--limit", "0", "-o", "json", config=path)
    shown = [json.loads(line) for line in listed.stdout.splitlines()]
    kinds = {e["event"] for e in shown}
    assert {"created", "create-failed", "prepared", "queued", "succeeded", "promoted"} <= kinds, kinds
    got = [line.split() for line in every.read_text().splitlines()]
    assert sorted(e["id"] for e in shown) == sorted(i for i, _ in got)  # each event once, none missing
    assert {k for _, k in got} == kinds
    assert sorted(line.split()[1] for line in notes.read_text().splitlines()) == sorted(
        e["event"] for e in shown if e["event"] in ("created", "create-failed"))
    # and `events --help` says which kinds a hook can ask for
    helped = " ".join(run_ftctl("events", "--help").stdout.split())
    assert "can ask for each kind shown here" in helped and all(f" {k}," in helped or f" {k}." in helped
                                                                 for k in kinds | set(EVENTS)), helped


def test_a_slack_url_s_tokens_are_masked_and_its_words_are_not():
    from ftctl.controller.service.hooks import url_tokens
    from ftctl.providers.keys import redact

    url = "https://hooks.slack.com/services/T0FAKE0TESTS/B0FAKE0TESTS/fakeFORtests0123456789ab?token=fakeTOKEN99"
    assert url_tokens(url) == ["T0FAKE0TESTS", "B0FAKE0TESTS", "fakeFORtests0123456789ab", "fakeTOKEN99"]
    for token in url_tokens(url):
        register_secret(token)
    assert redact(url) == "https://hooks.slack.com/services/***/***/***?token=***"
    assert redact("restart the webhooks services") == "restart the webhooks services"
