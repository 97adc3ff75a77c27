"""`ftctl rehome`: a promoted model trained again on another provider and
promoted only on parity with it, the gate asking each model on its own
provider; the export file switches only then. In process: the real store,
two simulated services, a virtual clock shared by all."""

import hashlib
import json
import random
import tomllib

import pytest

from tests.conftest import reason_of, write_config

import ftctl
from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store
from ftctl.providers import build_provider

NEW = """
[providers.new]
kind = "simulated"
queue_time = "1s"
validate_time = "1s"
train_time = "5s"

[export]
path = "agents/models.toml"
"""
PARITY = """
[agents.support.eval]
file = "data/support.jsonl"
compare_to = "promoted"
min_improvement = -0.2
"""


class Asking:
    """A simulated provider that counts its chat calls by model; `forget`:
    the prompts (their last words) a model of this provider answers without
    having learned them (a model that learned less than the one it replaces)."""

    def __init__(self, inner, forget=()):
        self.inner, self.name, self.forget = inner, inner.name, set(forget)
        self.asked: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def complete(self, model, messages, *, max_tokens=None):
        self.asked.append(model)
        if messages[-1]["content"] in self.forget:
            return "(not learned)"
        return self.inner.complete(model, messages, max_tokens=max_tokens)


def site(tmp_path, extra=PARITY):
    path = write_config(tmp_path / "site", agents=("support",), extra=NEW + extra)
    cfg = load_config(path)
    return cfg, Store(cfg.database_url)


def ticker(cfg, store, clock, forget=()):
    old = Asking(build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch)))
    new = Asking(build_provider("new", cfg.providers["new"], cfg.provider_env(clock.epoch)), forget)
    return Ticker(cfg, store, {"sim": old, "new": new}, clock=clock, rng=random.Random(0)), old, new


def run(rec, clock, store, on_tick=None, ticks=300):
    for _ in range(ticks):
        result = rec.tick()
        if on_tick:
            on_tick()
        if result.all_terminal:
            return result
        clock.advance(1)
    raise AssertionError([(j.id, j.state, j.promotion, reason_of(j)) for j in store.list_jobs()])


def promoted_on_sim(cfg, store, clock, **kw):
    """The support agent's model, trained and promoted on `sim` (its first
    model: compared with its base, which knows nothing)."""
    store_submissions(store, plan_submissions(cfg, ["support"]))
    rec, old, new = ticker(cfg, store, clock, **kw)
    run(rec, clock, store)
    (job,) = store.list_jobs()
    assert (job.provider, job.promotion) == ("sim", "promoted")
    old.asked.clear()  # what its own gate asked
    return rec, old, new, job


def exported(cfg):
    return tomllib.loads(cfg.resolve("agents/models.toml").read_text())["models"]


@pytest.mark.parametrize("forget, outcome", [((), "promoted"), (("question 1 for support", "question 3 for support"),
                                                                  "rejected")])
def test_rehome_promotes_a_model_on_parity_and_rejects_one_that_is_worse_and_only_then_exports(
        tmp_path, clock, forget, outcome):
    cfg, store = site(tmp_path)
    rec, old, new, first = promoted_on_sim(cfg, store, clock, forget=forget)
    assert exported(cfg) == {"support": first.fine_tuned_model}
    with ftctl.open(cfg.path) as ft:
        (moved,) = ft.rehome(["support"], to="new")
    assert (moved["job_id"], moved["from_job"], moved["to_provider"], moved["to_model"]) == (
        2, first.id, "new", "open-mistral-7b")
    assert moved["mapping"] == "hyperparameters simulated -> simulated: kept training_steps, learning_rate"
    seen = []
    run(rec, clock, store, on_tick=lambda: seen.append((store.get_job(2).state, exported(cfg))))
    job = store.get_job(2)
    assert (job.agent, job.provider, job.state, job.promotion) == ("support", "new", "succeeded", outcome)
    # until the new model is settled the old one stays exported
    assert all(e == {"support": first.fine_tuned_model} for state, e in seen[:-1])
    run_ = store.evaluations([2])[2]
    assert (run_.compare_model, run_.compare_provider, run_.candidate_model) == (
        first.fine_tuned_model, "sim", job.fine_tuned_model)
    # each model was asked each example once, on its own provider
    assert old.asked.count(first.fine_tuned_model) == 5 and set(new.asked) == {job.fine_tuned_model}
    assert len(new.asked) == 5
    if outcome == "promoted":
        assert (run_.candidate_score, run_.compare_score) == (1.0, 1.0)
        assert reason_of(job) == (f"promoted: improvement +0.00 >= -0.20 (exact 1.00 vs 1.00 for "
                                  f"{first.fine_tuned_model}, n=5)")
        assert exported(cfg) == {"support": job.fine_tuned_model}
    else:
        assert (run_.candidate_score, run_.compare_score) == (0.6, 1.0)
        assert reason_of(job).startswith("rejected: improvement -0.40 < -0.20 (exact 0.60 vs 1.00")
        assert exported(cfg) == {"support": first.fine_tuned_model}
    history = [e.reason for e in store.events(2)]
    assert history[0].startswith(f"re-homes job 1 ({first.fine_tuned_model} on sim); hyperparameters")


