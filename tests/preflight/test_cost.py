"""Cost truth: OpenAI's own epoch rule, Mistral's storage fee in estimates and
the budget, and every price's source."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from ftctl.controller.ledger.pricing import estimate, price_for, price_table
from ftctl.providers.registry import kind as kind_of
from tests.conftest import run_ftctl


@pytest.mark.parametrize("examples,epochs", [(10, 10), (20, 5), (30, 3), (5_000, 3), (8_333, 3), (8_334, 2),
                                             (20_000, 1), (100_000, 1), (1, 25)])
def test_openai_auto_epochs_follow_the_cookbook_rule(examples, epochs):
    assert kind_of("openai").default_epochs(examples)[0] == epochs
    est = estimate(price_for("openai", "gpt-4o-mini-2024-07-18"), 1000 * examples, examples)
    assert est.epochs == epochs and est.trained_tokens == 1000 * examples * epochs
    assert "OpenAI's auto rule" in est.notes[0]


def test_the_estimate_was_3x_off_both_ways_before_and_now_is_not():
    price = price_for("openai", "gpt-4o-mini")
    big, small = estimate(price, 20_000 * 50, 20_000), estimate(price, 10 * 50, 10)
    assert big.trained_tokens == 20_000 * 50  # 1 epoch, not the 3 once assumed
    assert small.trained_tokens == 10 * 50 * 10  # 10 epochs, not 3


def test_every_shipped_price_names_its_source_and_when_it_was_checked():
    table = price_table()
    entries = [(kind, name, e) for kind, models in table.items() if isinstance(models, dict)
               for name, e in models.items() if isinstance(e, dict)]
    assert len(entries) >= 15
    for kind, name, entry in entries:
        assert entry.get("source", "").startswith("https://"), (kind, name)
        datetime.strptime(entry["checked"], "%Y-%m-%d")
    assert all(e["storage_per_month"] == 2.0 for k, _, e in entries if k == "mistral")


def test_estimate_shows_the_storage_fee_and_its_source(make_config):
    cfg = make_config(agents=("qa",))
    data = cfg.parent / "data" / "qa.jsonl"
    p = run_ftctl("estimate", str(data), "--provider", "mistral", "--model", "open-mistral-7b", "--epochs", "2",
                  "--json")
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert {"tokens", "epochs", "trained_tokens", "cost", "source"} <= set(got)
    assert got["epochs"] == 2 and got["trained_tokens"] == 2 * got["tokens"]
    assert got["storage_per_month"] == 2.0 and "https://mistral.ai/pricing" in got["source"]
    text = run_ftctl("estimate", str(data), "--provider", "mistral", "--model", "open-mistral-7b").stdout
    assert "keeping the model costs $2.00 a month more" in text and "checked 2026-11-01" in text


def test_the_budget_counts_storage_for_each_kept_model_in_its_period(tmp_path):
    from ftctl.controller.ledger.creation import create_job
    from ftctl.controller.engine.jobs import fire
    from ftctl.models import Store

    store = Store(f"sqlite:///{tmp_path / 'ftctl.db'}")
    now = datetime(2026, 3, 31)
    f = tmp_path / "d.jsonl"
    f.write_text("{}\n")
    for i, made in enumerate((now - timedelta(days=90), now - timedelta(days=15))):
        job = create_job(store, agent=f"a{i}", provider="m", model="open-mistral-7b", training_file=f,
                         content_hash=str(i), hyperparameters={}, now=made, storage_per_month=2.0,
                         estimated_cost=4.0)
        fire(store, job.id, "submit", updates={"client_token": f"t{i}"}, now=made)
        fire(store, job.id, "succeed", updates={"fine_tuned_model": f"ft:m:{i}"}, now=made)
    since = now - timedelta(days=30)
    # the old model all month ($2), the new one for its 15 days ($1)
    assert store.storage_since(since, now) == pytest.approx(3.0)
    assert store.spent_in(since, now) == pytest.approx(3.0 + 4.0)  # plus the job finished in the period
    store.close()
