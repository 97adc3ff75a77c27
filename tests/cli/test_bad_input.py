"""Bad input that used to crash, hang or wedge: each is one line and a
non-zero exit now, and leaves nothing half-done behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import submit_jobs, ftctl_env, run_ftctl, run_ftctl_many


def one_line_error(p, *needles, code=2):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftctl: error: "), p.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("key,value,needle", [
    ("poll_interval", "inf", "controller.poll_interval"),
    ("poll_interval", '"99999999999d"', "controller.poll_interval: '99999999999d' is too long: at most 1h"),
    ("poll_interval", "nan", "controller.poll_interval"),
    ("backoff_max", '"9999999999d"', "retry.backoff_max: '9999999999d' is too long: at most 7d"),
    ("capacity_hold", "1e400", "retry.capacity_hold"),
])
def test_durations_have_an_upper_bound(make_config, key, value, needle):
    cfg = make_config(agents=("qa",))
    text = cfg.read_text()
    section = "[controller]" if key == "poll_interval" else "[retry]"
    text = "\n".join(line for line in text.splitlines() if not line.startswith(f"{key} ="))
    cfg.write_text(text.replace(section, f"{section}\n{key} = {value}", 1))
    for p in run_ftctl_many(["submit", "--all"], ["status"], config=cfg):
        one_line_error(p, str(cfg), needle)
    assert not (cfg.parent / "ftctl.db").exists()


def test_a_job_id_out_of_range_is_one_line(make_config):
    cfg = make_config(agents=("qa",))
    submit_jobs(cfg, "qa")
    for p in run_ftctl_many(["show", "1180591620717411303424"], ["cancel", "--", "-5"], ["retry", "0"], config=cfg):
        one_line_error(p, "no such job")
    # a usage mistake is one line too, not a box
    one_line_error(run_ftctl("cancel", "-5", config=cfg), "No such option: -5", "ftctl cancel --help")


def test_a_60_mb_line_is_refused_unread_and_a_long_run_does_not_hang(tmp_path):
    big = tmp_path / "big.jsonl"
    with open(big, "w") as fh:
        fh.write(json.dumps({"messages": [{"role": "user", "content": "a" * (60 * 2**20)},
                                          {"role": "assistant", "content": "ok"}]}) + "\n")
        fh.write(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "ok"}]}) + "\n")
        # a long run of one character (a pathological input for regexes)
        fh.write(json.dumps({"messages": [{"role": "user", "content": "a" * 100_000 + "@" + "7" * 1000},
                                          {"role": "assistant", "content": "ok"}]}) + "\n")
    started = time.monotonic()
    # a process of its own: a file this size is counted by a pool of worker processes
    p = run_ftctl("validate", str(big), "--model", "open-mistral-7b", "--json", timeout=60, process=True)
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert report["problems"]["too_long"]["lines"] == [1]
    assert report["examples"] == 2
    assert time.monotonic() - started < 45  # it used to run for minutes


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_workers_die_with_a_killed_validate(tmp_path):
    data = tmp_path / "data.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "tell me about the weather " * 30},
                                    {"role": "assistant", "content": "it is sunny today " * 30}]})
    data.write_text((line + "\n") * 40_000)
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "validate", str(data), "--model", "open-mistral-7b",
                             "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tempfile.gettempdir(), env=ftctl_env())
    try:
        end = time.monotonic() + 30
        workers: list[int] = []
        while time.monotonic() < end and len(workers) < 2 and proc.poll() is None:
            workers = _children(proc.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "validate never started its workers"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        end = time.monotonic() + 5
        while time.monotonic() < end and any(_alive(w) for w in workers):
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)]
    finally:
        if proc.poll() is None:
            proc.kill()


def _write_examples(path: Path, n: int, tag: str) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"{tag} question {i} " + "x" * 200},
                                              {"role": "assistant", "content": f"answer {i}"}]}) + "\n")
    return path


def test_prepare_killed_mid_write_leaves_the_previous_output_whole(tmp_path):
    # big enough that writing it takes a while; the kill follows the first bytes written, however
    # long a loaded machine takes to get there (no deadline but the process's own end)
    source = _write_examples(tmp_path / "raw.jsonl", 40_000, "new")
    out = _write_examples(tmp_path / "out.jsonl", 10, "old")
    before = out.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "prepare", str(source), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir(),
                            env=ftctl_env())
    try:
        tmp = []
        while not tmp and proc.poll() is None:
            tmp = [p for p in tmp_path.glob(".out.jsonl.*.tmp") if p.stat().st_size > 0]
            time.sleep(0.005)
        assert tmp, "prepare never started writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.read_bytes() == before  # the old file, whole; never a partial new one


def test_prepare_on_a_full_disk_is_one_line_and_keeps_the_old_output(tmp_path, monkeypatch):
    from ftctl.controller.preflight import prepare as prep

    source = _write_examples(tmp_path / "raw.jsonl", 50, "new")
    out = _write_examples(tmp_path / "out.jsonl", 10, "old")
    before = out.read_bytes()
    real = prep._write_chosen

    def full_disk(src, dst, *args):
        real(src, dst, *args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prep, "_write_chosen", full_disk)
    with pytest.raises(prep.PrepareError) as err:
        prep.prepare(source, out, provider="mistral")
    assert str(err.value) == f"{out}: cannot write (No space left on device); nothing was changed there"
    assert out.read_bytes() == before
    assert list(tmp_path.glob(".out.jsonl.*")) == []


BAD_NAMES = ["", "a\nb", "../../../tmp/x", "a;touch x", "$(touch x)", "-rf", ".hidden", "a" * 64, "qa/../x"]
RULE = "is not an agent name: names match [A-Za-z0-9][A-Za-z0-9._-]{0,62}"


def test_a_bad_agent_name_is_refused_wherever_it_enters(make_config, tmp_path):
    """18.17: a name becomes a file name (the export, Ray's artifacts) and a
    value in the hooks' payloads: the submit flag, the config's keys, its
    references and the API refuse anything but the rule, in one line."""
    import ftctl

    cfg = make_config(agents=("qa",))
    good = cfg.read_text()
    data = cfg.parent / "data" / "qa.jsonl"
    for name in BAD_NAMES:
        quoted = json.dumps(name)  # a TOML basic string
        adhoc = ["submit", "--agent", name, "--file", str(data), "--model", "open-mistral-7b", "--provider", "sim"]
        one_line_error(run_ftctl(*adhoc, config=cfg, cwd=tmp_path), f"--agent: {name!r} {RULE}")
        one_line_error(run_ftctl("submit", "--", name, config=cfg, cwd=tmp_path), f"agents: {name!r} {RULE}")
        assert not (cfg.parent / "ftctl.db").exists()
        for where, text in (
                ("agents", good + f'\n[agents.{quoted}]\nprovider = "sim"\nmodel = "open-mistral-7b"\n'
                                  f'training_file = "data/qa.jsonl"\n'),
                ("agents.qa.depends_on", good + f"depends_on = [{quoted}]\n"),
                # an "@name" model alone: with depends_on beside it, the list is checked first
                ("agents.qa.model", good.replace('model = "open-mistral-7b"', f"model = {json.dumps('@' + name)}"))):
            cfg.write_text(text)
            for args in (["submit", "--all"], ["status"]):
                one_line_error(run_ftctl(*args, config=cfg, cwd=tmp_path), f"{cfg}: {where}: {name!r} {RULE}")
        cfg.write_text(good)
        with ftctl.open(cfg) as ft:
            for call in (lambda: ft.submit([name]),
                         lambda: ft.submit(adhoc={"agent": name, "file": data, "provider": "sim",
                                                  "model": "open-mistral-7b"})):
                with pytest.raises(ftctl.BadInput, match=r"is not an agent name: names match") as err:
                    call()
                assert err.value.exit_code == 2 and "\n" not in str(err.value)
        assert not (cfg.parent / "ftctl.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # nothing ran: no `x` made here


def test_good_agent_names_pass_the_rule(make_config):
    names = ("qa_v2-final-1", "A" * 63, "7up")
    cfg = make_config(agents=names)
    data = cfg.parent / "data" / "7up.jsonl"
    done = run_ftctl("submit", "--all", "--json", config=cfg)
    dotted = run_ftctl("submit", "--agent", "qa.v2", "--file", str(data), "--model", "open-mistral-7b",
                       "--provider", "sim", "--json", config=cfg)
    assert done.returncode == 0 and dotted.returncode == 0, done.stderr + dotted.stderr
    assert sorted(r["agent"] for r in json.loads(done.stdout) + json.loads(dotted.stdout)) == sorted(names + ("qa.v2",))


@pytest.mark.parametrize("value,shown,why", [
    ('"ten"', '"ten"', "a whole number of 1 or more"),
    ("true", "true", "a whole number of 1 or more"),
    ("0", "0", "a whole number of 1 or more"),
    ("2.5", "2.5", "a whole number of 1 or more"),
    ("nan", "NaN", "a whole number of 1 or more"),
])
def test_a_hyperparameter_of_the_wrong_type_is_one_line(make_config, value, shown, why):
    """18.18: it used to be `internal error: ValueError`, exit 1."""
    cfg = make_config(agents=("qa",))
    cfg.write_text(cfg.read_text().replace("training_steps = 10", f"training_steps = {value}"))
    for p in run_ftctl_many(["submit", "qa"], ["submit", "--all"], config=cfg):
        one_line_error(p, f"agents.qa.hyperparameters.training_steps: {shown} is not {why}")
    assert not (cfg.parent / "ftctl.db").exists()


def test_hyperparameter_types_follow_the_provider(make_config):
    from ftctl.providers.registry import kind

    cfg = make_config(agents=("qa",))
    data = cfg.parent / "data" / "qa.jsonl"
    adhoc = ["submit", "--agent", "x", "--file", str(data), "--model", "open-mistral-7b", "--provider", "sim", "--hp"]
    bad_lr, bad_switch = run_ftctl_many([*adhoc, "learning_rate=fast"], [*adhoc, "epochs=-1"], config=cfg)
    one_line_error(bad_lr, '--hp learning_rate: "fast" is not a number above 0')
    one_line_error(bad_switch, "--hp epochs: -1 is not a number above 0")
    assert kind("simulated").bad_hyperparameter({"epochs": 1.5, "training_steps": 10.0, "weight_decay": 0}) is None
    assert kind("openai").bad_hyperparameter({"epochs": "auto", "batch_size": "auto"}) is None  # OpenAI chooses
    assert kind("openai").bad_hyperparameter({"epochs": 1.5}) == ("epochs", '1.5 is not a whole number of 1 or more'
                                                                            ' or "auto"')
    assert kind("together").bad_hyperparameter({"lora": 1}) == ("lora", "1 is not true or false")
    assert kind("together").bad_hyperparameter({"training_method": 3}) == ("training_method", "3 is not a name in "
                                                                                             "quotes")
    assert not (cfg.parent / "ftctl.db").exists()


def test_submit_on_a_full_database_is_one_line_naming_it(make_config):
    """18.18: SQLite's own "database or disk is full" (its page limit reached,
    as a full disk does), on a write after the database exists: one line that
    names the file, exit 4, nothing half-stored."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    cfg = make_config(agents=("qa",))
    db = cfg.parent / "ftctl.db"
    assert run_ftctl("submit", "qa", config=cfg).returncode == 0

    def no_room(dbapi_conn, _record):  # the file may not grow by a page: the disk is full
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    def jobs() -> int:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]

    event.listen(Engine, "connect", no_room)
    try:
        for _ in range(60):  # the pages the file has fill up within a few jobs
            before = jobs()
            p = run_ftctl("submit", "qa", "--force", config=cfg)
            if p.returncode != 0:
                break
        one_line_error(p, f"ftctl: error: database {db}: the disk is full (database or disk is full); "
                          f"nothing more was written", code=4)
        assert jobs() == before
    finally:
        event.remove(Engine, "connect", no_room)
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert run_ftctl("submit", "qa", "--force", config=cfg).returncode == 0  # room again: it works


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_json_nan_fails_validate_and_submit_naming_the_line(make_config, constant):
    cfg = make_config(agents=("qa",))
    data = cfg.parent / "data" / "qa.jsonl"
    lines = data.read_text().splitlines()
    lines[2] = lines[2][:-1] + f', "score": {constant}}}'
    data.write_text("\n".join(lines) + "\n")
    validate, submit = run_ftctl_many(["validate", str(data), "--json"], ["submit", "qa"], config=cfg)
    assert validate.returncode == 1
    assert json.loads(validate.stdout)["problems"]["invalid_json"]["lines"] == [3]
    one_line_error(submit, f"agents.qa.training_file: {data} line 3: invalid JSON: {constant} is not a JSON number")
    assert not (cfg.parent / "ftctl.db").exists()


