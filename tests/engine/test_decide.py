"""The reconcile step alone: no database, no provider, a virtual clock."""

import random
from datetime import datetime, timedelta

from ftctl.controller.engine import decide as rc
from ftctl.controller.engine.policy import Budget, Policy, backoff_seconds
from ftctl.controller.ledger.pricing import Price
from ftctl.controller.ledger.reasons import Live, Reason, render
from ftctl.providers.base import (AuthError, CapacityError, PermanentError, ProviderJob, ProviderUnavailable,
                                  QuotaError, RateLimited, TransientError, Unreachable)

NOW = datetime(2026, 1, 5, 9, 0, 0)
POLICY = Policy(max_attempts=3, backoff_initial=30, backoff_max=600, capacity_hold=3600, create_margin=10)


def text(d, live=None):
    """The one line a decision's reason renders to."""
    if isinstance(d, rc.Transition):
        return d.reason.text(live) if d.reason else None
    return render(d.updates.get("reason_code"), d.updates.get("reason_args"), live)


def job(id, state="prepared", reason=None, **kw):
    kw.setdefault("created_at", NOW - timedelta(minutes=10) + timedelta(seconds=id))
    if reason is not None:
        kw.update(reason_code=reason.code, reason_args=dict(reason.args))
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
    live = Live(slots={"sim": (2, 2)})
    notes = {d.job_id: text(d, live) for d in of(rc.Note, out)}
    assert notes == {i: "waiting for a slot (2/2 busy on sim)" for i in (3, 4, 5)}
    assert {d.updates["reason_code"] for d in of(rc.Note, out)} == {"slot"}
    assert [(s.used, s.limit) for s in of(rc.Slots, out)] == [(2, 2)]


def test_oldest_waiting_job_goes_first():
    jobs = [job(1, created_at=NOW), job(2, created_at=NOW - timedelta(hours=1))]
    assert [d.job_id for d in of(rc.Submit, decide(jobs, view([], limit=1)))] == [2]


def test_counts_the_providers_own_active_jobs_not_only_ours():
    # a foreign job (same key, another team) holds one of the two slots
    jobs = [job(1, "running", provider_job_id="p1", client_token="t1"), job(2), job(3)]
    listing = [pj("p1", "running", "t1"), pj("x9", "running", "someone-else"), pj("old", "succeeded", "t0")]
    out = decide(jobs, view(listing, limit=3))
    assert [d.job_id for d in of(rc.Submit, out)] == [2]
    assert of(rc.Note, out)[-1].updates["reason_code"] == "slot"
    assert [(s.used, s.limit) for s in of(rc.Slots, out)] == [(3, 3)]


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


def test_a_success_without_a_cost_is_priced_by_the_prices_the_shell_gave():
    price = Price("openai", "gpt-4o-mini", train_per_m=3.0, min_fee=0.5)
    jobs = [job(i, "running", provider_job_id=f"p{i}", attempt=1, model=m)
            for i, m in ((1, "gpt-4o-mini"), (2, "gpt-4o-mini"), (3, "unpriced"), (4, "gpt-4o-mini"))]
    listing = [pj("p1", "succeeded", trained_tokens=2_000_000), pj("p2", "succeeded", trained_tokens=10_000),
               pj("p3", "succeeded", trained_tokens=2_000_000), pj("p4", "succeeded", trained_tokens=5, cost=9.99)]
    out = {d.job_id: d.updates["actual_cost"] for d in of(rc.Transition, decide(jobs, view(listing, limit=4,
                                                                                    prices={"gpt-4o-mini": price})))}
    # tokens at the price; never below the minimum fee; no price, no cost; the provider's own figure wins
    assert out == {1: 6.0, 2: 0.5, 3: None, 4: 9.99}
    assert price.training_cost(2_000_000) == 6.0 and price.per_token_cost(10_000) == 0.03


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
    assert "concurrency limit" in text(t)
    (upd,) = of(rc.ProviderUpdate, out)
    assert upd.learned_limit == 2 and upd.learned_at == NOW
    assert of(rc.Submit, out) == []


