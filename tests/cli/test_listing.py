"""Listings that scale with what they print (issue 13) and read like kubectl's
and squeue's (issue 12 §5): a bounded default `status`, filters in SQL,
-o json|wide|name, --no-headers, plain columns in a pipe, --json streamed."""

import json
import sqlite3
from datetime import datetime, timedelta

import pytest

from ftctl.models import Store
from tests.conftest import run_ftctl, run_ftctl_many, write_config

NOW = datetime(2026, 3, 1, 12, 0, 0)


def seed(site, jobs):
    """Rows as ftctl would have left them: (state, agent, provider, minutes ago finished)."""
    db = site.parent / "ftctl.db"
    Store(f"sqlite:///{db}").close()
    rows = []
    for i, (state, agent, provider, ago) in enumerate(jobs, start=1):
        at = (NOW - timedelta(minutes=ago)).strftime("%Y-%m-%d %H:%M:%S.%f")
        rows.append((agent, provider, "open-mistral-7b", "x.jsonl", "h", "{}", f"id{i}", 0, state, 1, at, at,
                     f"ft:open-mistral-7b:{agent}-{i}:x" if state == "succeeded" else None,
                     {"prepared": "slot", "running": "training"}.get(state),
                     {"prepared": '{"provider": "%s"}' % provider, "running": '{"status": "RUNNING"}'}.get(state),
                     "promoted" if state == "succeeded" else None, at if state == "succeeded" else None))
    with sqlite3.connect(db) as c:
        c.executemany("INSERT INTO jobs (agent, provider, model, training_file, content_hash, hyperparameters, "
                      "identity, replica, state, attempt, created_at, updated_at, fine_tuned_model, reason_code, "
                      "reason_args, promotion, promoted_at, cancel_pending) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)", rows)


@pytest.fixture
def site(tmp_path):
    cfg = write_config(tmp_path / "site", agents=("qa",))
    cfg.write_text(cfg.read_text() + '\n[providers.other]\nkind = "simulated"\n')
    # 60 succeeded (the 10 oldest first), 2 failed, 1 cancelled, 3 waiting, 2 running
    seed(cfg, [("succeeded", f"a{i % 3}", "sim", 1000 - i) for i in range(60)]
         + [("failed", "a0", "sim", 500), ("failed", "a1", "other", 400), ("cancelled", "a2", "sim", 300)]
         + [("prepared", "a0", "sim", 5), ("prepared", "a1", "other", 4), ("prepared", "a2", "sim", 3)]
         + [("running", "a0", "sim", 2), ("running", "a1", "other", 1)])
    return cfg


def ids(out):
    return [int(line.split()[0]) for line in out.strip().splitlines()[1:]]


def test_the_default_status_is_every_unfinished_job_and_the_last_50_finished(site):
    default, all_, limited, active = run_ftctl_many(["status"], ["status", "--all"], ["status", "--limit", "5"],
                                                    ["status", "--active"], config=site)
    shown = ids(default.stdout)
    assert set(range(64, 69)) <= set(shown)  # every unfinished job
    finished = [i for i in shown if i < 64]
    assert len(finished) == 50 and finished == sorted(finished) and shown == sorted(shown)
    assert 63 in finished and 1 not in finished  # the last to finish, not the first
    assert "13 older finished jobs not shown (--all shows every job" in default.stderr
    assert len(ids(all_.stdout)) == 68 and "not shown" not in all_.stderr
    assert len(ids(limited.stdout)) == 5 + 5 and ids(active.stdout) == list(range(64, 69))


def test_filters_run_in_sql_and_refuse_unknown_states(site):
    by_state, by_two, by_provider, by_agent, bad = run_ftctl_many(
        ["status", "--state", "failed"], ["status", "--state", "running,prepared", "-o", "name"],
        ["status", "--provider", "other", "--all", "-o", "json"], ["status", "--agent", "a2", "--all", "-o", "json"],
        ["status", "--state", "done"], config=site)
    assert ids(by_state.stdout) == [61, 62]
    assert by_two.stdout.split() == [f"job/{i}" for i in range(64, 69)]
    assert {j["provider"] for j in json.loads(by_provider.stdout)} == {"other"}
    assert [j["job_id"] for j in json.loads(by_provider.stdout)] == [62, 65, 68]
    assert {j["agent"] for j in json.loads(by_agent.stdout)} == {"a2"}
    assert bad.returncode == 2 and bad.stderr.startswith("ftctl: error: --state: unknown value 'done'")