def test_one_cause_one_exit_code_a_corrupt_database(make_config):
    """18.20: `status` said 2 (bad input) where `daemon` said 4 for the same
    corrupt file. Every command says 4, in one line naming the file."""
    import ftctl

    cfg = make_config(agents=("qa",))
    submit_jobs(cfg, "qa")
    db = cfg.parent / "ftctl.db"
    for extra in (db.with_name("ftctl.db-wal"), db.with_name("ftctl.db-shm")):
        extra.unlink(missing_ok=True)
    db.write_bytes(b"this is no database " * 100)
    commands = [["status"], ["status", "--json"], ["show", "1"], ["models"], ["models", "--all"], ["events"],
                ["logs", "1"], ["budget"], ["submit", "qa"], ["tick"], ["cancel", "1"], ["retry", "1"],
                ["promote", "1"], ["reject", "1"], ["wait", "1", "--timeout", "1s"]]
    for p in [*run_ftctl_many(*commands, config=cfg), run_ftctl("daemon", config=cfg)]:
        one_line_error(p, f"database {db}", "not a database", code=4)
    with ftctl.open(cfg) as ft:
        for call in (ft.status, ft.models, lambda: ft.show(1), lambda: ft.submit(["qa"])):
            with pytest.raises(ftctl.DatabaseUnavailable):
                call()
    assert db.read_bytes() == b"this is no database " * 100  # nothing wrote over it


