"""[retention]'s deletion rules (engine.retention) as a pure function on a virtual clock."""

from datetime import datetime, timedelta

from ftctl.controller.engine.retention import FileFact, ModelFact, Rules, decide

T0 = datetime(2026, 1, 1)
DAY = 86400.0
RULES = Rules(rejected_after=7 * DAY, superseded_after=30 * DAY, files_after=30 * DAY, checkpoints_best=True)


def model(job_id, promotion, since, *, exported=False, base=False, agent="qa", prunes=False, fee=2.0):
    return ModelFact(job_id, agent, "mistral", f"ft:m:{job_id}", promotion, since, exported, base, fee, True, prunes)


MODELS = [
    model(1, "promoted", T0, agent="qa"),                 # superseded by job 3 at T0
    model(2, "rejected", T0),                             # rejected at T0
    model(3, "promoted", None, exported=True),            # qa's exported model
    model(4, "rejected", T0, base=True),                  # a live pipeline stage trains on it
    model(5, "evaluating", None),                         # its promotion is open
    model(6, "promoted", T0, base=True, agent="legal"),  # superseded, but a base
    model(7, "promoted", None, exported=True, agent="legal", prunes=True),  # a Ray model: checkpoints go
]
FILES = [FileFact("mistral", "file-a", "h1", 2, T0, needed=False),
         FileFact("mistral", "file-b", "h2", 3, T0, needed=True)]


def at(days):
    return {(d.kind, d.target) for d in decide(RULES, MODELS, FILES, T0 + timedelta(days=days))}


def test_nothing_without_retention():
    assert decide(None, MODELS, FILES, T0 + timedelta(days=400)) == []


def test_what_goes_as_the_clock_moves():
    assert at(0) == {("checkpoints", "ft:m:7")}
    assert at(6.9) == {("checkpoints", "ft:m:7")}
    assert at(7) == {("model", "ft:m:2"), ("checkpoints", "ft:m:7")}
    assert at(30) == {("model", "ft:m:1"), ("model", "ft:m:2"), ("file", "file-a"), ("checkpoints", "ft:m:7")}


def test_forty_days_on_only_the_exported_and_protected_remain():
    gone = {t for k, t in at(40) if k == "model"}
    kept = {m.model for m in MODELS} - gone
    assert kept == {"ft:m:3", "ft:m:4", "ft:m:5", "ft:m:6", "ft:m:7"}
    assert not ({"ft:m:1", "ft:m:2"} & kept)
    assert ("file", "file-b") not in at(40)  # a live job needs it


def test_a_rule_left_out_deletes_nothing_of_its_kind():
    only_rejected = Rules(rejected_after=7 * DAY)
    doomed = decide(only_rejected, MODELS, FILES, T0 + timedelta(days=400))
    assert [(d.kind, d.target, d.rule, d.fee_per_month) for d in doomed] == [("model", "ft:m:2", "rejected", 2.0)]


def test_a_provider_without_delete_keeps_its_models():
    undeletable = [ModelFact(**{**m.__dict__, "deletes": False}) for m in MODELS]
    assert {d.kind for d in decide(RULES, undeletable, [], T0 + timedelta(days=400))} == {"checkpoints"}