def test_output_formats_and_their_aliases(site):
    o_json, as_json, fmt_json, wide, name, no_headers = run_ftctl_many(
        ["status", "-o", "json"], ["status", "--json"], ["status", "--format", "json"], ["status", "-o", "wide"],
        ["status", "-o", "name"], ["status", "--no-headers"], config=site)
    def jobs(p):  # (the age moves on between commands)
        return [{k: v for k, v in j.items() if k != "age_seconds"} for j in json.loads(p.stdout)]

    assert jobs(o_json) == jobs(as_json) == jobs(fmt_json)
    assert len(jobs(o_json)) == 55
    assert wide.stdout.splitlines()[0].split() == ["ID", "AGENT", "PROVIDER", "MODEL", "STATE", "ATT", "AGE", "COST",
                                                   "PROVIDER-JOB", "PROVIDER-STATUS", "TOKENS", "UPDATED", "REASON",
                                                   "/", "FINE-TUNED", "MODEL"]
    assert name.stdout.splitlines()[-1] == "job/68" and len(name.stdout.splitlines()) == 55
    assert no_headers.stdout.splitlines()[0].split()[0] == "14"
    bad = run_ftctl("status", "-o", "yaml", config=site)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "yaml" in bad.stderr


def test_a_pipe_gets_plain_aligned_columns(site):
    (p,) = run_ftctl_many(["status", "--all"], config=site)
    lines = p.stdout.splitlines()
    assert not any(ch in p.stdout for ch in "│┃━─┏┗╭")  # no box drawing
    assert [line.split()[0] for line in lines] == ["ID"] + [str(i) for i in range(1, 69)]  # awk '{print $1}'
    reason_at = lines[0].index("REASON")
    assert all(line[reason_at - 2:reason_at] == "  " for line in lines[1:])  # the columns line up
    assert lines[64].endswith("waiting for a slot (all busy on sim)") and lines[-1].endswith("training (RUNNING)")


def test_json_streams_one_job_a_line(site):
    (p,) = run_ftctl_many(["status", "--json", "--all"], config=site)
    lines = p.stdout.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 70
    assert [json.loads(line.rstrip(","))["job_id"] for line in lines[1:-1]] == list(range(1, 69))


def test_models_one_grouped_read_and_its_formats(site):
    table, wide, name, toml, env, as_json, fmt, filtered, no_headers = run_ftctl_many(
        ["models"], ["models", "-o", "wide"], ["models", "-o", "name"], ["models", "-o", "toml"],
        ["models", "--format", "env"], ["models", "--json"], ["models", "--format", "json"],
        ["models", "--agent", "a1", "-o", "json"], ["models", "--no-headers"], config=site)
    latest = {"a0": "ft:open-mistral-7b:a0-58:x", "a1": "ft:open-mistral-7b:a1-59:x", "a2": "ft:open-mistral-7b:a2-60:x"}
    records = json.loads(as_json.stdout)  # an array of model records, as `models --all -o json` gives
    assert records == json.loads(fmt.stdout) and {r["agent"]: r["model"] for r in records} == latest
    assert all(r["promotion"] == "promoted" and r["provider"] == "sim" for r in records)
    assert table.stdout.splitlines()[0].split() == ["AGENT", "FINE-TUNED", "MODEL"]
    assert wide.stdout.splitlines()[1].split()[:3] == ["a0", "sim", "58"]
    assert name.stdout.split() == list(latest.values())
    assert toml.stdout.startswith("[models]\na0 = ") and "FTCTL_MODEL_A2=ft:open-mistral-7b:a2-60:x" in env.stdout
    assert [(r["agent"], r["model"]) for r in json.loads(filtered.stdout)] == [("a1", latest["a1"])]
    assert no_headers.stdout.split()[0] == "a0"


def test_a_model_still_at_the_gate_is_listed_however_long_ago_its_job_finished(site):
    # job 1 finished first of all, but its model waits for the gate: the daemon still works on it
    with sqlite3.connect(site.parent / "ftctl.db") as c:
        c.execute("UPDATE jobs SET promotion = 'candidate', promoted_at = NULL, reason_code = 'eval_budget', "
                  "reason_args = '{\"estimate\": 1.0}' WHERE id = 1")
    default, waiting = run_ftctl_many(["status"], ["wait", "1", "--timeout", "0.3s", "--interval", "0.1"],
                                      config=site)
    shown = ids(default.stdout)
    assert shown[0] == 1 and len([i for i in shown if i < 64]) == 51
    assert "12 older finished jobs not shown" in default.stderr
    # `wait` on it says nothing will move without a daemon, then times out
    assert waiting.returncode == 5 and "no daemon drives" in waiting.stderr and "1 candidate" in waiting.stderr