def test_a_learned_limit_holds_until_a_probe_finds_room():
    jobs = [job(1, "running", provider_job_id="p1"), job(2, "running", provider_job_id="p2"), job(3)]
    listing = [pj("p1", "running"), pj("p2", "running")]
    learned = dict(limit=5, learned_limit=2, learned_at=NOW - timedelta(hours=5))
    # it does not expire with time alone: long jobs would waste creates again mid-batch
    assert of(rc.Submit, decide(jobs, view(listing, **learned))) == []
    # once the limit was filled twice over since, one job (no more) probes above it
    out = decide(jobs + [job(4)], view(listing, finished_since_learned=4, **learned))
    assert [d.job_id for d in of(rc.Submit, out)] == [3]
    # nothing waiting: no probe
    assert of(rc.Submit, decide(jobs[:2], view(listing, finished_since_learned=4, **learned))) == []


def test_a_rejected_probe_doubles_the_hold_and_a_running_one_raises_the_limit():
    probe = job(3, "queued", provider_job_id="p3", attempt=1, client_token="t3")
    running = [job(1, "running", provider_job_id="p1"), job(2, "running", provider_job_id="p2")]
    listing = [pj("p1", "running"), pj("p2", "running")]
    learned = dict(limit=5, learned_limit=2, learned_at=NOW - timedelta(hours=2), finished_since_learned=4)
    rejected = [*listing, pj("p3", "failed", "t3", raw_status="FAILED_VALIDATION", failure="capacity",
                             message="You have reached the maximum number of jobs you can run concurrently.")]
    (upd,) = of(rc.ProviderUpdate, decide(running + [probe], view(rejected, **learned)))
    assert (upd.learned_limit, upd.learned_at, upd.probe_hold) == (2, NOW, 2 * POLICY.capacity_hold)
    # a hold doubled once already doubles again
    (upd,) = of(rc.ProviderUpdate, decide(running + [probe], view(rejected, probe_hold=7200, **learned)))
    assert upd.probe_hold == 14400
    # the probe runs: the provider has room for three
    (upd,) = of(rc.ProviderUpdate, decide(running + [probe], view([*listing, pj("p3", "running", "t3")],
                                                                  **learned)))
    assert (upd.learned_limit, upd.probe_hold) == (3, None)


def test_training_failure_backs_off_with_capped_exponential_jitter():
    jobs = [job(1, "running", provider_job_id="p1", attempt=2, client_token="t1")]
    listing = [pj("p1", "failed", "t1", failure="training", message="worker lost")]
    (t,) = of(rc.Transition, decide(jobs, view(listing)))
    assert t.trigger == "requeue"
    delay = (t.updates["not_before"] - NOW).total_seconds()
    assert 30 <= delay <= 60  # attempt 2: base 60s, half of it jittered
    line = text(t)
    assert line.startswith("backoff until ") and "(attempt 3 of 3)" in line and "worker lost" in line
    assert t.attempt_outcome == ("failed", True)


def test_backoff_is_capped():
    policy = Policy(max_attempts=50, backoff_initial=30, backoff_max=600)
    rng = random.Random(4)
    delays = [backoff_seconds(n, policy, rng) for n in range(1, 40)]
    assert max(delays) <= 600
    assert min(delays[10:]) >= 300
    assert delays[0] <= 30


def test_backoff_waits_then_admits():
    nb = NOW + timedelta(seconds=40)
    jobs = [job(1, attempt=1, not_before=nb, reason=Reason("backoff", {"until": nb.isoformat(), "attempt": 2,
                                                                        "max": 3, "why": "training failed"}))]
    assert of(rc.Submit, decide(jobs, view([]))) == []
    assert of(rc.Note, decide(jobs, view([]))) == []  # keeps its backoff reason
    assert [d.job_id for d in of(rc.Submit, decide(jobs, view([]), now=nb))] == [1]


def test_max_attempts_then_failed():
    jobs = [job(1, "running", provider_job_id="p1", attempt=3)]
    listing = [pj("p1", "failed", failure="training", message="worker lost")]
    (t,) = of(rc.Transition, decide(jobs, view(listing)))
    assert t.trigger == "fail"
    assert text(t) == "failed after 3 attempts: training failed: worker lost"


