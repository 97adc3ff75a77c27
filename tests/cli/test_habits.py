"""The command-line habits of kubectl, squeue and `sky jobs queue` (issue 12
§5), one test a habit, and what a new user reads first: the README's
examples and the shipped controller.toml."""

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO, ftctl_env, run_ftctl_many, submit_jobs, write_config, write_training_file


@pytest.fixture
def site(tmp_path):
    cfg = write_config(tmp_path / "site", agents=("qa", "legal"))
    submit_jobs(cfg)
    return cfg


def test_version_and_shell_completion():
    p = subprocess.run([sys.executable, "-m", "ftctl", "--version"], capture_output=True, text=True,
                       cwd=tempfile.gettempdir())
    assert p.returncode == 0 and re.fullmatch(r"ftctl \d+\.\d+\.\d+", p.stdout.strip())
    env = {**ftctl_env(), "_FTCTL_COMPLETE": "complete_bash", "COMP_WORDS": "ftctl status --out", "COMP_CWORD": "2"}
    done = subprocess.run([str(Path(sys.executable).parent / "ftctl")], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())  # the console script: completion keys on its name
    assert done.stdout.split() == ["--output"]
    (help_,) = run_ftctl_many(["--help"])
    assert "--install-completion" in help_.stdout and "--show-completion" in help_.stdout


def test_the_plain_path_imports_no_rich_and_no_orm(site):
    code = ("import sys\nfrom ftctl.controller.cli import main\nsys.argv = ['ftctl', '--config', sys.argv[1], 'status']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'sqlalchemy', 'sqlmodel', 'transitions', "
            "'alembic', 'structlog'}), file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True,
                       cwd=tempfile.gettempdir())
    assert p.returncode == 0 and p.stderr.strip().splitlines()[-1] == "[]", p.stderr
    assert "waiting for the daemon" in p.stdout


def test_a_progress_bar_on_stderr_for_a_big_file_on_a_terminal(tmp_path, monkeypatch, capsys):
    import ftctl.controller.preflight.dataset as dataset
    from ftctl.controller.cli import app

    cli = sys.modules["ftctl.controller.cli.app"]  # the module (the package's `app` is the Typer app)

    path = write_training_file(tmp_path / "big.jsonl", examples=3000)
    monkeypatch.setattr(dataset, "PROGRESS_EVERY", 100)
    for args in (["validate", str(path)], ["prepare", str(path), str(tmp_path / "out.jsonl")]):
        assert app(args, standalone_mode=False) in (0, None)  # stderr is not a terminal here: no bar
        quiet = capsys.readouterr()
        assert "validating" not in quiet.err and "preparing" not in quiet.err
        monkeypatch.setattr(cli, "stderr_is_terminal", lambda: True)
        monkeypatch.setattr(cli, "PROGRESS_MIN_BYTES", 1)  # "big"
        assert app(args, standalone_mode=False) in (0, None)
        shown = capsys.readouterr()
        assert f"{args[0][:-1]}ing big.jsonl" in shown.err and "\x1b[" in shown.err
        assert "\x1b[" not in shown.out and shown.out.count("\n") == quiet.out.count("\n")  # stdout unchanged
        monkeypatch.undo()
        monkeypatch.setattr(dataset, "PROGRESS_EVERY", 100)


def test_status_watch_in_a_pipe_prints_a_snapshot_every_interval(site):
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(site), "status", "--watch",
                             "--interval", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=tempfile.gettempdir(), env=ftctl_env())
    lines: list[str] = []
    end = time.monotonic() + 30
    while time.monotonic() < end and sum(line.startswith("ftctl status") for line in lines) < 4:
        lines.append(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    snapshots = [i for i, line in enumerate(lines) if line.startswith("ftctl status")]
    assert len(snapshots) == 4
    for i in snapshots[:3]:
        assert lines[i + 1].split()[:2] == ["ID", "AGENT"] and "\x1b[" not in lines[i + 1]
        assert lines[i + 2].split()[:2] == ["1", "qa"]


@pytest.mark.slow
def test_status_watch_into_a_pipe_while_a_daemon_moves_the_jobs(tmp_path):
    """`ftctl status --watch | cat` as CI uses it (issue 18.1): jobs wait for a
    slot (a reason that reads the slots when it is drawn), run and succeed
    under a real daemon while the watch writes to a pipe."""
    import threading

    from tests.conftest import Daemon

    cfg = write_config(tmp_path / "site", agents=("qa", "legal", "content", "support"), concurrency=1,
                       queue_time="0.1s", validate_time="0.1s", train_time="0.4s", poll="0.2s")
    submit_jobs(cfg)
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    watch = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(cfg), "status", "--watch",
                              "--interval", "0.2"], stdout=cat.stdin, stderr=subprocess.PIPE, text=True,
                             cwd=tempfile.gettempdir(), env=ftctl_env())
    cat.stdin.close()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(cat.stdout.readline, "")), daemon=True)
    reader.start()
    daemon = Daemon(cfg, "--until-done")
    try:
        assert daemon.wait(timeout=90) == 0, daemon.stderr[-2000:]
        # a snapshot drawn after the daemon finished: every job succeeded in it
        seen = len(lines)
        end = time.monotonic() + 30
        while time.monotonic() < end and watch.poll() is None and sum(
                line.startswith("ftctl status") for line in lines[seen:]) < 2:
            time.sleep(0.05)
    finally:
        watch.send_signal(signal.SIGINT)
        code = watch.wait(timeout=20)
        reader.join(timeout=10)
    err = watch.stderr.read()
    assert code == 0 and "internal error" not in err and "Traceback" not in err, err[-2000:]
    text = "".join(lines)
    assert "waiting for a slot (1/1 busy on sim)" in text  # drawn while the daemon held the slot
    last = text.rstrip("\n").split("\n\n")[-1].splitlines()
    assert last[0].startswith("ftctl status") and last[1].split()[:2] == ["ID", "AGENT"]
    assert [row.split()[4] for row in last[2:]] == ["succeeded"] * 4, last


