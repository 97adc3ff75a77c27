"""The reconcile step alone: no database, no provider, a virtual clock."""

import random
from datetime import datetime, timedelta

from ftctl.controller.engine import decide as rc
from ftctl.providers.base import AuthError, ProviderJob, TransientError

NOW = datetime(2026, 1, 5, 9, 0, 0)
POLICY = rc.Policy(max_attempts=3, backoff_initial=30, backoff_max=600, capacity_hold=3600)


def job(id, state="prepared", **kw):
    kw.setdefault("created_at", NOW - timedelta(minutes=10) + timedelta(seconds=id))
    return rc.JobView(id=id, agent=f"a{id}", provider="sim", state=state, **kw)


def pj(id, status, token=None, **kw):
    raw = {"queued": "QUEUED", "running": "RUNNING", "succeeded": "SUCCESS", "failed": "FAILED",
           "cancelled": "CANCELLED"}[status]
    return ProviderJob(id=id, status=status, raw_status=kw.pop("raw_status", raw), client_token=token, **kw)


def view(jobs=(), limit=2, **kw):
    return rc.ProviderView(name="sim", configured_limit=limit, jobs=None if jobs is None else tuple(jobs), **kw)


def decide(jobs, pv, now=NOW, policy=POLICY, seed=1):
    return rc.decide(jobs, {"sim": pv}, now, policy, random.Random(seed))


def of(kind, decisions):
    return [d for d in decisions if isinstance(d, kind)]


def test_admits_up_to_the_limit_and_tells_the_rest_why():
    jobs = [job(i) for i in range(1, 6)]
    out = decide(jobs, view([], limit=2))
    assert [d.job_id for d in of(rc.Submit, out)] == [1, 2]
    notes = {d.job_id: d.updates["reason"] for d in of(rc.Note, out)}
    assert notes == {i: "waiting for a slot (2/2 busy on sim)" for i in (3, 4, 5)}


def test_oldest_waiting_job_goes_first():
    jobs = [job(1, created_at=NOW), job(2, created_at=NOW - timedelta(hours=1))]
    assert [d.job_id for d in of(rc.Submit, decide(jobs, view([], limit=1)))] == [2]


def test_counts_the_providers_own_active_jobs_not_only_ours():
    # a foreign job (same key, another team) holds one of the two slots
    jobs = [job(1, "running", provider_job_id="p1", client_token="t1"), job(2), job(3)]
    listing = [pj("p1", "running", "t1"), pj("x9", "running", "someone-else"), pj("old", "succeeded", "t0")]
    out = decide(jobs, view(listing, limit=3))
    assert [d.job_id for d in of(rc.Submit, out)] == [2]
    assert of(rc.Note, out)[-1].updates["reason"] == "waiting for a slot (3/3 busy on sim)"


def test_never_more_in_flight_than_the_limit():
    jobs = [job(1, "queued", client_token="t1", provider_job_id="p1"), job(2, "running", provider_job_id="p2"),
            job(3)]
    listing = [pj("p1", "queued", "t1"), pj("p2", "running")]
    assert of(rc.Submit, decide(jobs, view(listing, limit=2))) == []


def test_queued_job_starts_and_succeeds_with_its_model_id():
    jobs = [job(1, "queued", provider_job_id="p1", attempt=1), job(2, "running", provider_job_id="p2", attempt=1)]
    listing = [pj("p1", "running"), pj("p2", "succeeded", fine_tuned_model="ft:m:x:1:abc", cost=4.0)]
    out = {d.job_id: d for d in of(rc.Transition, decide(jobs, view(listing)))}
    assert out[1].trigger == "start"
    assert out[2].trigger == "succeed"
    assert out[2].updates["fine_tuned_model"] == "ft:m:x:1:abc"
    assert out[2].updates["actual_cost"] == 4.0


def test_capacity_rejection_requeues_without_counting_and_lowers_the_limit():
    jobs = [job(1, "running", provider_job_id="p1", attempt=1), job(2, "running", provider_job_id="p2", attempt=1),
            job(3, "queued", provider_job_id="p3", attempt=1, client_token="t3")]
    listing = [pj("p1", "running"), pj("p2", "running"),
               pj("p3", "failed", "t3", raw_status="FAILED_VALIDATION", failure="capacity",
                  message="You have reached the maximum number of jobs you can run concurrently.")]
    out = decide(jobs, view(listing, limit=5))
    (t,) = of(rc.Transition, out)
    assert (t.job_id, t.trigger) == (3, "requeue")
    assert t.updates["attempt"] == 0  # not counted
    assert t.updates["client_token"] is None and t.updates["provider_job_id"] is None
    assert t.attempt_outcome == ("capacity", False)
    assert "concurrency limit" in t.reason
    (upd,) = of(rc.ProviderUpdate, out)
    assert upd.learned_limit == 2 and upd.learned_at == NOW
    assert of(rc.Submit, out) == []


