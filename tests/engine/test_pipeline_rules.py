"""Pipelines and the evaluation gate in the decision step alone: no database,
no provider, a virtual clock."""

import random
from datetime import datetime, timedelta

from ftctl.controller.engine import decide as rc
from ftctl.controller.engine.gate import score
from ftctl.controller.engine.policy import Budget, Policy
from ftctl.controller.ledger.reasons import Live
from ftctl.providers.base import ProviderJob

NOW = datetime(2026, 1, 5, 9, 0, 0)
POLICY = Policy(max_attempts=3, backoff_initial=30, backoff_max=600)
FT1 = "ft:open-mistral-7b:feedback-1a2b3c4d:20260105:aaaa"


def job(id, state="prepared", agent=None, **kw):
    kw.setdefault("created_at", NOW - timedelta(minutes=10) + timedelta(seconds=id))
    return rc.JobView(id=id, agent=agent or f"a{id}", provider="sim", state=state, **kw)


def up(job_id, state, model=None, pid=None, agent="feedback"):
    return rc.UpstreamView(job_id, agent, state, model, pid)


def view(jobs=(), limit=2):
    return rc.ProviderView(name="sim", configured_limit=limit, jobs=tuple(jobs))


def decide(jobs, pv=None, now=NOW, budget=None, gates=None, gated=frozenset()):
    return rc.decide(jobs, {"sim": pv or view()}, now, POLICY, random.Random(1), budget, gates, gated)


def of(kind, decisions):
    return [d for d in decisions if isinstance(d, kind)]


def text(note, live=None):
    from ftctl.controller.ledger.reasons import render

    return render(note.updates["reason_code"], note.updates["reason_args"], live)


def test_a_downstream_job_waits_with_its_reason_and_takes_no_slot():
    downstream = job(2, agent="conversation", model_job_id=1, upstream=(up(1, "running"),))
    out = decide([downstream, job(3)], view(limit=1))
    assert [d.job_id for d in of(rc.Submit, out)] == [3]  # the slot goes to a job that can start
    (note,) = [n for n in of(rc.Note, out) if n.job_id == 2]
    assert text(note) == "waiting for feedback (job 1, running)"
    # nothing new to say next tick: no write
    again = job(2, agent="conversation", model_job_id=1, upstream=(up(1, "running"),), **note.updates)
    assert not [n for n in of(rc.Note, decide([again])) if n.job_id == 2]


def test_admitted_once_the_upstream_succeeded_naming_its_model():
    downstream = job(2, model_job_id=1, upstream=(up(1, "succeeded", FT1, "ft-job-1"),))
    (submit,) = of(rc.Submit, decide([downstream]))
    assert (submit.job_id, submit.base_model, submit.upstream_ref) == (2, FT1, "ft-job-1")


def test_every_dependency_must_succeed_not_only_the_model_one():
    downstream = job(3, model_job_id=1, upstream=(up(1, "succeeded", FT1), up(2, "queued", agent="style")))
    out = decide([downstream])
    assert not of(rc.Submit, out)
    assert text(of(rc.Note, out)[0]) == "waiting for style (job 2, queued)"


def test_a_failed_or_cancelled_upstream_fails_the_downstream_job_without_a_provider_call():
    for state in ("failed", "cancelled"):
        downstream = job(2, model_job_id=1, upstream=(up(1, state),))
        out = decide([downstream], pv=rc.ProviderView(name="sim", configured_limit=2, jobs=None))
        (t,) = of(rc.Transition, out)
        assert (t.job_id, t.trigger, t.reason.code) == (2, "fail", "upstream_failed")
        assert t.reason.text().startswith(f"upstream feedback (job 1) is {state}; nothing was sent")
        assert not of(rc.Submit, out)


def test_a_job_that_succeeds_is_promoted_at_once_unless_its_agent_has_a_gate():
    running = [job(1, "running", agent="plain", provider_job_id="p1"),
               job(2, "running", agent="gated", provider_job_id="p2")]
    done = [ProviderJob(id=p, status="succeeded", raw_status="SUCCESS", fine_tuned_model=f"ft:m:{p}")
            for p in ("p1", "p2")]
    out = decide(running, view(done), gated=frozenset({"gated"}))
    assert {t.job_id: t.promotion for t in of(rc.Transition, out)} == {1: "skip", 2: None}


