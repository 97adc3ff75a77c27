"""Dates as data (issue 20.1): what ends when, with its source; submit
refuses a job on a provider past its date and warns 10 days ahead; doctor
and the head of status name the date and the agents; a create refused as
closed is its own failure class."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from datetime import date

import pytest

from tests.conftest import ftctl_env, run_ftctl, write_training_file


def site(tmp_path, until: str | None = "2026-12-20", extra: str = ""):
    d = tmp_path / "site"
    write_training_file(d / "data" / "qa.jsonl")
    (d / "controller.toml").parent.mkdir(parents=True, exist_ok=True)
    (d / "controller.toml").write_text(textwrap.dedent(f"""\
        [providers.sim]
        kind = "simulated"
        {f'accepts_jobs_until = "{until}"' if until else ""}

        [providers.spare]
        kind = "simulated"

        [agents.qa]
        provider = "sim"
        model = "open-mistral-7b"
        training_file = "data/qa.jsonl"
        hyperparameters = {{ training_steps = 10 }}
        """) + textwrap.dedent(extra))
    return d / "controller.toml"


def jobs_in(cfg):
    db = cfg.parent / "ftctl.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return c.execute("SELECT agent, provider FROM jobs ORDER BY id").fetchall()


def test_a_date_in_the_past_refuses_the_submit_in_one_line_and_stores_nothing(tmp_path):
    cfg = site(tmp_path)
    p = run_ftctl("submit", "qa", config=cfg, env=ftctl_env(FTCTL_TODAY="2026-12-21"))
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftctl: error: agents.qa: provider sim"), p.stderr
    assert "2026-12-20" in lines[0] and "--force" in lines[0]
    assert jobs_in(cfg) == []
    forced = run_ftctl("submit", "qa", "--force", config=cfg, env=ftctl_env(FTCTL_TODAY="2026-12-21"))
    assert forced.returncode == 0, forced.stderr
    assert jobs_in(cfg) == [("qa", "sim")]


def test_ten_days_ahead_warns_naming_the_date_and_the_agents_and_submits(tmp_path):
    cfg = site(tmp_path)
    env = ftctl_env(FTCTL_TODAY="2026-12-10")
    p = run_ftctl("submit", "qa", config=cfg, env=env)
    assert p.returncode == 0, p.stderr
    warned = [l for l in p.stderr.splitlines() if l.startswith("warning: ")]
    assert len(warned) == 1 and "2026-12-20 (in 10 days)" in warned[0] and "agents: qa" in warned[0], p.stderr
    assert jobs_in(cfg) == [("qa", "sim")]
    status = run_ftctl("status", config=cfg, env=env)
    assert status.returncode == 0
    assert any("2026-12-20" in l and "agents: qa" in l for l in status.stderr.splitlines()), status.stderr
    doctor = run_ftctl("doctor", config=cfg, env=env)
    end = [l for l in doctor.stdout.splitlines() if "end sim" in l]
    assert end and "WARN" in end[0] and "2026-12-20" in end[0] and "qa" in end[0], doctor.stdout
    # 40 days ahead: nothing to say
    far = run_ftctl("submit", "qa", "--force", config=cfg, env=ftctl_env(FTCTL_TODAY="2026-11-10"))
    assert far.returncode == 0 and "warning" not in far.stderr, far.stderr


def test_the_shipped_openai_dates_with_their_source(tmp_path):
    from ftctl.controller.config import parse_config
    from ftctl.controller.ledger.closing import closed_for, endings, warnings

    cfg = parse_config(textwrap.dedent("""\
        [providers.openai]
        kind = "openai"
        [agents.support]
        provider = "openai"
        model = "gpt-4o-mini-2024-07-18"
        training_file = "x.jsonl"
        [agents.tiny]
        provider = "openai"
        model = "gpt-4.1-nano-2025-04-14"
        training_file = "x.jsonl"
        """), tmp_path / "controller.toml")
    found = {(e.provider, e.model): e for e in endings(cfg)}
    until = found[("openai", None)]
    assert until.fact.date == date(2027, 1, 6) and "deprecations" in until.fact.source and until.fact.checked
    nano = found[("openai", "gpt-4.1-nano-2025-04-14")]  # matched by the listed prefix
    assert nano.fact.date == date(2026, 10, 23) and nano.agents == ("tiny",)
    lines = warnings(cfg, date(2026, 12, 27))
    assert any("2027-01-06 (in 10 days)" in l and "support" in l for l in lines), lines
    assert closed_for(cfg, "openai", "gpt-4o-mini-2024-07-18", date(2027, 1, 6)) is None  # its last day
    assert closed_for(cfg, "openai", "gpt-4o-mini-2024-07-18", date(2027, 1, 7)) is not None
    assert closed_for(cfg, "openai", "gpt-4.1-nano-2025-04-14", date(2026, 12, 3)).model == "gpt-4.1-nano-2025-04-14"
    # the config's date wins over the shipped one
    over = parse_config(textwrap.dedent("""\
        [providers.openai]
        kind = "openai"
        accepts_jobs_until = "2027-06-30"
        """), tmp_path / "controller.toml")
    assert closed_for(over, "openai", "gpt-4o-mini-2024-07-18", date(2027, 1, 7)) is None


def test_mistral_is_deprecated_without_a_date_and_doctor_says_so(tmp_path):
    from ftctl.controller.config import parse_config
    from ftctl.controller.ledger.closing import endings

    cfg = parse_config('[providers.m]\nkind = "mistral"\n', tmp_path / "controller.toml")
    (ending,) = endings(cfg)
    assert ending.fact.date is None and "client-python#450" in ending.fact.source
    assert "no end date given" in ending.line(date(2026, 12, 3))


def test_a_bad_accepts_jobs_until_is_one_line(tmp_path):
    cfg = site(tmp_path, until="soon")
    p = run_ftctl("submit", "qa", config=cfg)
    assert p.returncode == 2
    assert "providers.sim.accepts_jobs_until" in p.stderr.strip().splitlines()[0], p.stderr
    assert jobs_in(cfg) == []


def test_a_bad_fixed_today_is_one_line_and_stores_nothing(tmp_path):
    cfg = site(tmp_path)
    p = run_ftctl("submit", "qa", config=cfg, env=ftctl_env(FTCTL_TODAY="next tuesday"))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "$FTCTL_TODAY" in lines[0], p.stderr
    assert jobs_in(cfg) == []