def test_wait_says_when_no_daemon_drives_the_database(site):
    (p,) = run_ftctl_many(["wait", "1", "2", "--timeout", "0.3s", "--interval", "0.1"], config=site)
    assert p.returncode == 5
    assert "no daemon drives" in p.stderr and "jobs 1, 2 will not move until `ftctl daemon`" in p.stderr


def test_help_shows_bracketed_names(site):
    budget, validate = run_ftctl_many(["budget", "--help"], ["validate", "--help"], config=site)
    assert "[budget] in controller.toml" in budget.stdout
    assert "[preflight]" in " ".join(validate.stdout.split())


def test_the_demo_suggests_separate_commands(tmp_path):
    from ftctl.controller.demo import try_lines

    lines = try_lines(tmp_path / "demo dir" / "controller.toml", 2).splitlines()
    assert lines[0] == "try:"
    config = f"'{tmp_path / 'demo dir' / 'controller.toml'}'"
    assert lines[1:] == [f"  ftctl --config {config} {cmd}"
                         for cmd in ("status", "show 2", "models --all", "models -o toml")]


def test_validate_json_lists_every_line_and_words_agree_with_numbers(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    one.write_text(good + "\n")
    many.write_text(good + "\n" + "not json\n" * 15)
    single, as_json = run_ftctl_many(["validate", str(one)], ["validate", str(many), "--json"])
    assert single.stdout.startswith(f"{one}: 1 line, 1 example passes, 0 problems")
    report = json.loads(as_json.stdout)
    assert report["problems"]["invalid_json"]["lines"] == list(range(2, 17))  # all 15, not the first 10
    (text,) = run_ftctl_many(["validate", str(many)])
    assert "16 lines, 1 example passes, 15 problems" in text.stdout
    assert "lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 5 more" in text.stdout


def test_the_unit_and_doctor_warn_about_paths_the_sandbox_hides(site):
    from ftctl.controller.service.unit import hidden_paths

    assert hidden_paths({"the ftctl executable": Path("/opt/ftctl/bin/ftctl"),
                         "the config": Path("/etc/ftctl/controller.toml")}) == []
    found = hidden_paths({"the ftctl executable": Path("/home/me/.venv/bin/ftctl"),
                          "its Python interpreter": Path("/root/.pyenv/versions/3.11.7/bin/python3.11"),
                          "the config": Path("/var/tmp/controller.toml")})
    assert [f.split(" lies under ")[1].split(",")[0] for f in found] == ["/home", "/root", "/var/tmp"]
    assert "ProtectHome=yes" in found[0] and "/opt/ftctl" in found[0] and "PrivateTmp=yes" in found[2]
    unit, doctor = run_ftctl_many(["service-unit"], ["doctor", "--json"], config=site)
    assert unit.returncode == 0 and unit.stdout.startswith("# ftctl")
    assert f"ftctl: warning: the config {site} lies under /tmp, which the unit's PrivateTmp=yes hides" in unit.stderr
    (paths,) = [c for c in json.loads(doctor.stdout) if c["check"] == "unit paths"]
    assert paths["level"] == "warn" and "PrivateTmp=yes" in paths["detail"]


def test_the_readmes_examples_name_files_that_exist():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    for block in blocks:
        for path in re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.jsonl)\b", block):
            made = re.search(rf"(>|prepare \S+) {re.escape(path)}\b", block)
            assert made or (REPO / path).exists(), f"README names {path}, which a checkout does not have"
    prose = re.findall(r"`ftctl [^`]*?([\w./-]+\.jsonl)", readme)
    assert prose and all((REPO / p).exists() for p in prose), prose


