"""provider = [...] at submit (issue 20.2): the list, its models and
hyperparameters per provider, each provider checked and priced; bad lists
in one line; a pipeline stage that cannot follow its upstream everywhere
says so in submit and in status."""

from __future__ import annotations

import json
import sqlite3
import textwrap

import pytest

from tests.conftest import ftctl_env, run_ftctl, write_training_file

PROVIDERS = """\
[providers.openai]
kind = "openai"
api_key_env = "FTCTL_TEST_API_KEY"

[providers.sim]
kind = "simulated"
"""


def site(tmp_path, agents: str):
    d = tmp_path / "site"
    for name in ("research", "report", "support"):
        write_training_file(d / "data" / f"{name}.jsonl")
    (d / "controller.toml").write_text(PROVIDERS + textwrap.dedent(agents))
    return d / "controller.toml"


SUPPORT = """
[agents.support]
provider = ["openai", "sim"]
model = { openai = "gpt-4o-mini-2024-07-18", sim = "open-mistral-7b" }
training_file = "data/support.jsonl"
hyperparameters = { openai = { epochs = 3 }, sim = { training_steps = 10 } }
fallback_after = "6h"
"""


def test_each_provider_in_the_list_is_checked_and_priced_and_stored_with_the_job(tmp_path):
    cfg = site(tmp_path, SUPPORT)
    p = run_ftctl("submit", "support", "--json", config=cfg, env=ftctl_env(FTCTL_TODAY="2026-11-01"))
    assert p.returncode == 0, p.stderr
    (result,) = json.loads(p.stdout)
    assert result["provider"] == "openai" and result["fallbacks"] == ["sim"]
    with sqlite3.connect(cfg.parent / "ftctl.db") as c:
        cost, fallbacks, after = c.execute("SELECT estimated_cost, fallbacks, fallback_after FROM jobs").fetchone()
    (sim,) = json.loads(fallbacks)
    assert sim["provider"] == "sim" and sim["model"] == "open-mistral-7b"
    assert sim["hyperparameters"] == {"training_steps": 10} and after == 6 * 3600
    # priced at each provider's own price: Mistral's $4 minimum on sim, tokens at OpenAI's
    assert sim["estimated_cost"] == 4.0 and cost != sim["estimated_cost"]


def test_a_closed_first_provider_starts_the_job_on_the_next(tmp_path):
    cfg = site(tmp_path, SUPPORT)
    p = run_ftctl("submit", "support", "--json", config=cfg, env=ftctl_env(FTCTL_TODAY="2027-01-07"))
    assert p.returncode == 0, p.stderr
    (result,) = json.loads(p.stdout)
    assert result["provider"] == "sim" and result["fallbacks"] == []
    assert any("skipped, closed: provider openai" in l and "2027-01-07" in l for l in p.stderr.splitlines()), p.stderr


@pytest.mark.parametrize("agent,needle", [
    ('provider = ["openai", "sim"]\nmodel = { openai = "gpt-4o-mini-2024-07-18" }',
     "agents.support.model.sim: required key is missing"),
    ('provider = ["openai", "sim"]\nmodel = { openai = "gpt-4o-mini", gpu = "x" }',
     "agents.support.model.gpu: not one of this agent's providers"),
    ('provider = ["openai", "nowhere"]\nmodel = "open-mistral-7b"', "unknown provider 'nowhere'"),
    ('provider = ["openai", "openai"]\nmodel = "open-mistral-7b"', "agents.support.provider: a provider is named twice"),
    ('provider = ["openai", "sim"]\nmodel = "m"\nhyperparameters = { gpu = { lora = true } }',
     "agents.support.hyperparameters.gpu: a table names one of this agent's providers"),
    ('provider = "sim"\nmodel = "m"\nfallback_after = "6h"', "agents.support.fallback_after: only with a list"),
    ('provider = "sim"\nmodel = "m"\nfallbacks = []', "agents.support.fallbacks: unknown key"),
])
def test_a_bad_provider_list_is_one_line_naming_its_key(tmp_path, agent, needle):
    cfg = site(tmp_path, f'[agents.support]\n{agent}\ntraining_file = "data/support.jsonl"\n')
    p = run_ftctl("submit", "support", config=cfg)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr
    assert not (cfg.parent / "ftctl.db").exists()


PIPELINE = """
[agents.research]
provider = ["openai", "sim"]
model = { openai = "gpt-4o-mini-2024-07-18", sim = "open-mistral-7b" }
training_file = "data/research.jsonl"
hyperparameters = { openai = { epochs = 3 }, sim = { training_steps = 10 } }

[agents.report]
provider = ["openai", "sim"]
model = { openai = "@research", sim = "%s" }
depends_on = ["research"]
training_file = "data/report.jsonl"
hyperparameters = { openai = { epochs = 3 }, sim = { training_steps = 10 } }
"""


def test_a_stage_that_does_not_follow_its_upstream_everywhere_says_so_in_submit_and_status(tmp_path):
    cfg = site(tmp_path, PIPELINE % "open-mistral-7b")
    env = ftctl_env(FTCTL_TODAY="2026-11-01")
    p = run_ftctl("submit", "report", config=cfg, env=env)
    assert p.returncode == 0, p.stderr
    line = "agents.report: on sim it trains from open-mistral-7b, not from research's model"
    assert sum(line in l for l in p.stderr.splitlines()) == 1, p.stderr
    status = run_ftctl("status", config=cfg, env=env)
    assert status.returncode == 0 and sum(line in l for l in status.stderr.splitlines()) == 1, status.stderr
    # following it on both is fine, and says nothing
    both = site(tmp_path / "b", PIPELINE % "@research")
    quiet = run_ftctl("submit", "report", config=both, env=env)
    assert quiet.returncode == 0 and "not from" not in quiet.stderr, quiet.stderr


def test_a_stage_cannot_follow_an_upstream_onto_a_provider_the_upstream_never_trains_on(tmp_path):
    text = (PIPELINE % "@research").replace('[agents.research]\nprovider = ["openai", "sim"]\nmodel = { openai = '
                                            '"gpt-4o-mini-2024-07-18", sim = "open-mistral-7b" }',
                                            '[agents.research]\nprovider = "openai"\nmodel = "gpt-4o-mini-2024-07-18"')
    text = text.replace('hyperparameters = { openai = { epochs = 3 }, sim = { training_steps = 10 } }\n\n[agents.report]',
                        'hyperparameters = { epochs = 3 }\n\n[agents.report]')
    cfg = site(tmp_path, text)
    p = run_ftctl("submit", "report", config=cfg)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "agents.report.model.sim: '@research' is trained on provider 'openai', not 'sim'" in lines[0], lines
