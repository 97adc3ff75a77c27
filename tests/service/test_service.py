"""Operating it as a service: notify and watchdog, the unit, SIGHUP reload,
metrics, logs, doctor and wait (keys from every source: test_keys). Real
processes."""

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
import urllib.request

import pytest

from tests.conftest import REPO, ftctl_env, run_ftctl, states, submit_jobs, write_config

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