def test_learned_limit_holds_then_expires():
    jobs = [job(1, "running", provider_job_id="p1"), job(2, "running", provider_job_id="p2"), job(3)]
    listing = [pj("p1", "running"), pj("p2", "running")]
    held = view(listing, limit=5, learned_limit=2, learned_at=NOW - timedelta(minutes=5))
    assert of(rc.Submit, decide(jobs, held)) == []
    expired = view(listing, limit=5, learned_limit=2, learned_at=NOW - timedelta(hours=2))
    out = decide(jobs, expired)
    assert [d.job_id for d in of(rc.Submit, out)] == [3]
    assert of(rc.ProviderUpdate, out)[0].learned_limit is None


def test_training_failure_backs_off_with_capped_exponential_jitter():
    jobs = [job(1, "running", provider_job_id="p1", attempt=2, client_token="t1")]
    listing = [pj("p1", "failed", "t1", failure="training", message="worker lost")]
    (t,) = of(rc.Transition, decide(jobs, view(listing)))
    assert t.trigger == "requeue"
    delay = (t.updates["not_before"] - NOW).total_seconds()
    assert 30 <= delay <= 60  # attempt 2: base 60s, half of it jittered
    assert t.reason.startswith("backoff until ") and "(attempt 3 of 3)" in t.reason and "worker lost" in t.reason
    assert t.attempt_outcome == ("failed", True)


def test_backoff_is_capped():
    policy = rc.Policy(max_attempts=50, backoff_initial=30, backoff_max=600)
    rng = random.Random(4)
    delays = [rc.backoff_seconds(n, policy, rng) for n in range(1, 40)]
    assert max(delays) <= 600
    assert min(delays[10:]) >= 300
    assert delays[0] <= 30


def test_backoff_waits_then_admits():
    nb = NOW + timedelta(seconds=40)
    jobs = [job(1, attempt=1, not_before=nb, reason="backoff until ...")]
    assert of(rc.Submit, decide(jobs, view([]))) == []
    assert of(rc.Note, decide(jobs, view([]))) == []  # keeps its backoff reason
    assert [d.job_id for d in of(rc.Submit, decide(jobs, view([]), now=nb))] == [1]


def test_max_attempts_then_failed():
    jobs = [job(1, "running", provider_job_id="p1", attempt=3)]
    listing = [pj("p1", "failed", failure="training", message="worker lost")]
    (t,) = of(rc.Transition, decide(jobs, view(listing)))
    assert t.trigger == "fail"
    assert t.reason == "failed after 3 attempts: training failed: worker lost"


def test_data_rejection_is_permanent():
    jobs = [job(1, "queued", provider_job_id="p1", attempt=1)]
    listing = [pj("p1", "failed", raw_status="FAILED_VALIDATION", failure="data", message="line 7 is not JSON")]
    (t,) = of(rc.Transition, decide(jobs, view(listing)))
    assert t.trigger == "fail" and "line 7 is not JSON" in t.reason


def test_intent_without_provider_id_is_found_by_its_token():
    # the process died after the create call, before storing the id
    jobs = [job(1, "queued", client_token="qa-1234", attempt=1, intent_at=NOW - timedelta(seconds=5))]
    listing = [pj("p77", "queued", "qa-1234")]
    out = decide(jobs, view(listing))
    assert of(rc.Submit, out) == []
    (n,) = of(rc.Note, out)
    assert n.updates["provider_job_id"] == "p77"


def test_intent_never_received_is_created_again_with_the_same_token():
    # the process died before the create call
    jobs = [job(1, "queued", client_token="qa-1234", attempt=1, intent_at=NOW - timedelta(seconds=5))]
    out = decide(jobs, view([pj("other", "succeeded", "qa-0000")]))
    assert of(rc.Submit, out) == [rc.Submit(1, "qa-1234")]


