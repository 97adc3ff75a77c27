"""What follows a provider call the shell made: its outcome in, decisions out.

The shell calls the provider (upload, create); whatever came back, a job or
an error of a class, goes through one of these, and the decisions that come
out are applied like any other. The shell itself decides nothing.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from ftctl.controller.engine.policy import Policy
from ftctl.controller.engine.rules import note_if_changed, pause_for, retry_delay
from ftctl.controller.engine.step_types import Decision, ForgetUpload, JobView, Note, ProviderUpdate, Transition
from ftctl.controller.ledger.reasons import Reason
from ftctl.controller.ledger.states import PREPARED, QUEUED
from ftctl.providers.base import CapacityError, NotFoundError, PermanentError, ProviderError, ProviderJob


def begin_submit(job: JobView, token: str, now: datetime, base_model: str | None = None,
                 file_id: str | None = None) -> Transition:
    """prepared -> queued with a fresh client token, stored before the create
    call (with the provider's id of the training file, when it is known); a
    downstream job also stores the upstream model its create names."""
    updates = {"attempt": job.attempt + 1, "client_token": token, "intent_at": now, "provider_job_id": None,
               "not_before": None, "provider_status": None, "last_error": None}
    if base_model is not None:
        updates["base_model"] = base_model
    if file_id is not None:
        updates["provider_file_id"] = file_id
    return Transition(job.id, PREPARED, "submit", Reason("submitting"), updates)


def after_create(job: JobView, token: str, outcome: ProviderJob | ProviderError, *, sent_at: datetime,
                 arrived_at: datetime, content_hash: str, policy: Policy, rng: random.Random,
                 settle: float, active_at_provider: int | None = None) -> list[Decision]:
    """What follows a create call made at `sent_at` for `token`, whose answer
    (a job, or an error of a class) arrived at `arrived_at`. `active_at_provider`:
    after a capacity refusal, how many jobs the provider was running (read
    right after), which is the limit it allows."""
    if isinstance(outcome, ProviderJob):
        return [Note(job.id, QUEUED, {"provider_job_id": outcome.id, "provider_status": outcome.raw_status,
                                      **Reason("queued_at", {"status": outcome.raw_status}).stored()},
                     expect_token=token, event=("created", f"created at the provider as {outcome.id}"))]
    err = outcome
    uncounted = {"attempt": max(0, job.attempt - 1), "client_token": None, "intent_at": None,
                 "last_error": err.message}
    if isinstance(err, CapacityError):
        out: list[Decision] = [Transition(job.id, QUEUED, "requeue", Reason("capacity", {"status": err.message}),
                                          uncounted, attempt_outcome=("capacity", False))]
        if active_at_provider is not None:  # refused at the door (Together): learn the limit, as for a failed job
            out.append(ProviderUpdate(job.provider, learned_limit=max(1, active_at_provider), learned_at=arrived_at))
        return out
    from ftctl.controller.engine.fallback import after_refused

    refused = after_refused(job, err, arrived_at, policy, uncounted)
    if refused is not None:
        return refused
    pause = pause_for(err, job.provider, arrived_at, policy)
    if pause is not None:
        reason = Reason("paused", {"why": pause.paused_why, "message": err.message})
        return [Transition(job.id, QUEUED, "requeue", reason, uncounted, attempt_outcome=(err.kind, False)), pause]
    if isinstance(err, PermanentError):
        return [Transition(job.id, QUEUED, "fail", Reason("refused", {"message": err.message}),
                           {"last_error": err.message}, attempt_outcome=("rejected", True))]
    # transient, or the provider lost a file: the job keeps its token and
    # tries again from the answer's arrival (Retry-After counts from there)
    until = arrived_at + timedelta(seconds=retry_delay(err, job.attempt, policy, rng))
    out = []
    if isinstance(err, NotFoundError):
        out.append(ForgetUpload(job.provider, content_hash))
    if err.ambiguous:
        settled = sent_at + timedelta(seconds=settle)
        reason = Reason("create_unknown", {"message": err.message, "until": settled.isoformat()})
        updates = {"not_before": max(until, settled), "intent_at": sent_at, "last_error": err.message}
    else:
        # refused before anything was done: the same token may go again at once
        reason = Reason("create_retry", {"message": err.message, "until": until.isoformat()})
        updates = {"not_before": until, "intent_at": None, "last_error": err.message}
    out.append(Note(job.id, QUEUED, {**updates, **reason.stored()}, expect_token=token,
                    event=("create-failed", err.message)))
    return out


def after_upload_error(job: JobView, err: ProviderError, *, arrived_at: datetime, policy: Policy,
                       rng: random.Random) -> list[Decision]:
    """An upload before the create failed; the job is still `prepared`."""
    pause = pause_for(err, job.provider, arrived_at, policy)
    if pause is not None:
        return [pause, note_if_changed(job, Reason("paused", {"why": pause.paused_why, "message": err.message}))]
    if isinstance(err, PermanentError):
        return [Transition(job.id, PREPARED, "fail", Reason("rejected_data", {"message": err.message}),
                           {"last_error": err.message})]
    until = arrived_at + timedelta(seconds=retry_delay(err, job.attempt + 1, policy, rng))
    reason = Reason("upload_retry", {"message": err.message, "until": until.isoformat()})
    return [d for d in (note_if_changed(job, reason, not_before=until, last_error=err.message),) if d]


def file_problem(job: JobView, reason: Reason) -> Transition:
    """The training file cannot be read, or changed since submit: nothing is sent."""
    return Transition(job.id, PREPARED, "fail", reason, {"last_error": reason.text()})