def test_data_rejection_is_permanent():
    jobs = [job(1, "queued", provider_job_id="p1", attempt=1)]
    listing = [pj("p1", "failed", raw_status="FAILED_VALIDATION", failure="data", message="line 7 is not JSON")]
    (t,) = of(rc.Transition, decide(jobs, view(listing)))
    assert t.trigger == "fail" and "line 7 is not JSON" in text(t)


def test_intent_without_provider_id_is_found_by_its_token():
    # the process died after the create call, before storing the id
    jobs = [job(1, "queued", client_token="qa-1234", attempt=1, intent_at=NOW - timedelta(seconds=5))]
    listing = [pj("p77", "queued", "qa-1234")]
    out = decide(jobs, view(listing))
    assert of(rc.Submit, out) == []
    (n,) = of(rc.Note, out)
    assert n.updates["provider_job_id"] == "p77"


def test_an_intent_is_not_created_again_until_a_listing_read_after_it_could_land_shows_nothing():
    # the create call went out 5 s ago; with a 2 s timeout and a 10 s margin
    # it may still land at the provider: a listing read now proves nothing
    sent = NOW - timedelta(seconds=5)
    jobs = [job(1, "queued", client_token="qa-1234", attempt=1, intent_at=sent, last_error="timed out")]
    early = decide(jobs, view([pj("other", "succeeded", "qa-0000")], listed_at=NOW, settle=12))
    assert of(rc.Submit, early) == []
    (n,) = of(rc.Note, early)
    assert n.updates["reason_code"] == "create_unknown"
    assert text(n).startswith("create outcome unknown (timed out); not created again before")
    # a listing asked for before the moment it could land proves nothing either
    later = NOW + timedelta(seconds=30)
    stale = decide(jobs, view([], listed_at=sent + timedelta(seconds=11), settle=12), now=later)
    assert of(rc.Submit, stale) == []
    # a listing asked for after it: the provider never got it; same token again
    fresh = decide(jobs, view([], listed_at=sent + timedelta(seconds=12), settle=12), now=later)
    assert of(rc.Submit, fresh) == [rc.Submit(1, "qa-1234")]


def test_an_intent_that_landed_late_is_found_not_created_again():
    sent = NOW - timedelta(seconds=30)
    jobs = [job(1, "queued", client_token="qa-1234", attempt=1, intent_at=sent)]
    out = decide(jobs, view([pj("late", "queued", "qa-1234")], listed_at=NOW, settle=12))
    assert of(rc.Submit, out) == []
    assert of(rc.Note, out)[0].updates["provider_job_id"] == "late"


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
    assert (upd.paused_why, upd.paused_message, upd.paused_until) == ("auth", "401 Unauthorized", None)
    assert {text(n) for n in of(rc.Note, out)} == {"provider auth failing: 401 Unauthorized"}


def test_auth_pause_clears_once_the_provider_answers():
    out = decide([job(1)], view([], paused_why="auth", paused_message="401"))
    assert of(rc.ProviderUpdate, out)[0].paused_why is None
    assert [d.job_id for d in of(rc.Submit, out)] == [1]


def test_quota_pause_holds_admissions_until_it_expires():
    pv = view([], paused_why="quota", paused_message="billing", paused_until=NOW + timedelta(minutes=5))
    out = decide([job(1)], pv)
    assert of(rc.Submit, out) == []
    assert text(of(rc.Note, out)[0]) == "provider quota exhausted: billing"


def test_transient_listing_error_changes_no_state():
    jobs = [job(1, "running", provider_job_id="p1"), job(2)]
    out = decide(jobs, view(None, error=TransientError("HTTP 503")))
    assert of(rc.Transition, out) == [] and of(rc.Submit, out) == [] and of(rc.ProviderUpdate, out) == []
    assert all(text(n).startswith("provider unreachable: HTTP 503") for n in of(rc.Note, out))


