import pytest

from ftctl.controller.engine.jobs import JobNotFound, StaleState, fire, user_transition
from ftctl.controller.ledger import states as lc
from ftctl.controller.ledger.creation import create_job
from ftctl.controller.ledger.reasons import text
from ftctl.models import Store

# the expected machine, written out independently of lifecycle.TRANSITIONS
EXPECTED = {
    ("prepared", "submit"): "queued",
    ("prepared", "fail"): "failed",
    ("prepared", "cancel"): "cancelled",
    ("queued", "start"): "running",
    ("queued", "succeed"): "succeeded",
    ("queued", "fail"): "failed",
    ("queued", "requeue"): "prepared",
    ("queued", "cancel"): "cancelled",
    ("running", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "requeue"): "prepared",
    ("running", "cancel"): "cancelled",
    ("failed", "retry"): "prepared",
    ("cancelled", "retry"): "prepared",
}
TRIGGERS = ("submit", "start", "succeed", "fail", "requeue", "cancel", "retry")
ALL = [(s, t) for s in lc.STATES for t in TRIGGERS]


@pytest.mark.parametrize("state,trigger", ALL)
def test_machine_matches_the_documented_lifecycle(state, trigger):
    if (state, trigger) in EXPECTED:
        assert lc.next_state(state, trigger) == EXPECTED[(state, trigger)]
        assert lc.can(state, trigger)
    else:
        with pytest.raises(lc.InvalidTransition):
            lc.next_state(state, trigger)
        assert not lc.can(state, trigger)


def test_terminal_states_only_allow_retry_or_nothing():
    assert lc.allowed_triggers("succeeded") == []
    assert lc.allowed_triggers("failed") == ["retry"]
    assert lc.allowed_triggers("cancelled") == ["retry"]


def test_shared_machine_keeps_each_rows_state():
    # the add_model pitfall: attaching a row must not reset it to `initial`
    assert lc.next_state("running", "succeed") == "succeeded"
    assert lc.next_state("queued", "start") == "running"
    with pytest.raises(lc.InvalidTransition):
        lc.next_state("succeeded", "start")


def test_unknown_trigger_or_state_is_refused():
    with pytest.raises(lc.InvalidTransition):
        lc.next_state("prepared", "explode")
    with pytest.raises(lc.InvalidTransition):
        lc.next_state("limbo", "submit")


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'ftctl.db'}")
    yield s
    s.close()


def _job(store, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"messages": []}\n')
    return create_job(store, agent="qa", provider="sim", model="m", training_file=f, content_hash="h",
                      hyperparameters={})


def _drive(store, job_id, state):
    path = {"prepared": [], "queued": ["submit"], "running": ["submit", "start"],
            "succeeded": ["submit", "succeed"], "failed": ["fail"], "cancelled": ["cancel"]}[state]
    for trig in path:
        fire(store, job_id, trig, updates={"client_token": "tok-" + trig} if trig == "submit" else None)


@pytest.mark.parametrize("state,trigger", ALL)
def test_store_transition_writes_row_and_history_together(store, tmp_path, state, trigger):
    job = _job(store, tmp_path)
    _drive(store, job.id, state)
    before_events = len(store.events(job.id))
    before = store.get_job(job.id)
    if (state, trigger) in EXPECTED:
        prev, after = fire(store, job.id, trigger, reason=text("because"))
        assert (prev, after.state) == (state, EXPECTED[(state, trigger)])
        events = store.events(job.id)
        assert len(events) == before_events + 1
        assert (events[-1].from_state, events[-1].to_state, events[-1].trigger, events[-1].reason) == (
            state, EXPECTED[(state, trigger)], trigger, "because")
        assert store.get_job(job.id).state == EXPECTED[(state, trigger)]
    else:
        with pytest.raises(lc.InvalidTransition):
            fire(store, job.id, trigger, reason=text("because"), updates={"attempt": 99})
        after = store.get_job(job.id)
        assert after.model_dump() == before.model_dump()
        assert len(store.events(job.id)) == before_events


def test_stale_expectation_changes_nothing(store, tmp_path):
    job = _job(store, tmp_path)
    fire(store, job.id, "cancel")
    with pytest.raises(StaleState):
        fire(store, job.id, "submit", expect="prepared")
    assert store.get_job(job.id).state == "cancelled"


def test_unknown_job(store):
    with pytest.raises(JobNotFound):
        fire(store, 12345, "cancel")