def test_golden_records_the_promoted_models_answers_and_proves_parity_on_them(tmp_path, clock):
    cfg, store = site(tmp_path, extra="")  # no [eval]: nothing to prove parity on but a golden set
    rec, old, new, first = promoted_on_sim(cfg, store, clock)
    with ftctl.open(cfg.path) as ft:
        with pytest.raises(ftctl.BadInput, match=r"no \[agents.support.eval\] to prove parity on: pass --golden N"):
            ft.rehome(["support"], to="new")
        (moved,) = ft.rehome(["support"], to="new", golden=3)
    assert moved["golden"] == 3 and moved["job_id"] == 2
    with store.read() as s:
        from sqlmodel import select

        from ftctl.models import GoldenAnswer, Rehome

        (rehome,) = s.exec(select(Rehome)).all()
        golden = s.exec(select(GoldenAnswer).order_by(GoldenAnswer.example)).all()
    assert (rehome.job_id, rehome.from_provider, rehome.golden) == (2, "sim", 3)
    # three prompts spread over the five examples, answered by the promoted model as it was taught
    assert [(g.prompt[-1]["content"], g.expected) for g in golden] == [
        ("question 0 for support", "answer 0"), ("question 1 for support", "answer 1"),
        ("question 3 for support", "answer 3")]
    with store.write() as s:  # the stored answers are what both models are scored against: one changed
        s.get(GoldenAnswer, golden[2].id).expected = "an answer neither model was taught"
    run(rec, clock, store)
    job = store.get_job(2)
    run_ = store.evaluations([2])[2]
    assert [a.score for a in store.eval_answers(run_.id)] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    # the golden answers are the expected ones; the promoted model's own score on them is the bar
    assert (run_.file, run_.examples, run_.candidate_score, run_.compare_score) == (
        f"golden:{rehome.id}", 3, 0.666667, 0.666667)
    assert old.asked == [first.fine_tuned_model] * 3 and new.asked == [job.fine_tuned_model] * 3
    assert job.promotion == "promoted" and exported(cfg) == {"support": job.fine_tuned_model}


def test_compare_to_promoted_compares_a_new_model_with_the_agents_promoted_one_and_the_first_with_its_base(
        tmp_path, clock):
    cfg, store = site(tmp_path)
    rec, old, new, first = promoted_on_sim(cfg, store, clock)
    assert store.evaluations([1])[1].compare_model == "open-mistral-7b"  # no promoted model before it
    store_submissions(store, plan_submissions(cfg, ["support"]), force=True)
    run(rec, clock, store)
    second = store.get_job(2)
    run_ = store.evaluations([2])[2]
    assert (second.provider, run_.compare_model, run_.compare_provider) == ("sim", first.fine_tuned_model, None)
    assert (run_.candidate_score, run_.compare_score, second.promotion) == (1.0, 1.0, "promoted")
    assert old.asked.count(first.fine_tuned_model) == 5 and new.asked == []


def test_show_names_the_provider_the_comparison_answered_on(tmp_path, clock):
    from ftctl.controller.cli.views import evaluation_text

    cfg, store = site(tmp_path)
    rec, old, new, first = promoted_on_sim(cfg, store, clock)
    with ftctl.open(cfg.path) as ft:
        ft.rehome(["support"], to="new")
        run(rec, clock, store)
        ev = ft.show(2)["evaluation"]
    assert (ev["compare_model"], ev["compare_provider"]) == (first.fine_tuned_model, "sim")
    assert evaluation_text(ev) == (f"exact on n=5 examples: candidate 1.00, {first.fine_tuned_model} on sim 1.00; "
                                   f"improvement +0.00 (needed -0.20)")