def test_an_internal_error_has_its_own_exit_code(make_config, monkeypatch):
    """A bug is no outcome: not 1 (`wait`: a job did not succeed), but 70."""
    import ftctl

    cfg = make_config(agents=("qa",))
    submit_jobs(cfg, "qa")

    def broken(*_a, **_k):
        raise RuntimeError("a bug\nsecond line")

    monkeypatch.setattr(ftctl.Ftctl, "listing", broken)
    p = run_ftctl("status", config=cfg)
    assert p.returncode == 70
    assert p.stderr.strip().splitlines() == ["ftctl: internal error: RuntimeError: a bug (run with FTCTL_DEBUG=1 for "
                                             "the traceback)"]


def test_the_readme_lists_every_exit_code_the_cli_uses():
    import re

    import ftctl
    import ftctl.controller.cli  # noqa: F401 - loads the command line's module with its codes

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("### Exit codes"):readme.index("### Database and high availability")]
    listed = {int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)}
    used = {v for k, v in vars(sys.modules["ftctl.controller.cli.app"]).items() if k.startswith("EXIT_")}
    used |= {e.exit_code for e in (ftctl.BadInput, ftctl.Refused, ftctl.DatabaseUnavailable, ftctl.TimedOut)}
    assert used <= listed, used - listed