def test_job_lost_by_the_provider_is_retried():
    jobs = [job(1, "running", provider_job_id="gone", attempt=1)]
    (t,) = of(rc.Transition, decide(jobs, view([], missing=frozenset({"gone"}))))
    assert t.trigger == "requeue" and "no longer knows job gone" in text(t)


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
    assert text(of(rc.Note, out)[0]) == "provider 'sim' is not in the config"


def test_no_note_when_nothing_changed():
    jobs = [job(1, "queued", provider_job_id="p1", reason=Reason("queued_at", {"status": "QUEUED"}),
                provider_status="QUEUED")]
    out = decide(jobs, view([pj("p1", "queued")]))
    assert [d for d in out if not isinstance(d, (rc.Slots, rc.Line))] == []


def test_admission_reports_slots_in_use_and_allowed():
    jobs = [job(1, "running", provider_job_id="p1")] + [job(i) for i in range(2, 6)]
    (slots,) = of(rc.Slots, decide(jobs, view([pj("p1", "running"), pj("x", "running", "other")], limit=3)))
    assert (slots.used, slots.limit, slots.waiting) == (3, 3, 3)


# -- what follows a create call: the step decides on the error's class ------------------------


def created(outcome, *, attempt=1, sent=NOW, arrived=NOW + timedelta(seconds=1), settle=12.0):
    j = job(1, "queued", client_token="qa-1", attempt=attempt, intent_at=sent)
    return rc.after_create(j, "qa-1", outcome, sent_at=sent, arrived_at=arrived, content_hash="h", policy=POLICY,
                           rng=random.Random(0), settle=settle)


def test_a_created_job_stores_its_provider_id_only_for_its_own_token():
    (n,) = created(pj("p9", "queued", "qa-1"))
    assert isinstance(n, rc.Note) and n.expect_token == "qa-1" and n.expect == "queued"
    assert n.updates["provider_job_id"] == "p9" and n.event[0] == "created"


def test_a_capacity_refusal_on_create_requeues_without_counting():
    (t,) = created(CapacityError("You have reached the maximum number of jobs you can run concurrently."))
    assert (t.trigger, t.updates["attempt"], t.updates["client_token"], t.attempt_outcome) == \
        ("requeue", 0, None, ("capacity", False))


def test_a_capacity_refusal_on_create_teaches_the_limit_the_provider_runs_at():
    refused = CapacityError("HTTP 429: You have reached the maximum number of concurrent fine-tuning jobs (2)")
    t, learned = rc.after_create(job(1, "queued", attempt=1, client_token="qa-1"), "qa-1", refused, sent_at=NOW,
                                 arrived_at=NOW + timedelta(seconds=1), content_hash="h", policy=POLICY,
                                 rng=random.Random(0), settle=5, active_at_provider=2)
    assert t.trigger == "requeue" and t.attempt_outcome == ("capacity", False)
    assert learned == rc.ProviderUpdate("sim", learned_limit=2, learned_at=NOW + timedelta(seconds=1))


def test_auth_quota_and_a_missing_sdk_on_create_pause_the_provider():
    for err, why, until in ((AuthError("HTTP 401"), "auth", None),
                            (QuotaError("HTTP 402: billing"), "quota", NOW + timedelta(seconds=1 + 600)),
                            (ProviderUnavailable("the openai SDK is not installed"), "unavailable", None)):
        t, pause = created(err)
        assert t.trigger == "requeue" and t.attempt_outcome[1] is False and t.reason.code == "paused"
        assert (pause.paused_why, pause.paused_until) == (why, until)


def test_a_permanent_refusal_fails_the_job_with_the_providers_message():
    (t,) = created(PermanentError("HTTP 422: Invalid model"))
    assert t.trigger == "fail" and text(t) == "provider refused the job: HTTP 422: Invalid model"


def test_an_ambiguous_create_keeps_its_token_and_waits_for_the_settle_time():
    (n,) = created(TransientError("timed out waiting for Mistral"), sent=NOW, arrived=NOW + timedelta(seconds=2))
    assert n.expect_token == "qa-1" and n.updates["intent_at"] == NOW
    assert n.updates["reason_code"] == "create_unknown"
    # never sooner than the call could still land
    assert n.updates["not_before"] >= NOW + timedelta(seconds=12)


