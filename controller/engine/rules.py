"""Small rules the decision step and the outcome functions share."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from ftctl.controller.engine.policy import Policy, backoff_seconds
from ftctl.controller.engine.step_types import UNCHANGED, JobView, Note, ProviderUpdate, ProviderView, Transition
from ftctl.controller.ledger.reasons import Reason
from ftctl.providers.base import AuthError, ProviderError, ProviderUnavailable, QuotaError


def effective_limit(pv: ProviderView, now: datetime, policy: Policy, *, waiting: bool = False) -> tuple[int, bool]:
    """(how many jobs may hold a slot now, whether one of them is a probe).

    A limit learned from a capacity rejection holds until there is evidence
    of more room (the provider runs more jobs than it). While jobs wait, one
    job above it may probe, once the hold since the last rejection has passed
    (capacity_hold, doubled after each rejected probe) and the learned limit
    has been filled twice over by jobs of ours that finished since."""
    if not pv.learned_limit:
        return pv.configured_limit, False
    learned = max(1, min(pv.configured_limit, pv.learned_limit))
    hold = pv.probe_hold or policy.capacity_hold
    if (waiting and learned < pv.configured_limit and pv.learned_at is not None
            and (now - pv.learned_at).total_seconds() >= hold and pv.finished_since_learned >= 2 * learned):
        return learned + 1, True
    return learned, False


def pause_for(err: ProviderError, name: str, now: datetime, policy: Policy) -> ProviderUpdate | None:
    """A provider-wide pause for an error that no job can get past, or None."""
    if isinstance(err, QuotaError):
        return ProviderUpdate(name, paused_why="quota", paused_message=err.message,
                              paused_until=now + timedelta(seconds=policy.backoff_max))
    if isinstance(err, ProviderUnavailable):
        return ProviderUpdate(name, paused_why="unavailable", paused_message=err.message, paused_until=None)
    if isinstance(err, AuthError):
        return ProviderUpdate(name, paused_why="auth", paused_message=err.message, paused_until=None)
    return None


def error_reason(err: ProviderError | None) -> Reason:
    if err is None:
        return Reason("unobserved")
    pause = pause_for(err, "", datetime.min, Policy())
    if pause is not None:
        return Reason("paused", {"why": pause.paused_why, "message": err.message})
    return Reason("unreachable", {"message": err.message})


def note_if_changed(job: JobView, reason: Reason | None = None, **updates: Any) -> Note | None:
    """A Note with only what differs from the stored job (None: nothing does).
    Called for every waiting job every tick: the common case, nothing
    changed, builds nothing."""
    if reason is not None and (reason.code != job.reason_code or reason.args != (job.reason_args or {})):
        updates.update(reason.stored())
    if not updates:
        return None
    changed = {k: v for k, v in updates.items() if getattr(job, k, UNCHANGED) != v}
    return Note(job.id, job.state, changed) if changed else None


def retry_delay(err: ProviderError, attempt: int, policy: Policy, rng: random.Random) -> float:
    return err.retry_after if err.retry_after is not None else backoff_seconds(max(1, attempt), policy, rng)


def capacity_requeue(job: JobView, message: str, status: str) -> Transition:
    """Over the provider's concurrency limit: back to waiting, not an attempt."""
    updates = {"attempt": max(0, job.attempt - 1), "client_token": None, "provider_job_id": None,
               "intent_at": None, "not_before": None, "last_error": message}
    return Transition(job.id, job.state, "requeue", Reason("capacity", {"status": status}), updates,
                      provider_status=status, attempt_outcome=("capacity", False))


def retry_or_fail(job: JobView, why: str, now: datetime, policy: Policy, rng: random.Random, *, outcome: str,
                  provider_status: str | None = None) -> Transition:
    """A counted attempt ended badly: back off and try again, or give up."""
    if job.attempt >= policy.max_attempts:
        return Transition(job.id, job.state, "fail", Reason("attempts_exhausted", {"attempts": job.attempt,
                                                                                   "why": why}),
                          {"last_error": why}, provider_status=provider_status, attempt_outcome=(outcome, True))
    until = now + timedelta(seconds=backoff_seconds(job.attempt, policy, rng))
    reason = Reason("backoff", {"until": until.isoformat(), "attempt": job.attempt + 1, "max": policy.max_attempts,
                                "why": why})
    updates = {"not_before": until, "client_token": None, "provider_job_id": None, "intent_at": None,
               "last_error": why}
    return Transition(job.id, job.state, "requeue", reason, updates, provider_status=provider_status,
                      attempt_outcome=(outcome, True))
