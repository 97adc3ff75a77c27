"""Operating it as a service: notify and watchdog, the unit, SIGHUP reload,
keys from every source, metrics, logs, doctor and wait. Real processes."""

import tempfile
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import (FAKE_KEY, KEY_ENV, REPO, assert_no_key, ftctl_env, run_ftctl, run_ftctl_many,
                            start_emulator, states, submit_jobs, write_config, write_remote_config)

pytestmark = pytest.mark.slow


def spawn(config, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(config), "daemon", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
                            env=env or ftctl_env())


def wait_for(pred, timeout=30, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return None


class NotifySocket:
    """Plays systemd's side: receives (and timestamps) every datagram."""

    def __init__(self, path):
        import threading

        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []  # (monotonic time, fields)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def drain(self):
        return list(self.messages)

    def times(self, field):
        return [t for t, fields in self.drain() if field in fields]

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    # AF_UNIX paths are short: keep it under /tmp
    import tempfile

    d = tempfile.mkdtemp(prefix="ftn-")
    sock = NotifySocket(os.path.join(d, "notify"))
    yield sock
    sock.close()
    shutil.rmtree(d, ignore_errors=True)


def test_notify_ready_status_watchdog_stopping_in_order(make_config, notify):
    cfg = make_config(agents=("qa", "legal"), queue_time="0.2s", validate_time="0.2s", train_time="0.6s",
                      poll="0.2s")
    submit_jobs(cfg)
    env = ftctl_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000")
    daemon = spawn(cfg, env=env)
    try:
        assert wait_for(lambda: states(cfg) == ["succeeded"] * 2, timeout=60)
        assert wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3, timeout=10)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
    finally:
        daemon.kill()
    flat = [f for _, fields in notify.drain() for f in fields]
    ready, stopping = flat.index("READY=1"), flat.index("STOPPING=1")
    statuses = [f for f in flat if f.startswith("STATUS=")]
    assert ready < flat.index("WATCHDOG=1") < stopping
    assert any("2 succeeded" in s and "0 failed" in s for s in statuses), statuses
    assert any(re.match(r"STATUS=\d+ running, \d+ queued, \d+ waiting for a slot", s) for s in statuses)
    assert "WATCHDOG=1" not in flat[stopping:]
    assert f"MAINPID={daemon.pid}" in flat


def test_a_hung_loop_stops_the_watchdog(make_config, notify):
    cfg = make_config(agents=("qa",), train_time="1h", poll="0.2s")
    submit_jobs(cfg)
    env = ftctl_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="600000")
    daemon = spawn(cfg, env=env)
    sim_db = cfg.parent / "sim-sim.db"
    try:
        assert wait_for(lambda: states(cfg) == ["running"], timeout=30), (daemon.poll(), states(cfg))
        assert wait_for(lambda: notify.times("WATCHDOG=1"), timeout=10)
        # the simulated service's file locked by someone else: the next tick hangs
        blocker = sqlite3.connect(sim_db, timeout=1, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        time.sleep(1.0)  # the tick in hand reaches the lock
        hung_at = time.monotonic()
        time.sleep(2.5)
        pings_while_hung = [t for t in notify.times("WATCHDOG=1") if t > hung_at + 0.7]
        assert pings_while_hung == []
        blocker.execute("ROLLBACK")
        blocker.close()
        released = time.monotonic()
        assert wait_for(lambda: [t for t in notify.times("WATCHDOG=1") if t > released], timeout=40)
        assert daemon.poll() is None
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=40) == 0
    finally:
        daemon.kill()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_the_shipped_unit_verifies_and_is_hardened(tmp_path):
    p = run_ftctl("service-unit", "--watchdog", "90s", config=REPO / "controller.toml")
    assert p.returncode == 0
    unit = tmp_path / "ftctl.service"
    unit.write_text(p.stdout)
    assert "Type=notify" in p.stdout and "WatchdogSec=90s" in p.stdout
    exec_line = next(l for l in p.stdout.splitlines() if l.startswith("ExecStart="))
    assert exec_line.endswith(f"--config {REPO / 'controller.toml'} daemon")
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
    level = float(re.search(r"Overall exposure level for ftctl\.service: ([\d.]+)", sec.stdout).group(1))
    assert level <= 2.0, sec.stdout[-2000:]


def test_sighup_applies_a_new_concurrency_and_keeps_running_on_a_broken_file(make_config):
    cfg = make_config(agents=("qa", "legal", "support"), concurrency=1, train_time="1h", poll="0.2s")
    submit_jobs(cfg)
    daemon = spawn(cfg)
    try:
        assert wait_for(lambda: states(cfg).count("running") == 1, timeout=30)
        time.sleep(1)
        assert states(cfg).count("prepared") == 2
        cfg.write_text(cfg.read_text().replace("concurrency = 1", "concurrency = 3"))
        daemon.send_signal(signal.SIGHUP)
        assert wait_for(lambda: states(cfg).count("prepared") == 0, timeout=15)
        good = cfg.read_text()
        cfg.write_text(good + "\n[controller\n")
        daemon.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert daemon.poll() is None  # still running, on the previous config
        other = write_config(cfg.parent.parent / "other")
        submit_jobs(other, "qa", force=True)  # unrelated: must not matter
        cfg.write_text(good)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    finally:
        daemon.kill()
    lines = [json.loads(l) for l in daemon.stderr.read().splitlines() if l.startswith("{")]
    refused = [l for l in lines if l["event"].startswith("reload refused")]
    assert len(refused) == 1 and "invalid TOML" in refused[0]["error"]
    reloaded = [l for l in lines if l["event"] == "config reloaded"]
    assert reloaded and "providers.sim" in reloaded[0]["changed"]


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


