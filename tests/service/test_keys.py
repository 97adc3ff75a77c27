"""Keys from every source never leak: not whole, not escaped, not any 6
characters of them, whatever a provider echoes, in the database, the CLI's
output, the daemon's log, a hook or systemd's status; bad key files are
refused in one line without the key. Real processes."""

import json
import os
import subprocess
import sys
import tempfile
import urllib.parse

import pytest

from tests.conftest import (FAKE_KEY, KEY_ENV, assert_no_key, ftctl_env, run_ftctl, run_ftctl_many, start_emulator,
                            states, write_remote_config)
from tests.service.test_service import NotifySocket, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def notify():
    # AF_UNIX paths are short: keep it under /tmp
    import shutil

    d = tempfile.mkdtemp(prefix="ftn-")
    sock = NotifySocket(os.path.join(d, "notify"))
    yield sock
    sock.close()
    shutil.rmtree(d, ignore_errors=True)


# a key whose escaped forms differ from it (JSON, URL, repr), as base64 keys' do
ODD_KEY = 'fake-key/FOR+"TESTS"\\0123456789=='


def partial_echoes(key):
    """What providers echo of a key they refuse: a prefix (the red team's
    `bad key cnry-SEKRI... ***`), OpenAI's prefix and last four, a middle
    piece, and the key whole about 285 characters in (where a text cut at 300
    before masking would keep most of it)."""
    return [f"bad key {key[:10]}... ***", f"Incorrect API key provided: {key[:8]}{'*' * 17}{key[-4:]}.",
            f"token ...{key[9:16]}... was revoked", f"key {key} is not valid", "x" * 271 + f" with key {key}"]


@pytest.mark.parametrize("source", ["env", "file with a second line", "symlinked file", "credential"])
def test_a_key_from_any_source_never_leaks(tmp_path, source, notify):
    """Whatever the key's source, and whatever part of it a provider echoes,
    no 6 characters of it (nor of its escaped forms) reach the database, the
    CLI's output (text and JSON), the daemon's log, a hook or systemd."""
    key = ODD_KEY
    with start_emulator("mistral", tmp_path, api_key=key) as srv:
        hook_out = tmp_path / "hook-env.txt"
        cfg = write_remote_config(tmp_path / "site", "mistral", srv.url, agents=("qa", "legal"),
                                  extra=f'\n[[hooks]]\non = ["*"]\ncommand = ["/bin/sh", "-c", '
                                        f'"env >> {hook_out}; echo --- >> {hook_out}"]\n')
        env = ftctl_env(NOTIFY_SOCKET=notify.path)
        text = cfg.read_text().replace(f'api_key_env = "{KEY_ENV}"\n', "")
        if source == "env":
            text = text.replace('kind = "mistral"', f'kind = "mistral"\napi_key_env = "{KEY_ENV}"')
            env[KEY_ENV] = key
        elif source in ("file", "file with a second line", "symlinked file"):
            path = tmp_path / "mistral.key"
            # a second line must not travel with the key into a header (and from
            # there into an "Illegal header value" error)
            path.write_text(key + ("\n# rotated 2026-11\n" if source != "file" else "\n"))
            path.chmod(0o600)
            if source == "symlinked file":
                link = tmp_path / "current.key"
                link.symlink_to(path)
                path = link
            text = text.replace('kind = "mistral"', f'kind = "mistral"\napi_key_file = "{path}"')
        else:
            creds = tmp_path / "creds"
            creds.mkdir()
            (creds / "mistral").write_text(key)
            env["CREDENTIALS_DIRECTORY"] = str(creds)
            text = text.replace('kind = "mistral"', 'kind = "mistral"\napi_key_credential = "mistral"')
        cfg.write_text(text)
        # a provider that echoes the key back, in part or whole, in its error
        # texts: on the listing (the provider's pause reason), on a create
        # (the job's history and events) and on a job's read (its log)
        echoes = partial_echoes(key)
        for i, echo in enumerate(echoes):
            srv.emulator.faults.add(method="GET", path="/v1/fine_tuning/jobs", exact=True,
                                    status=401 if i < 4 else 503, times=1, body={"object": "error", "message": echo, "type": "auth"})
        srv.emulator.faults.add(method="POST", path="/v1/fine_tuning/jobs", status=401, times=1,
                                body={"object": "error", "message": echoes[0], "type": "auth"})
        srv.emulator.faults.add(method="GET", path="/v1/fine_tuning/jobs/", status=500, times=2,
                                body={"object": "error", "message": echoes[1], "type": "server"})
        outputs = [run_ftctl("submit", "--all", config=cfg, env=env)]
        daemon = subprocess.run([sys.executable, "-m", "ftctl", "--log-level", "debug", "--config", str(cfg),
                                 "daemon", "--until-done"], capture_output=True, text=True, timeout=120,
                                cwd=tempfile.gettempdir(), env=env)
        assert daemon.returncode == 0, daemon.stderr[-2000:]
        outputs += [daemon] + run_ftctl_many(["status"], ["status", "--json"], ["show", "1"], ["show", "1", "--json"],
                                             ["show", "2", "--json"], ["events", "--limit", "0"],
                                             ["events", "--limit", "0", "-o", "json"], ["logs", "1"],
                                             ["logs", "1", "--json"], ["models"], ["doctor"], ["budget"],
                                             config=cfg, env=env)
        assert states(cfg) == ["succeeded", "succeeded"]
        for p in outputs:
            assert_no_key(p.stdout + p.stderr, key=key, where=" ".join(p.args[-2:]))
        for needle in ("bad key ***... ***", "Incorrect API key provided: ***", "key *** is not valid",
                       "with key ***", "token ...***... was revoked"):
            assert needle in daemon.stderr, needle  # the echo was masked, not dropped
        assert "OK   key mistral" in outputs[-2].stdout and "not shown" in outputs[-2].stdout
        # the event a hook is given, and its environment (an allow-list)
        assert_no_key(hook_out.read_text(), key=key, where="the hooks' environments and payloads")
        assert hook_out.read_text().count("FTCTL_EVENT_JSON=") >= 8  # 2 jobs, 4 events or more each
        assert_no_key(repr(notify.drain()), key=key, where="systemd's STATUS=")
        for f in (tmp_path / "site").glob("ftctl.db*"):
            assert_no_key(f.read_bytes(), key=key, where=f.name)


