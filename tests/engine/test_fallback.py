"""A provider that closes (issue 20.1) and the move to the next provider
(20.2), as the pure decision step sees them: who moves, when, and who never
does (a job the provider knows; an intent not proven absent)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from ftctl.controller.engine import decide as rc
from ftctl.controller.engine.outcomes import after_create
from ftctl.controller.engine.policy import Policy
from ftctl.providers.base import (AuthError, ModelClosed, PermanentError, ProviderClosed, ProviderJob,
                                  error_from_status)

NOW = datetime(2027, 1, 7, 12, 0, 0)
CLOSED_403 = ("HTTP 403: Fine-tuning is not available for your organization: OpenAI no longer accepts new "
              "self-serve fine-tuning jobs.")


def job(state="prepared", fallbacks=("sim",), **kw) -> rc.JobView:
    return rc.JobView(id=kw.pop("id", 1), agent="support", provider="openai", state=state, fallbacks=tuple(fallbacks),
                      created_at=NOW - timedelta(hours=1), **kw)


def pv(**kw) -> rc.ProviderView:
    base = dict(name="openai", configured_limit=2, jobs=(), listed_at=NOW, settle=31.0)
    base.update(kw)
    return rc.ProviderView(**base)


def decide(jobs, view):
    return rc.decide(jobs, {"openai": view}, NOW, Policy(), random.Random(0))


def of(kind, decisions):
    return [d for d in decisions if isinstance(d, kind)]


@pytest.mark.parametrize("status,message,cls", [
    (403, CLOSED_403, ProviderClosed),
    (422, "HTTP 422: Model not available for this type of fine-tuning (completion).", ModelClosed),
    (403, "HTTP 403: You are not allowed to sample from this model", AuthError),
    (422, "HTTP 422: training_file is required", PermanentError),
])
def test_a_refusal_that_says_fine_tuning_is_over_is_its_own_class(status, message, cls):
    err = error_from_status(status, message)
    assert type(err) is cls, (type(err), message)


def test_a_closed_refusal_without_a_fallback_is_not_counted_and_marks_the_provider():
    queued = job("queued", fallbacks=(), attempt=1, client_token="support-1", intent_at=NOW)
    out = after_create(queued, "support-1", ProviderClosed(CLOSED_403, status_code=403), sent_at=NOW, arrived_at=NOW,
                       content_hash="h", policy=Policy(), rng=random.Random(0), settle=31.0)
    (move,) = of(rc.Transition, out)
    assert move.trigger == "requeue" and move.attempt_outcome == ("closed", False)
    assert move.updates["attempt"] == 0 and move.updates["client_token"] is None
    assert move.reason.code == "provider_closed"
    (mark,) = of(rc.ProviderUpdate, out)
    assert mark.paused_why == "closed" and mark.paused_until > NOW
    # the next ticks: the job waits, saying why; nothing is created while the mark holds
    later = decide([job(fallbacks=())], pv(paused_why="closed", paused_message=CLOSED_403,
                                          paused_until=mark.paused_until))
    assert of(rc.Submit, later) == [] and of(rc.Move, later) == []
    (note,) = of(rc.Note, later)
    assert note.updates["reason_code"] == "provider_closed"


def test_a_closed_refusal_with_a_fallback_moves_the_job_at_once():
    queued = job("queued", attempt=1, client_token="support-1", intent_at=NOW)
    out = after_create(queued, "support-1", ProviderClosed(CLOSED_403, status_code=403), sent_at=NOW, arrived_at=NOW,
                       content_hash="h", policy=Policy(), rng=random.Random(0), settle=31.0)
    (move,) = of(rc.Move, out)
    assert move.to == "sim" and move.expect == "queued" and "refused the create as closed" in move.reason.text()
    model = after_create(queued, "support-1", ModelClosed("HTTP 422: Model not available for fine-tuning"),
                         sent_at=NOW, arrived_at=NOW, content_hash="h", policy=Policy(), rng=random.Random(0),
                         settle=31.0)
    assert [d.to for d in of(rc.Move, model)] == ["sim"] and of(rc.ProviderUpdate, model) == []


def test_a_waiting_job_moves_when_its_provider_is_closed_by_date_and_one_without_a_fallback_is_admitted():
    out = decide([job(id=1), job(id=2, fallbacks=())], pv(closed="provider openai takes no new jobs"))
    assert [(d.job_id, d.to) for d in of(rc.Move, out)] == [(1, "sim")]
    assert [d.job_id for d in of(rc.Submit, out)] == [2]  # a forced submit: the provider has the last word


def test_a_job_the_provider_knows_never_moves():
    live = ProviderJob(id="ftjob-1", status="running", raw_status="running", client_token="support-1")
    running = job("queued", client_token="support-1", provider_job_id="ftjob-1", intent_at=NOW - timedelta(hours=1))
    out = decide([running], pv(jobs=(live,), closed="closed"))
    assert of(rc.Move, out) == []
    # found by its token only (the create's answer was lost): it stays too
    found = job("queued", client_token="support-1", intent_at=NOW - timedelta(hours=1))
    out = decide([found], pv(jobs=(live,), closed="closed"))
    assert of(rc.Move, out) == []
    (start,) = of(rc.Transition, out)
    assert start.trigger == "start" and start.updates["provider_job_id"] == "ftjob-1"


def test_an_intent_whose_outcome_is_unknown_moves_only_once_proven_absent():
    sent = NOW - timedelta(seconds=10)
    unknown = job("queued", attempt=1, client_token="support-1", intent_at=sent, last_error="timed out")
    # a listing read before the first call could have landed: it waits
    early = decide([unknown], pv(closed="closed", listed_at=sent + timedelta(seconds=5)))
    assert of(rc.Move, early) == [] and of(rc.Submit, early) == []
    assert of(rc.Note, early)[0].updates["reason_code"] == "create_unknown"
    # a listing read after it could have landed shows nothing: it moves (never created again there)
    late = decide([unknown], pv(closed="closed", listed_at=sent + timedelta(seconds=40)))
    assert [d.expect for d in of(rc.Move, late)] == ["queued"] and of(rc.Submit, late) == []
    # no listing at all (the provider cannot be read): it cannot be proven absent, it stays
    blind = decide([unknown], pv(jobs=None, error=AuthError("HTTP 401"), paused_why="auth",
                                 paused_since=NOW - timedelta(days=1)))
    assert of(rc.Move, blind) == []


def test_paused_for_auth_longer_than_fallback_after_moves_a_waiting_job():
    paused = dict(paused_why="auth", paused_message="HTTP 401: bad key", jobs=None, error=AuthError("HTTP 401"))
    waiting = job(fallback_after=6 * 3600.0)
    short = decide([waiting], pv(paused_since=NOW - timedelta(hours=5), **paused))
    assert of(rc.Move, short) == []
    long = decide([waiting], pv(paused_since=NOW - timedelta(hours=7), **paused))
    (move,) = of(rc.Move, long)
    assert "longer than fallback_after 6h" in move.reason.text()
    # without fallback_after a pause is waited out however long
    assert of(rc.Move, decide([job()], pv(paused_since=NOW - timedelta(days=3), **paused))) == []


def test_a_stage_follows_its_upstream_to_where_its_model_is_or_fails_in_one_line():
    up = rc.UpstreamView(job_id=7, agent="research", state="succeeded", fine_tuned_model="sim:research:1",
                         provider_job_id="sim-1", provider="sim")
    stage = job(id=8, model_job_id=7, upstream=(up,))
    (move,) = of(rc.Move, decide([stage], pv()))
    assert move.to == "sim" and "follows its upstream research" in move.reason.text()
    stuck = job(id=8, fallbacks=(), model_job_id=7, upstream=(up,))
    out = decide([stuck], pv())
    (fail,) = of(rc.Transition, out)
    assert fail.trigger == "fail" and fail.reason.code == "upstream_elsewhere" and of(rc.Submit, out) == []
    assert "cannot be a base on openai" in fail.reason.text()
    # the upstream ran where the stage is: admitted as usual, on the upstream's model
    here = job(id=8, model_job_id=7, upstream=(rc.UpstreamView(7, "research", "succeeded", "ft:m", "ftjob-7",
                                                               "openai"),))
    (submit,) = of(rc.Submit, decide([here], pv()))
    assert submit.base_model == "ft:m"