def test_intent_retry_waits_for_its_backoff():
    jobs = [job(1, "queued", client_token="qa-1", attempt=1, not_before=NOW + timedelta(seconds=30))]
    out = decide(jobs, view([], limit=2) , now=NOW)
    assert of(rc.Submit, out) == []
    # it still holds its slot: a second job may take only the other one
    jobs.append(job(2))
    jobs.append(job(3))
    assert [d.job_id for d in of(rc.Submit, decide(jobs, view([], limit=2)))] == [2]


def test_auth_failure_pauses_the_provider_and_keeps_states():
    jobs = [job(1, "running", provider_job_id="p1"), job(2)]
    out = decide(jobs, view(None, error=AuthError("401 Unauthorized", status_code=401)))
    assert of(rc.Transition, out) == [] and of(rc.Submit, out) == []
    (upd,) = of(rc.ProviderUpdate, out)
    assert upd.paused_reason == "provider auth failing: 401 Unauthorized"
    assert {n.updates["reason"] for n in of(rc.Note, out)} == {"provider auth failing: 401 Unauthorized"}


def test_auth_pause_clears_once_the_provider_answers():
    out = decide([job(1)], view([], paused_reason="provider auth failing: 401"))
    assert of(rc.ProviderUpdate, out)[0].paused_reason is None
    assert [d.job_id for d in of(rc.Submit, out)] == [1]


def test_quota_pause_holds_admissions_until_it_expires():
    pv = view([], paused_reason="provider quota exhausted: billing", paused_until=NOW + timedelta(minutes=5))
    out = decide([job(1)], pv)
    assert of(rc.Submit, out) == []
    assert of(rc.Note, out)[0].updates["reason"] == "provider quota exhausted: billing"


def test_transient_listing_error_changes_no_state():
    jobs = [job(1, "running", provider_job_id="p1"), job(2)]
    out = decide(jobs, view(None, error=TransientError("HTTP 503")))
    assert of(rc.Transition, out) == [] and of(rc.Submit, out) == [] and of(rc.ProviderUpdate, out) == []
    assert all(n.updates["reason"].startswith("provider unreachable: HTTP 503") for n in of(rc.Note, out))


def test_job_lost_by_the_provider_is_retried():
    jobs = [job(1, "running", provider_job_id="gone", attempt=1)]
    (t,) = of(rc.Transition, decide(jobs, view([], missing=frozenset({"gone"}))))
    assert t.trigger == "requeue" and "no longer knows job gone" in t.reason


def test_cancelled_job_is_cancelled_at_the_provider_once():
    jobs = [job(1, "cancelled", provider_job_id="p1", cancel_pending=True)]
    assert of(rc.CancelAtProvider, decide(jobs, view([pj("p1", "running")]))) == [rc.CancelAtProvider(1, "p1")]
    out = decide(jobs, view([pj("p1", "cancelled")]))
    assert of(rc.CancelAtProvider, out) == []
    assert of(rc.Note, out)[0].updates["cancel_pending"] is False


def test_cancelled_intent_found_by_token_is_cancelled_too():
    jobs = [job(1, "cancelled", client_token="qa-9", cancel_pending=True)]
    assert of(rc.CancelAtProvider, decide(jobs, view([pj("p5", "queued", "qa-9")]))) == [rc.CancelAtProvider(1, "p5")]


def test_cancelled_job_does_not_free_its_slot_until_the_provider_stops_it():
    jobs = [job(1, "cancelled", provider_job_id="p1", cancel_pending=True), job(2)]
    out = decide(jobs, view([pj("p1", "running")], limit=1))
    assert of(rc.Submit, out) == []


def test_unknown_provider_is_explained():
    out = rc.decide([job(1)], {}, NOW, POLICY, random.Random(0))
    assert of(rc.Note, out)[0].updates["reason"] == "provider 'sim' is not in the config"


def test_no_note_when_nothing_changed():
    jobs = [job(1, "queued", provider_job_id="p1", reason="queued at provider (QUEUED)", provider_status="QUEUED")]
    out = decide(jobs, view([pj("p1", "queued")]))
    assert [d for d in out if not isinstance(d, rc.Slots)] == []


def test_admission_reports_slots_in_use_and_allowed():
    jobs = [job(1, "running", provider_job_id="p1")] + [job(i) for i in range(2, 6)]
    (slots,) = of(rc.Slots, decide(jobs, view([pj("p1", "running"), pj("x", "running", "other")], limit=3)))
    assert (slots.used, slots.limit, slots.waiting) == (3, 3, 3)