def test_retry_after_counts_from_the_answers_arrival_not_the_ticks_start():
    arrived = NOW + timedelta(seconds=3)
    (n,) = created(RateLimited("HTTP 429", retry_after=5), sent=NOW, arrived=arrived)
    assert n.updates["not_before"] == arrived + timedelta(seconds=5)
    # refused before any work: no settle wait, the same token may go again
    assert n.updates["intent_at"] is None and n.updates["reason_code"] == "create_retry"
    (n,) = created(Unreachable("cannot reach Mistral: ConnectError"), arrived=arrived)
    assert n.updates["intent_at"] is None


def test_a_lost_file_on_create_is_uploaded_again():
    from ftctl.providers.base import NotFoundError

    forget, n = created(NotFoundError("HTTP 404: file not found"))
    assert forget == rc.ForgetUpload("sim", "h") and isinstance(n, rc.Note)


def test_upload_errors_on_a_prepared_job():
    j = job(1, attempt=0)
    pause, n = rc.after_upload_error(j, AuthError("HTTP 401"), arrived_at=NOW, policy=POLICY, rng=random.Random(0))
    assert pause.paused_why == "auth" and n.updates["reason_code"] == "paused"
    (t,) = rc.after_upload_error(j, PermanentError("HTTP 400: bad file"), arrived_at=NOW, policy=POLICY,
                                 rng=random.Random(0))
    assert t.trigger == "fail" and "bad file" in text(t)
    (n,) = rc.after_upload_error(j, TransientError("HTTP 503"), arrived_at=NOW, policy=POLICY, rng=random.Random(0))
    assert n.updates["not_before"] > NOW and n.updates["reason_code"] == "upload_retry"


# -- quote jobs and money ----------------------------------------------------------------


def test_quote_jobs_never_count_as_slots_and_are_cancelled_until_confirmed():
    listing = [pj("q1", "queued", "quote-1"), pj("q2", "cancelled", "quote-2")]
    out = decide([job(1), job(2)], view(listing, limit=2, quote_ids=frozenset({"q1", "q2"}),
                                        pending_quotes=("q1", "q2")))
    assert [d.job_id for d in of(rc.Submit, out)] == [1, 2]
    assert of(rc.CancelQuote, out) == [rc.CancelQuote("sim", "q1")]
    assert of(rc.QuoteSettled, out) == [rc.QuoteSettled("sim", "q2")]
    # a provider with quotes but no jobs of ours is looked after too
    alone = rc.decide([], {"sim": view(listing, pending_quotes=("q1",))}, NOW, POLICY, random.Random(0))
    assert of(rc.CancelQuote, alone) == [rc.CancelQuote("sim", "q1")]


def test_budget_keeps_a_job_out_and_says_how_much_is_left_at_display_time():
    jobs = [job(1, "running", provider_job_id="p1", estimated_cost=6.0), job(2, estimated_cost=6.0)]
    out = rc.decide(jobs, {"sim": view([pj("p1", "running")], limit=5)}, NOW, POLICY, random.Random(0),
                    Budget(total=10.0, spent=1.0))
    assert of(rc.Submit, out) == []
    (n,) = [d for d in of(rc.Note, out) if d.job_id == 2]
    assert n.updates["reason_code"] == "budget_left"
    assert text(n, Live(budget_left=3.0)) == "over budget: estimate $6.00 > $3.00 left"
    assert Budget(total=10.0, spent=1.0).left(6.0) == 3.0


def test_a_waiting_jobs_note_does_not_change_when_only_the_counts_do():
    # "2/2 busy" and "$X left" are rendered at display time: a waiting job
    # whose reason is already "slot" gets no write when a slot count changes
    jobs = [job(1, "running", provider_job_id="p1", provider_status="RUNNING",
                reason=Reason("training", {"status": "RUNNING"})), job(2, reason=Reason("slot", {"provider": "sim"}))]
    for foreign in ([], [pj("x", "running", "other")]):
        out = decide(jobs, view([pj("p1", "running"), *foreign], limit=1 + len(foreign)))
        assert of(rc.Note, out) == [] and of(rc.Submit, out) == []