def test_user_retry_resets_attempts_and_provider_links(store, tmp_path):
    job = _job(store, tmp_path)
    fire(store, job.id, "submit", updates={"attempt": 3, "client_token": "qa-1", "provider_job_id": "p1"})
    fire(store, job.id, "fail", reason=text("failed after 3 attempts"))
    _, row = user_transition(store, job.id, "retry")
    assert (row.state, row.attempt, row.client_token, row.provider_job_id) == ("prepared", 0, None, None)


def test_submit_records_an_attempt_with_its_token(store, tmp_path):
    job = _job(store, tmp_path)
    fire(store, job.id, "submit", updates={"attempt": 1, "client_token": "qa-abc"})
    fire(store, job.id, "requeue", updates={"client_token": None}, attempt_outcome=("capacity", False))
    (attempt,) = store.attempts(job.id)
    assert (attempt.client_token, attempt.outcome, attempt.counted) == ("qa-abc", "capacity", False)


# -- the promotion of a succeeded job's model: the second machine -----------------------------

PROMOTION = {
    ("candidate", "evaluate"): "evaluating",
    ("candidate", "skip"): "promoted",
    ("candidate", "decline"): "rejected",
    ("candidate", "promote"): "promoted",
    ("candidate", "reject"): "rejected",
    ("evaluating", "accept"): "promoted",
    ("evaluating", "decline"): "rejected",
    ("evaluating", "promote"): "promoted",
    ("evaluating", "reject"): "rejected",
    ("rejected", "promote"): "promoted",
    ("promoted", "reject"): "rejected",
}
PROMOTION_TRIGGERS = ("evaluate", "skip", "accept", "decline", "promote", "reject")


def test_promotion_machine_matches_the_documented_one():
    for state in lc.PROMOTION_STATES:
        for trigger in PROMOTION_TRIGGERS:
            if (state, trigger) in PROMOTION:
                assert lc.next_promotion(state, trigger) == PROMOTION[(state, trigger)]
            else:
                with pytest.raises(lc.InvalidTransition, match="model"):
                    lc.next_promotion(state, trigger)
    # the two machines do not share triggers or states
    assert not set(PROMOTION_TRIGGERS) & set(TRIGGERS)
    with pytest.raises(lc.InvalidTransition):
        lc.next_state("succeeded", "promote")


def test_a_job_that_succeeds_becomes_a_candidate_or_is_promoted_in_the_same_write(store, tmp_path):
    from ftctl.controller.engine.jobs import fire_promotion

    gated, plain = _job(store, tmp_path), _job(store, tmp_path)
    for job, promotion in ((gated, None), (plain, "skip")):
        fire(store, job.id, "submit", updates={"client_token": f"t{job.id}"})
        fire(store, job.id, "succeed", updates={"fine_tuned_model": f"ft:m:{job.id}"}, promotion=promotion)
    assert store.get_job(gated.id).promotion == "candidate"
    row = store.get_job(plain.id)
    assert row.promotion == "promoted" and row.promoted_at is not None
    assert [(e.trigger, e.from_state, e.to_state) for e in store.events(plain.id)][-2:] == [
        ("succeed", "queued", "succeeded"), ("skip", "candidate", "promoted")]
    # a person overrides; a move the machine refuses changes nothing
    fire_promotion(store, plain.id, "reject", reason=text("by hand"))
    with pytest.raises(lc.InvalidTransition):
        fire_promotion(store, plain.id, "accept")
    assert store.get_job(plain.id).promotion == "rejected"
    assert store.events(plain.id)[-1].trigger == "reject"


def test_an_override_ends_an_evaluation_under_way_and_frees_its_estimate(store, tmp_path):
    from ftctl.controller.engine.jobs import fire_promotion

    job = _job(store, tmp_path)
    fire(store, job.id, "submit", updates={"client_token": "t"})
    fire(store, job.id, "succeed", updates={"fine_tuned_model": "ft:m:1"})
    fire_promotion(store, job.id, "evaluate", evaluation={
        "metric": "exact", "file": "e.jsonl", "file_hash": "h", "examples": 3, "candidate_model": "ft:m:1",
        "compare_model": "m", "min_improvement": 0.1, "estimated_cost": 2.5})
    assert store.committed() == 2.5
    fire_promotion(store, job.id, "promote", reason=text("by hand"))
    assert store.evaluations([job.id])[job.id].finished_at is not None and store.committed() == 0.0
