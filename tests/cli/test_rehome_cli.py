"""`ftctl rehome` on the command line: `--plan` prints what would move and
changes nothing; bad input is one line and changes nothing either."""

import hashlib
import json
import random

import pytest

from tests.conftest import run_ftctl, write_config
from tests.cli.test_cli import assert_one_line_error

from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store
from ftctl.providers import build_provider

NEW = """
[providers.new]
kind = "simulated"
train_time = "40s"
queue_time = "5s"
validate_time = "5s"

[agents.support.eval]
file = "data/support.jsonl"
compare_to = "promoted"
min_improvement = -0.02
"""


@pytest.fixture
def promoted(tmp_path, clock):
    """A site whose agents support and qa have a model promoted on `sim`
    (the daemon is done: every file is closed)."""
    path = write_config(tmp_path / "site", agents=("support", "qa"), extra=NEW)
    cfg = load_config(path)
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    sim = build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))
    rec = Ticker(cfg, store, {"sim": sim}, clock=clock, rng=random.Random(0))
    for _ in range(100):
        if rec.tick().all_terminal:
            break
        clock.advance(1)
    assert [(j.agent, j.promotion) for j in store.list_jobs()] == [("support", "promoted"), ("qa", "promoted")]
    rec.close()
    store.close()
    return path


def fingerprint(site):
    """The bytes of every file of the database (the WAL too, if one is left)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(site.glob("ftctl.db*"))}


def test_plan_prints_the_moves_their_cost_time_and_end_dates_and_changes_nothing(promoted, monkeypatch):
    from ftctl.providers.simulated import SimulatedKind

    site = promoted.parent
    before = fingerprint(site)
    p = run_ftctl("rehome", "--all", "--to", "new", "--golden", "40", "--plan", config=promoted)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("qa: ft:open-mistral-7b:qa-") and lines[0].endswith(
        "(job 2 on sim) -> new, open-mistral-7b: would move")
    assert lines[1] == "  estimate $4.00, about 50s (providers.new's queue, validate and train times)"
    assert lines[2] == "  hyperparameters simulated -> simulated: kept training_steps, learning_rate"
    assert lines[3].startswith("  promoted only on parity with ft:open-mistral-7b:qa-") and lines[3].endswith(
        " on a golden set of 5 prompts from its training data (exact, as good)")  # all there are
    assert lines[4].endswith(" on sim: no known end date")
    # an agent with an eval file that compares with the promoted model proves parity on it, not on a golden set
    assert lines[5].startswith("support: ") and lines[8].endswith(
        " on data/support.jsonl (exact, at most 2 points worse)")
    assert lines[-1] == "2 models would move, estimate $8.00 in all; nothing was changed (--plan)"
    assert fingerprint(site) == before
    # an end date the descriptor knows is named, with its source
    monkeypatch.setattr(SimulatedKind, "ends", {"open-mistral-7b": {"date": "2026-10-23", "source": "a notice"}},
                        raising=False)
    p = run_ftctl("rehome", "support", "--to", "new", "--plan", "--json", config=promoted)
    assert p.returncode == 0, p.stderr
    (move,) = json.loads(p.stdout)
    assert (move["agent"], move["from_provider"], move["to_provider"], move["job_id"]) == ("support", "sim", "new",
                                                                                          None)
    assert (move["ends"], move["ends_source"], move["estimated_cost"]) == ("2026-10-23", "a notice", 4.0)
    assert move["gate"].endswith("on data/support.jsonl (exact, at most 2 points worse)")
    assert fingerprint(site) == before


@pytest.mark.parametrize("args, needles", [
    (("support", "--to", "nowhere"), ("--to: unknown provider 'nowhere'",)),
    (("qa", "--to", "new"), ("rehome qa: no [agents.qa.eval] to prove parity on: pass --golden N",)),
    (("qa", "--to", "new", "--golden", "0"), ("--golden 0",)),
    (("nobody", "--to", "new"), ("agent 'nobody' has no promoted model",)),
    (("support", "--to", "new", "--model", "gpt-unknown"), ("gpt-unknown",)),
])
def test_bad_input_is_one_line_and_changes_nothing(promoted, args, needles):
    before = fingerprint(promoted.parent)
    p = run_ftctl("rehome", *args, config=promoted)
    assert_one_line_error(p, *needles, code=2)
    assert fingerprint(promoted.parent) == before


def test_a_second_rehome_of_the_same_spec_is_skipped_and_stores_nothing(promoted):
    first = run_ftctl("rehome", "qa", "--to", "new", "--golden", "2", "--json", config=promoted)
    assert first.returncode == 0, first.stderr
    assert [(m["job_id"], m["note"]) for m in json.loads(first.stdout)] == [(3, None)]
    before = fingerprint(promoted.parent)
    again = run_ftctl("rehome", "qa", "--to", "new", "--golden", "2", config=promoted)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].endswith(
        "(job 2 on sim): skipped, already re-homed as job 3 (prepared); no known end date")
    assert fingerprint(promoted.parent) == before


def test_changed_training_data_is_refused_a_rehome_trains_the_same_bytes(promoted):
    data = promoted.parent / "data" / "support.jsonl"
    data.write_text(data.read_text() + json.dumps({"messages": [{"role": "user", "content": "new"},
                                                                {"role": "assistant", "content": "one"}]}) + "\n")
    before = fingerprint(promoted.parent)
    p = run_ftctl("rehome", "support", "--to", "new", config=promoted)
    assert_one_line_error(p, f"training file {data} changed since job 1 trained on it", code=2)
    assert fingerprint(promoted.parent) == before