def test_any_six_characters_of_a_key_are_masked_in_every_form_and_surface(notify):
    from ftctl.controller.service.notify import Notifier
    from ftctl.providers.keys import redact, register_secret

    register_secret(ODD_KEY)
    for echo in partial_echoes(ODD_KEY):
        for form in (echo, json.dumps(echo), repr(echo), urllib.parse.quote(echo), urllib.parse.quote_plus(echo)):
            masked = redact(form)
            assert "***" in masked and masked != form
            assert_no_key(masked, key=ODD_KEY, where=form)
    # one mask per run, the text around it kept; 5 characters are not a piece
    assert redact(f"a {ODD_KEY[:6]}{ODD_KEY[3:12]} b") == "a *** b"
    assert redact(f"ok {ODD_KEY[:5]} ok") == f"ok {ODD_KEY[:5]} ok"
    # whatever the shape the text comes in
    nested = redact({"e": [RuntimeError(f"no {ODD_KEY[2:9]}")], ODD_KEY[-7:]: (b"x " + ODD_KEY[:7].encode(),)})
    assert nested == {"e": ["RuntimeError: no ***"], "***": (b"x ***",)}
    Notifier({"NOTIFY_SOCKET": notify.path}).status(f"reload refused (bad key {ODD_KEY[:10]})")
    assert wait_for(lambda: notify.drain())
    assert notify.drain()[-1][1] == ["STATUS=reload refused (bad key ***)"]


def test_a_key_file_others_can_read_is_refused(tmp_path):
    with start_emulator("mistral", tmp_path) as srv:
        cfg = write_remote_config(tmp_path / "site", "mistral", srv.url, agents=("qa",))
        key = tmp_path / "mistral.key"
        key.write_text(FAKE_KEY)
        key.chmod(0o644)
        cfg.write_text(cfg.read_text().replace(f'api_key_env = "{KEY_ENV}"', f'api_key_file = "{key}"'))
        _, tick, doctor, status, as_json = run_ftctl_many(["submit", "--all"], ["tick"], ["doctor"],
                                                          ["status", "--json"], ["doctor", "--json"], config=cfg)
        assert doctor.returncode == 1
        assert "readable by group or others (mode 0644); run chmod 600" in doctor.stdout
        checks = {c["check"]: c for c in json.loads(as_json.stdout)}
        assert checks["key mistral"]["level"] == "fail" and checks["config"]["level"] == "ok"
        (job,) = json.loads(status.stdout)
        assert job["state"] == "prepared" and "readable by group or others" in job["reason"]
        for p in (tick, doctor, status):
            assert_no_key(p.stdout + p.stderr)


@pytest.mark.parametrize("shape,needle", [
    ("control", "holds control characters"),
    ("foreign owner", "belongs to uid"),
    ("symlink to a readable file", "a symlink to"),
])
def test_a_bad_key_file_is_refused_in_one_line_without_the_key(tmp_path, shape, needle):
    with start_emulator("mistral", tmp_path) as srv:
        cfg = write_remote_config(tmp_path / "site", "mistral", srv.url, agents=("qa",))
        key = tmp_path / "mistral.key"
        key.write_text(FAKE_KEY[:10] + "\x1b[2J" + FAKE_KEY[10:] if shape == "control" else FAKE_KEY)
        key.chmod(0o600 if shape != "symlink to a readable file" else 0o644)
        if shape == "foreign owner":
            os.chown(key, 65534, 65534) if os.geteuid() == 0 else pytest.skip("needs root to chown")
        target = key
        if shape == "symlink to a readable file":
            target = tmp_path / "link.key"
            target.symlink_to(key)
        cfg.write_text(cfg.read_text().replace(f'api_key_env = "{KEY_ENV}"', f'api_key_file = "{target}"'))
        _, doctor, tick, status = run_ftctl_many(["submit", "--all"], ["doctor", "--json"], ["tick"],
                                                 ["status", "--json"], config=cfg)
        checks = {c["check"]: c for c in json.loads(doctor.stdout)}
        assert checks["key mistral"]["level"] == "fail" and needle in checks["key mistral"]["detail"]
        assert "\n" not in checks["key mistral"]["detail"]
        assert json.loads(status.stdout)[0]["state"] == "prepared"
        assert srv.emulator.calls["POST /v1/fine_tuning/jobs"] == 0
        for p in (doctor, tick, status):
            assert_no_key(p.stdout + p.stderr)


def test_library_log_lines_are_redacted_too():
    import io
    import logging

    from ftctl.controller.service.logs import configure
    from ftctl.providers.keys import register_secret

    register_secret(FAKE_KEY)
    stream = io.StringIO()
    configure("info", stream=stream, json=True)
    try:
        logging.getLogger("httpx").warning("sent Authorization: Bearer %s", FAKE_KEY)
        try:
            raise RuntimeError(f"boom {FAKE_KEY}")
        except RuntimeError:
            logging.getLogger("apscheduler.executors").error("job raised", exc_info=True)
    finally:
        configure("warning")
    text = stream.getvalue()
    assert "Bearer ***" in text and "RuntimeError: boom ***" in text
    assert_no_key(text)
