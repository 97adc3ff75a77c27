"""The CLI as a user runs it: real subprocesses, a real SQLite file."""

import tempfile
import json
import sqlite3
import sys

import pytest

from tests.conftest import submit_jobs, run_ftctl, run_ftctl_many


def db_snapshot(site):
    db = site / "ftctl.db"
    if not db.exists():
        return None
    with sqlite3.connect(db) as c:
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("jobs", "job_events", "attempts", "provider_state", "uploaded_files")}


def assert_one_line_error(proc, *needles, code=None):
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ftctl: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def site(make_config):
    cfg = make_config()
    return cfg


def test_submit_status_show_models(site):
    p, status, shown, table, models = run_ftctl_many(["submit", "--all"], ["status", "--json"], ["show", "1", "--json"],
                                                     ["status"], ["models", "--format", "json"], config=site)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("submitted job") == 5
    status = json.loads(status.stdout)
    assert [(j["agent"], j["state"], j["attempt"]) for j in status] == [
        (a, "prepared", 0) for a in ("content", "legal", "qa", "support", "analyst")]
    assert all(j["reason"] == "waiting for the daemon" for j in status)
    shown = json.loads(shown.stdout)
    assert shown["events"][0]["to"] == "prepared" and shown["events"][0]["trigger"] == "create"
    assert table.returncode == 0 and "waiting for the daemon" in table.stdout
    assert json.loads(models.stdout) == []


def test_submit_twice_skips_the_same_job(site):
    _, again, forced = run_ftctl_many(["submit", "qa"], ["submit", "qa"], ["submit", "qa", "--force"], config=site)
    assert again.returncode == 0
    assert "skipped qa: job 1 has the same data and settings and is prepared" in again.stdout
    assert "submitted job 2" in forced.stdout


def test_tick_runs_one_pass(site):
    submit_jobs(site)
    p = run_ftctl("tick", "--json", config=site)  # a process of its own: it takes the daemon lock
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["states"] == {"queued": 2, "prepared": 3}
    status, table = run_ftctl_many(["status", "--json"], ["status"], config=site)
    reasons = [j["reason"] for j in json.loads(status.stdout)]
    assert reasons.count("waiting for a slot (2/2 busy on sim)") == 3
    assert "daemon: not running: nothing moves until `ftctl daemon`" in table.stderr


def test_cancel_and_retry(site):
    submitted, ticked, c, job, r, again = run_ftctl_many(
        ["submit", "qa", "legal"], ["tick"], ["cancel", "1"], ["show", "1", "--json"], ["retry", "1"],
        ["show", "1", "--json"], config=site)
    assert ticked.returncode == 0  # both queued at the provider
    assert c.returncode == 0, c.stderr
    assert "job 1 cancelled; provider job" in c.stdout and "CANCELLED" in c.stdout
    job = json.loads(job.stdout)
    assert job["state"] == "cancelled" and job["cancel_pending"] is False
    assert [e["trigger"] for e in job["events"]][-2:] == ["cancel", "provider-cancel"]
    assert r.returncode == 0 and "prepared again" in r.stdout
    assert json.loads(again.stdout)["state"] == "prepared"


def test_refused_transition_is_one_line_and_changes_nothing(site):
    run_ftctl_many(["submit", "qa"], ["cancel", "1"], config=site)
    before = db_snapshot(site.parent)
    p = run_ftctl("cancel", "1", config=site)
    assert_one_line_error(p, "job 1", "cannot cancel a cancelled job", code=3)
    assert db_snapshot(site.parent) == before


def test_unknown_job(site):
    submit_jobs(site, "qa")
    before = db_snapshot(site.parent)
    *missing, abc = run_ftctl_many(["show", "999999"], ["cancel", "999999"], ["retry", "999999"], ["show", "abc"],
                                   config=site)
    for p in missing:
        assert_one_line_error(p, "no job 999999", code=2)
    assert_one_line_error(abc, "job 'abc'", code=2)
    assert db_snapshot(site.parent) == before


def test_submit_unknown_agent_or_missing_file_stores_nothing(site):
    submit_jobs(site, "qa")
    before = db_snapshot(site.parent)
    (site.parent / "data" / "legal.jsonl").unlink()
    unknown, everything, no_file, no_provider = run_ftctl_many(
        ["submit", "qa", "nosuch"], ["submit", "--all"],
        ["submit", "--agent", "x", "--file", "/nonexistent.jsonl", "--model", "m", "--provider", "sim"],
        ["submit", "--agent", "x", "--file", str(site), "--model", "m", "--provider", "nope"], config=site)
    assert_one_line_error(unknown, "unknown agent 'nosuch'", code=2)
    assert_one_line_error(everything, "agents.legal.training_file", "does not exist", code=2)
    assert_one_line_error(no_file, "--file", "does not exist", code=2)
    assert_one_line_error(no_provider, "unknown provider 'nope'", code=2)
    assert db_snapshot(site.parent) == before