def test_the_shipped_config_says_how_it_differs_from_the_demo(tmp_path):
    from ftctl.controller.demo import write_demo_files

    shipped_text = (REPO / "controller.toml").read_text()
    shipped = tomllib.loads(shipped_text)
    demo = tomllib.loads(write_demo_files(tmp_path).read_text())
    comments = " ".join(line.split("#", 1)[1] for line in shipped_text.splitlines() if "#" in line)
    assert "ftctl demo" in comments
    for section in ("controller", "retry"):
        for key in set(shipped[section]) | set(demo[section]):
            if shipped[section].get(key) != demo[section].get(key):
                assert key in comments, f"[{section}] {key} differs from the demo and no comment says so"
    for key in set(shipped["providers"]["sim"]) | set(demo["providers"]["sim"]):
        if shipped["providers"]["sim"].get(key) != demo["providers"]["sim"].get(key):
            assert key in comments, f"[providers.sim] {key} differs from the demo and no comment says so"
    for name in set(shipped["agents"]) ^ set(demo["agents"]):
        assert name in comments, f"agent {name} is in one of the two only and no comment says so"


@pytest.mark.slow
def test_the_demo_runs_and_ends_with_separate_commands(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ftctl", "demo", "--dir", str(tmp_path / "demo"), "--train-time", "0.5"],
                       capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir(), env=ftctl_env())
    assert p.returncode == 0, p.stderr[-2000:]
    assert "5/5 agents succeeded" in p.stdout
    assert not set("┏┃│╭━─") & set(p.stdout), "the demo drew boxes into a pipe"  # 18.4: plain text off a terminal
    assert re.search(r"^ID +AGENT +PROVIDER +MODEL +STATE", p.stdout, re.M)
    assert p.stdout.rstrip().splitlines()[-4:] == [f"  ftctl --config {tmp_path / 'demo' / 'controller.toml'} {cmd}"
                                                   for cmd in ("status", "show 5", "models --all", "models -o toml")]


@pytest.mark.slow
def test_the_demo_and_the_emulator_leave_no_temporary_folder_behind(tmp_path):
    """18.6: each run left its temporary folder. Without --dir / --state-file
    it is removed at the end; with them, what was asked for is kept."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = ftctl_env(TMPDIR=str(scratch))
    demo = subprocess.run([sys.executable, "-m", "ftctl", "demo", "--train-time", "0.3"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "ftctl demo in " + str(scratch / "ftctl-demo-") in demo.stdout and "is removed now" in demo.stdout
    assert list(scratch.iterdir()) == []
    for state in (None, tmp_path / "kept" / "emu.db"):
        args = ["--state-file", str(state)] if state else []
        emu = subprocess.Popen([sys.executable, "-m", "ftctl", "emulator", "--kind", "mistral", "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
        try:
            ready = emu.stdout.readline()  # "mistral emulator on http://... (state PATH...)"
            assert " emulator on http://127.0.0.1:" in ready, ready + emu.stderr.read()
            made = list(scratch.iterdir())
            assert (made == [] and state.exists()) if state else (len(made) == 1 and (made[0] / "state.db").exists())
            emu.send_signal(signal.SIGTERM)
            assert emu.wait(timeout=20) == 0
        finally:
            if emu.poll() is None:
                emu.kill()
        assert list(scratch.iterdir()) == []
        assert state is None or state.exists()


def test_show_in_a_pipe_is_plain_text_and_json_records_have_one_shape(site):
    """18.4: `show` drew its history as a box table in a pipe and printed
    hyperparameters as a Python dict; `status` said `id` where the other
    records say `job_id`; `models -o json` was an object, `--all` an array."""
    import sqlite3

    with sqlite3.connect(site.parent / "ftctl.db") as c:
        c.execute("UPDATE jobs SET state = 'succeeded', promotion = 'promoted', fine_tuned_model = 'ft:m:qa:1', "
                  "promoted_at = updated_at WHERE id = 1")
    show, status, shown, events, logs, models, every, submit = run_ftctl_many(
        ["show", "1"], ["status", "--json"], ["show", "1", "--json"], ["events", "-o", "json"], ["logs", "1", "--json"],
        ["models", "-o", "json"], ["models", "--all", "-o", "json"], ["submit", "legal", "--json"], config=site)
    assert not set("┏┃│╭━─") & set(show.stdout), show.stdout
    assert "  hyperparameters  training_steps = 10, learning_rate = 0.0001\n" in show.stdout
    assert "{" not in show.stdout and "'" not in show.stdout
    history = show.stdout.split("\nhistory\n", 1)[1].splitlines()
    assert history[0].split() == ["AT", "FROM", "TO", "TRIGGER", "PROVIDER", "REASON"]
    assert history[1].split()[2:5] == ["-", "prepared", "create"]
    for record in [*json.loads(status.stdout), json.loads(shown.stdout), json.loads(logs.stdout),
                   *json.loads(submit.stdout)]:
        assert "job_id" in record and "id" not in record, record
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert lines and all(e["id"].startswith("evt_") and isinstance(e["job_id"], int) for e in lines)
    promoted, all_models = json.loads(models.stdout), json.loads(every.stdout)
    assert isinstance(promoted, list) and isinstance(all_models, list)
    assert promoted == [r for r in all_models if r["promotion"] == "promoted"] and promoted[0]["job_id"] == 1
    assert {tuple(r) for r in promoted + all_models} == {("agent", "job_id", "provider", "model", "promotion",
                                                          "promoted_at", "succeeded_at")}