def gate(job_id, **kw):
    kw.setdefault("examples", 5)
    kw.setdefault("compare_model", "open-mistral-7b")
    return rc.GateView(job_id, **kw)


def test_a_candidate_starts_its_evaluation_within_the_budget():
    cand = job(1, "succeeded", promotion="candidate")
    (p,) = of(rc.Promote, decide([cand], gates={1: gate(1, estimate=0.5, start={"metric": "exact"})}))
    assert (p.trigger, p.evaluation) == ("evaluate", {"metric": "exact", "estimated_cost": 0.5})
    # over what is left: it waits, saying so, and starts nothing
    out = decide([cand], gates={1: gate(1, estimate=0.5)}, budget=Budget(total=10.0, spent=9.8))
    assert not of(rc.Promote, out)
    assert text(of(rc.Note, out)[0], Live(budget_left=0.2)) == ("evaluation waits, over budget: estimate $0.50 > "
                                                                 "$0.20 left")


def test_an_evaluation_under_way_holds_its_estimate_against_the_budget():
    evaluating = job(1, "succeeded", promotion="evaluating")
    waiting = job(2, estimated_cost=4.0)
    out = decide([evaluating, waiting], gates={1: gate(1, started=True, estimate=3.0)},
                 budget=Budget(total=6.0))
    assert not of(rc.Submit, out)  # 6 - 3 held by the evaluation < 4
    assert of(rc.Evaluate, out) == [rc.Evaluate(1)]


def test_the_gate_promotes_an_improvement_and_rejects_a_model_that_learned_nothing():
    evaluating = job(1, "succeeded", promotion="evaluating")
    learned = gate(1, started=True, answered=10, candidate_score=1.0, compare_score=0.2, min_improvement=0.08)
    (p,) = of(rc.Promote, decide([evaluating], gates={1: learned}))
    assert (p.trigger, p.evaluation["improvement"]) == ("accept", 0.8)
    assert p.reason.text() == ("promoted: improvement +0.80 >= +0.08 (exact 1.00 vs 0.20 for open-mistral-7b, n=5)")
    nothing = gate(1, started=True, answered=10, candidate_score=0.2, compare_score=0.2, min_improvement=0.08)
    (p,) = of(rc.Promote, decide([evaluating], gates={1: nothing}))
    assert p.trigger == "decline" and p.reason.text().startswith("rejected: improvement +0.00 < +0.08")
    # exactly the improvement asked for passes (no float noise)
    edge = gate(1, started=True, answered=10, candidate_score=0.3, compare_score=0.22, min_improvement=0.08)
    assert of(rc.Promote, decide([evaluating], gates={1: edge}))[0].trigger == "accept"


def test_an_evaluation_waits_out_its_retry_after_and_fails_on_a_lasting_error():
    evaluating = job(1, "succeeded", promotion="evaluating")
    later = gate(1, started=True, answered=3, not_before=NOW + timedelta(seconds=30))
    assert [d for d in decide([evaluating], gates={1: later}) if not isinstance(d, (rc.Slots, rc.Line))] == []
    assert of(rc.Evaluate, decide([evaluating], now=NOW + timedelta(seconds=31), gates={1: later}))
    broken = gate(1, started=True, answered=3, error="HTTP 404: model not found")
    (p,) = of(rc.Promote, decide([evaluating], gates={1: broken}))
    assert p.trigger == "decline" and "model not found" in p.reason.text()
    # a candidate whose eval file is gone is rejected, never evaluated
    (p,) = of(rc.Promote, decide([job(2, "succeeded", promotion="candidate")],
                                 gates={2: gate(2, problem="eval file e.jsonl does not exist")}))
    assert p.trigger == "decline"


def test_metrics():
    assert score("exact", " yes ", "yes\n") == 1.0 and score("exact", "yes", "yes!") == 0.0
    assert score("contains", "42", "the answer is 42.") == 1.0 and score("contains", "42", "41") == 0.0
    assert score("json", '{"a": 1, "b": [2]}', '{"b": [2], "a": 1}') == 1.0
    assert score("json", '{"a": 1}', "not json") == 0.0