def test_metrics_show_the_state_counts_moving(make_config):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_config(agents=("qa", "legal", "support", "analyst"), concurrency=2, queue_time="0.3s",
                      validate_time="0.3s", train_time="1s", poll="0.2s",
                      extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    submit_jobs(cfg)
    daemon = spawn(cfg)
    seen = []

    def scrape():
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            return None
        values = dict(re.findall(r'^ftctl_jobs\{provider="sim",state="(\w+)"\} (\S+)$', body, re.M))
        seen.append(values)
        return body

    try:
        assert wait_for(scrape, timeout=30)
        wait_for(lambda: scrape() and seen[-1].get("succeeded") == "4.0", timeout=60, step=0.3)
        body = scrape()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    finally:
        daemon.kill()
    succeeded = [float(v.get("succeeded", 0)) for v in seen]
    assert succeeded[-1] == 4.0 and min(succeeded) < 4.0
    assert any(float(v.get("running", 0)) > 0 for v in seen)
    assert 'ftctl_slots_allowed{provider="sim"} 2.0' in body
    assert "ftctl_reconcile_seconds_count" in body
    assert re.search(r'^ftctl_leader\{host="[^"]+"\} 1\.0$', body, re.M)  # this daemon leads
    assert re.search(r"^ftctl_lease_renewals_total \d+\.0$", body, re.M)
    assert re.search(r'ftctl_cost_estimated_dollars\{provider="sim"\} 16\.0', body)


def test_json_logs_carry_job_fields_and_no_timestamp_under_journald(make_config):
    cfg = make_config(agents=("qa",), queue_time="0.1s", validate_time="0.1s", train_time="0.3s", poll="0.2s")
    submit_jobs(cfg)
    p = subprocess.run([sys.executable, "-m", "ftctl", "--config", str(cfg), "daemon", "--until-done"],
                       capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir(),
                       env=ftctl_env(JOURNAL_STREAM="8:12345"))
    assert p.returncode == 0
    lines = [json.loads(l) for l in p.stderr.splitlines()]
    assert lines and all("timestamp" not in l for l in lines)
    about_jobs = [l for l in lines if "job_id" in l]
    assert about_jobs and all({"job_id", "agent", "provider", "state"} <= set(l) for l in about_jobs)
    p2 = subprocess.run([sys.executable, "-m", "ftctl", "--config", str(cfg), "--log-level", "warning",
                         "daemon", "--until-done"], capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir(),
                        env=ftctl_env())
    assert p2.returncode == 0 and p2.stderr.strip() == ""  # nothing at warning level: nothing printed


def test_wait_exit_codes(make_config):
    cfg = make_config(agents=("qa", "legal"), queue_time="0.1s", validate_time="0.1s", train_time="0.3s",
                      poll="0.2s", fail_rate=1.0, max_attempts=1)
    submit_jobs(cfg)
    timed_out = run_ftctl("wait", "1", "2", "--timeout", "0.5s", "--interval", "0.1", config=cfg)
    assert timed_out.returncode == 5 and "timed out after 500ms waiting for 1 prepared, 2 prepared" in timed_out.stderr
    daemon = spawn(cfg, "--until-done")
    done = run_ftctl("wait", "1", "2", "--interval", "0.2", config=cfg, timeout=60)
    assert daemon.wait(timeout=30) == 0
    assert done.returncode == 1 and "job 1 (qa): failed" in done.stdout
    assert run_ftctl("wait", "99", config=cfg).returncode == 2


def test_wait_succeeds_when_all_succeeded(make_config):
    cfg = make_config(agents=("qa",), queue_time="0.1s", validate_time="0.1s", train_time="0.3s", poll="0.2s")
    submit_jobs(cfg)
    daemon = spawn(cfg, "--until-done")
    done = run_ftctl("wait", "1", "--interval", "0.2", "--timeout", "60s", config=cfg, timeout=90)
    assert daemon.wait(timeout=30) == 0
    assert done.returncode == 0 and "job 1 (qa): succeeded ft:open-mistral-7b:" in done.stdout


def test_status_watch_refreshes_in_place_on_a_terminal(make_config):
    import pty

    cfg = make_config(agents=("qa",))
    submit_jobs(cfg)
    pid, fd = pty.fork()
    if pid == 0:  # the child: ftctl on a terminal
        os.chdir(tempfile.gettempdir())
        os.execve(sys.executable, [sys.executable, "-m", "ftctl", "--config", str(cfg), "status", "--watch",
                                   "--interval", "0.2"], {**ftctl_env(), "COLUMNS": "160", "TERM": "xterm"})
    output = b""
    end = time.monotonic() + 20  # start-up on a busy machine, then a few redraws
    while time.monotonic() < end and output.count(b"ftctl status") < 4:
        try:
            import select

            if select.select([fd], [], [], 0.1)[0]:
                output += os.read(fd, 65536)
        except OSError:
            break
    os.kill(pid, signal.SIGINT)
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0
    assert text.count("ftctl status") >= 3  # redrawn several times
    assert "\x1b[" in text and "waiting for the daemon" in text


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


def test_a_metrics_port_in_use_is_a_one_line_error(make_config):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = make_config(agents=("qa",), extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        p = subprocess.run([sys.executable, "-m", "ftctl", "--config", str(cfg), "daemon"], capture_output=True,
                           text=True, timeout=60, cwd=tempfile.gettempdir(), env=ftctl_env())
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == f"ftctl: error: metrics.listen 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in p.stderr