def test_adhoc_submit(site):
    f = site.parent / "data" / "qa.jsonl"
    p, shown = run_ftctl_many(["submit", "--agent", "triage", "--file", str(f), "--model", "open-mistral-nemo",
                               "--provider", "sim", "--hp", "training_steps=4", "--json"], ["show", "1", "--json"],
                              config=site)
    assert p.returncode == 0, p.stderr
    (res,) = json.loads(p.stdout)
    assert res["job_id"] == 1
    job = json.loads(shown.stdout)
    assert (job["agent"], job["model"], job["hyperparameters"]) == ("triage", "open-mistral-nemo",
                                                                    {"training_steps": 4})


BAD_CONFIGS = [
    ("[controller]\npoll_intervall = '1s'\n", "controller.poll_intervall: unknown key"),
    ("[providers.sim]\nkind = 'simulated'\nconcurrency = 'two'\n", "providers.sim.concurrency"),
    ("[providers.sim]\nkind = 'simulated'\nconcurency = 2\n", "providers.sim.concurency: unknown key"),
    ("[providers.x]\nkind = 'azure'\n", "providers.x.kind: unknown provider kind 'azure'"),
    ("[controller]\npoll_interval = 'soon'\n", "controller.poll_interval"),
    ("[controller\n", "invalid TOML"),
    ("[controller]\ndatabase = 'mysql://db'\n", "controller.database: expected sqlite:///PATH or postgresql://"),
    ("[agents.qa]\nprovider = 'ghost'\nmodel = 'm'\ntraining_file = 'x'\n", "agents.qa.provider: unknown provider"),
    ("[agents.qa]\nprovider = 'sim'\n[providers.sim]\nkind = 'simulated'\n", "agents.qa.model: required key"),
]


@pytest.mark.parametrize("text,needle", BAD_CONFIGS)
def test_malformed_config_is_one_line_naming_the_key(site, text, needle):
    bad = site.parent / "bad.toml"
    bad.write_text("[controller]\ndatabase = 'sqlite:///ftctl.db'\n" if "[controller" not in text else "")
    bad.write_text(bad.read_text() + text)
    submit_jobs(site, "qa")
    refused = run_ftctl_many(["status"], ["submit", "--all"], config=bad)
    for p in refused:
        assert_one_line_error(p, str(bad), needle, code=2)
    snapshot = db_snapshot(site.parent)
    assert len(snapshot["jobs"]) == 1 and len(snapshot["job_events"]) == 1  # bad.toml stored nothing


def test_missing_config_file(tmp_path):
    p = run_ftctl("status", config=tmp_path / "nope.toml")
    assert_one_line_error(p, "nope.toml", "not found", code=2)


def test_config_search_order(site, tmp_path):
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}
    # ./controller.toml in the working directory
    p = run_ftctl("submit", "qa", cwd=site.parent, env=env)
    assert p.returncode == 0, p.stderr
    # $FTCTL_CONFIG wins over ./controller.toml
    other = tmp_path / "elsewhere"
    other.mkdir()
    p = run_ftctl("status", "--json", cwd=other, env={**env, "FTCTL_CONFIG": str(site)})
    assert [j["agent"] for j in json.loads(p.stdout)] == ["qa"]


def test_read_commands_import_no_provider(site):
    submit_jobs(site)
    code = (
        "import sys\n"
        "from ftctl.controller.cli import app\n"
        f"for args in (['status'], ['status', '--json'], ['show', '1'], ['models', '--format', 'env']):\n"
        f"    try:\n"
        f"        app(['--config', {str(site)!r}] + args)\n"
        f"    except SystemExit as e:\n"
        f"        assert not e.code, e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('apscheduler', 'mistralai', 'openai', 'httpx', 'mistral_common', 'bpe_openai') or m.startswith('ftctl.controller.engine.tick'))\n"
        "print('LOADED', bad)\n"
    )
    import subprocess
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "LOADED []"


def test_status_before_any_submit_is_empty_not_an_error(site):
    p = run_ftctl("status", "--json", config=site)
    assert p.returncode == 0 and json.loads(p.stdout) == []
    assert not (site.parent / "ftctl.db").exists()
