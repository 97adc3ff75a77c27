"""The decision step: (stored jobs, provider observations, now) -> decisions.

No I/O happens here. The shell (`engine.tick`) loads the jobs, observes the
providers, applies what comes back, and hands the outcome of every provider
call it made (a create, an upload, a cancel) to the `after_*` functions
below, which decide what follows. That keeps every rule on a virtual clock
and cheap to benchmark; the shell decides nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ftctl.controller.engine.policy import Budget, Policy, backoff_seconds
from ftctl.controller.engine.reasons import Reason
from ftctl.controller.engine.states import CANCELLED, IN_FLIGHT, PREPARED, QUEUED, RUNNING, JobState
from ftctl.providers.base import (
    FAIL_CAPACITY,
    FAIL_DATA,
    P_CANCELLED,
    P_FAILED,
    P_QUEUED,
    P_RUNNING,
    P_SUCCEEDED,
    AuthError,
    CapacityError,
    NotFoundError,
    PermanentError,
    ProviderError,
    ProviderJob,
    ProviderUnavailable,
    QuotaError,
)

UNCHANGED: Any = object()


# -- inputs ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobView:
    id: int
    agent: str
    provider: str
    state: str
    attempt: int = 0
    client_token: str | None = None
    provider_job_id: str | None = None
    # when the latest create call for client_token went out
    intent_at: datetime | None = None
    not_before: datetime | None = None
    created_at: datetime | None = None
    cancel_pending: bool = False
    reason_code: str | None = None
    reason_args: Mapping[str, Any] | None = None
    provider_status: str | None = None
    estimated_cost: float | None = None
    last_error: str | None = None

    @classmethod
    def of(cls, row: Any) -> "JobView":
        if isinstance(row, Mapping):
            return cls(**{f: row[f] for f in cls.__dataclass_fields__ if f in row})
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})

    @property
    def reason(self) -> Reason | None:
        return Reason(self.reason_code, self.reason_args or {}) if self.reason_code else None


@dataclass(frozen=True)
class ProviderView:
    name: str
    configured_limit: int
    jobs: tuple[ProviderJob, ...] | None  # None: the provider could not be observed
    error: ProviderError | None = None
    learned_limit: int | None = None
    learned_at: datetime | None = None
    paused_why: str | None = None
    paused_message: str | None = None
    paused_until: datetime | None = None
    # our provider job ids that the provider says it does not know
    missing: frozenset[str] = frozenset()
    # when the listing in `jobs` was asked for, and how long after a create
    # call went out it may still land (the client's timeout plus a margin)
    listed_at: datetime | None = None
    settle: float = 0.0
    # estimate quote jobs (auto_start=False) we made: never a slot of ours or
    # anyone's; those not yet confirmed cancelled are cancelled again
    quote_ids: frozenset[str] = frozenset()
    pending_quotes: tuple[str, ...] = ()


# -- decisions -------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    job_id: int
    expect: str
    trigger: str
    reason: Reason | None
    updates: dict[str, Any] = field(default_factory=dict)
    provider_status: str | None = None
    # how the provider attempt ended: (outcome, counted)
    attempt_outcome: tuple[str, bool] | None = None


@dataclass(frozen=True)
class Note:
    """New facts about a job that do not change its state; written only if
    the job is still in `expect` (and still carries `expect_token`)."""

    job_id: int
    expect: str
    updates: dict[str, Any]
    expect_token: str | None = None
    event: tuple[str, str] | None = None  # (trigger, text) for the history


@dataclass(frozen=True)
class Submit:
    """Hand a job to its provider. client_token None: a new submission
    (prepared -> queued, a new token); a token: create again for an intent
    that a listing, read after the first call could have landed, does not show."""

    job_id: int
    client_token: str | None = None


@dataclass(frozen=True)
class CancelAtProvider:
    job_id: int
    provider_job_id: str


@dataclass(frozen=True)
class CancelQuote:
    """A quote job still active at the provider: cancel it (again)."""

    provider: str
    provider_job_id: str


@dataclass(frozen=True)
class QuoteSettled:
    """A quote job is no longer active at the provider: nothing more is owed."""

    provider: str
    provider_job_id: str


@dataclass(frozen=True)
class ForgetUpload:
    """The provider lost an uploaded file: upload it again next time."""

    provider: str
    content_hash: str


@dataclass(frozen=True)
class ProviderUpdate:
    name: str
    learned_limit: Any = UNCHANGED
    learned_at: Any = UNCHANGED
    paused_why: Any = UNCHANGED
    paused_message: Any = UNCHANGED
    paused_until: Any = UNCHANGED

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "name" and v is not UNCHANGED}


@dataclass(frozen=True)
class Slots:
    """What admission saw on a provider: stored for status lines and metrics."""

    name: str
    used: int
    limit: int
    waiting: int  # prepared jobs told to wait for a slot


Decision = (Transition | Note | Submit | CancelAtProvider | CancelQuote | QuoteSettled | ForgetUpload
            | ProviderUpdate | Slots)


# -- small rules -------------------------------------------------------------------


def effective_limit(pv: ProviderView, now: datetime, policy: Policy) -> int:
    if pv.learned_limit and pv.learned_at and (now - pv.learned_at).total_seconds() < policy.capacity_hold:
        return max(1, min(pv.configured_limit, pv.learned_limit))
    return pv.configured_limit


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


def _note(job: JobView, reason: Reason | None = None, **updates: Any) -> Note | None:
    """A Note with only what differs from the stored job (None: nothing does)."""
    if reason is not None and reason != job.reason:
        updates.update(reason.stored())
    changed = {k: v for k, v in updates.items() if getattr(job, k, UNCHANGED) != v}
    return Note(job.id, job.state, changed) if changed else None


def _retry_delay(err: ProviderError, attempt: int, policy: Policy, rng: random.Random) -> float:
    return err.retry_after if err.retry_after is not None else backoff_seconds(max(1, attempt), policy, rng)


# -- the step --------------------------------------------------------------------


def decide(jobs: Iterable[JobView], providers: dict[str, ProviderView], now: datetime,
           policy: Policy, rng: random.Random, budget: Budget | None = None) -> list[Decision]:
    jobs = list(jobs)
    budget = budget or Budget()
    committed = sum(j.estimated_cost or 0.0 for j in jobs if j.state in IN_FLIGHT)
    money = _Money(budget, budget.left(committed))
    grouped: dict[str, list[JobView]] = {}
    for job in jobs:
        grouped.setdefault(job.provider, []).append(job)
    out: list[Decision | None] = []
    for name, group in grouped.items():
        group.sort(key=lambda j: j.id)
        pv = providers.get(name)
        if pv is None:
            reason = Reason("unknown_provider", {"provider": name})
            out.extend(_note(j, reason) for j in group if j.state != CANCELLED)
            continue
        out.extend(_ProviderStep(group, pv, now, policy, rng, money).run())
    for name, pv in providers.items():
        if name not in grouped and pv.jobs is not None:
            out.extend(_quotes(pv))
    return [d for d in out if d is not None]


class _Money:
    """What is left to commit during one tick, across all providers."""

    def __init__(self, budget: Budget, left: float | None):
        self.budget, self.left = budget, left

    def refuse(self, job: JobView) -> Reason | None:
        return self.budget.refuse(job.estimated_cost, self.left)

    def commit(self, job: JobView) -> None:
        if self.left is not None:
            self.left -= job.estimated_cost or 0.0


def _quotes(pv: ProviderView) -> list[Decision]:
    by_id = {pj.id: pj for pj in pv.jobs or ()}
    out: list[Decision] = []
    for quote_id in pv.pending_quotes:
        pj = by_id.get(quote_id)
        if pj is not None and pj.active:
            out.append(CancelQuote(pv.name, quote_id))
        elif quote_id in by_id or quote_id in pv.missing:
            out.append(QuoteSettled(pv.name, quote_id))
    return out


class _ProviderStep:
    def __init__(self, jobs: Sequence[JobView], pv: ProviderView, now: datetime, policy: Policy,
                 rng: random.Random, money: _Money):
        self.jobs, self.pv, self.now, self.policy, self.rng = jobs, pv, now, policy, rng
        self.money = money
        self.out: list[Decision | None] = []
        # (provider job id, client token) of each of our jobs still holding a slot
        self.inflight: list[tuple[str | None, str | None]] = []
        self.capacity_hit = False

    def run(self) -> list[Decision | None]:
        pv = self.pv
        if pv.jobs is None:
            return self._unobserved()
        paused = False
        if pv.paused_why:
            if pv.paused_until is not None and self.now < pv.paused_until:
                paused = True
            else:
                self.out.append(ProviderUpdate(pv.name, paused_why=None, paused_message=None, paused_until=None))
        limit = effective_limit(pv, self.now, self.policy)
        if pv.learned_limit and limit == pv.configured_limit:
            self.out.append(ProviderUpdate(pv.name, learned_limit=None, learned_at=None))

        by_id = {pj.id: pj for pj in pv.jobs}
        by_token = {pj.client_token: pj for pj in pv.jobs if pj.client_token}
        for job in self.jobs:
            if job.state == CANCELLED:
                self._cancelled(job, by_id, by_token)
            elif job.state in IN_FLIGHT:
                self._in_flight(job, by_id, by_token)

        if self.capacity_hit:
            still_active = sum(1 for pj in pv.jobs if pj.active and pj.id not in pv.quote_ids)
            learned = max(1, min(limit, still_active))
            self.out.append(ProviderUpdate(pv.name, learned_limit=learned, learned_at=self.now))
            limit = learned

        self._admit(limit, paused)
        self.out.extend(_quotes(pv))
        return self.out

    # -- when the provider could not be listed -----------------------------------

    def _unobserved(self) -> list[Decision | None]:
        err = self.pv.error
        if err is not None:
            self.out.append(pause_for(err, self.pv.name, self.now, self.policy))
        reason = error_reason(err)
        for job in self.jobs:
            if job.state != CANCELLED:
                self.out.append(_note(job, reason))
        return self.out

    # -- jobs that hold a slot --------------------------------------------------

    def _cancelled(self, job: JobView, by_id: dict, by_token: dict) -> None:
        pj = by_id.get(job.provider_job_id) if job.provider_job_id else by_token.get(job.client_token)
        if pj is not None and pj.active:
            self.out.append(CancelAtProvider(job.id, pj.id))
        elif pj is not None or not job.provider_job_id or job.provider_job_id in self.pv.missing:
            # finished at the provider already, or never created there
            updates: dict[str, Any] = {"cancel_pending": False}
            if pj is not None:
                updates["provider_job_id"] = pj.id
                updates["provider_status"] = pj.raw_status
            self.out.append(Note(job.id, job.state, updates))

    def _in_flight(self, job: JobView, by_id: dict, by_token: dict) -> None:
        if job.provider_job_id:
            pj = by_id.get(job.provider_job_id)
        else:
            pj = by_token.get(job.client_token) if job.client_token else None
        if pj is None:
            self._not_listed(job)
            return
        bound = {} if job.provider_job_id == pj.id else {"provider_job_id": pj.id}
        if pj.status == P_QUEUED or (pj.status == P_RUNNING and job.state == RUNNING):
            self.inflight.append((pj.id, job.client_token))
            reason = Reason("queued_at" if pj.status == P_QUEUED else "training", {"status": pj.raw_status})
            self.out.append(_note(job, reason, provider_status=pj.raw_status, **bound))
        elif pj.status == P_RUNNING:
            self.inflight.append((pj.id, job.client_token))
            self.out.append(Transition(job.id, job.state, "start", Reason("training", {"status": pj.raw_status}),
                                       bound, provider_status=pj.raw_status))
        elif pj.status == P_SUCCEEDED:
            updates = {**bound, "fine_tuned_model": pj.fine_tuned_model, "actual_cost": pj.cost,
                       "trained_tokens": pj.trained_tokens, "not_before": None, "last_error": None}
            self.out.append(Transition(job.id, job.state, "succeed", None, updates,
                                       provider_status=pj.raw_status, attempt_outcome=("succeeded", True)))
        elif pj.status == P_CANCELLED:
            self.out.append(Transition(job.id, job.state, "cancel", Reason("cancelled_provider"), bound,
                                       provider_status=pj.raw_status, attempt_outcome=("cancelled", True)))
        elif pj.status == P_FAILED:
            message = pj.message or pj.raw_status
            if pj.failure == FAIL_CAPACITY:
                self.capacity_hit = True
                self.out.append(_capacity_requeue(job, message, pj.raw_status))
            elif pj.failure == FAIL_DATA:
                self.out.append(Transition(job.id, job.state, "fail", Reason("rejected_data", {"message": message}),
                                           {**bound, "last_error": message}, provider_status=pj.raw_status,
                                           attempt_outcome=("rejected", True)))
            else:
                self._retry_or_fail(job, f"training failed: {message}", outcome="failed",
                                    provider_status=pj.raw_status)

    def _not_listed(self, job: JobView) -> None:
        pv = self.pv
        if job.provider_job_id:
            if job.provider_job_id in pv.missing:
                self._retry_or_fail(job, f"the provider no longer knows job {job.provider_job_id}", outcome="lost")
                return
            self.inflight.append((job.provider_job_id, job.client_token))
            self.out.append(_note(job, Reason("not_listed")))
            return
        # an intent without a provider id, and no job with its token listed
        self.inflight.append((None, job.client_token))
        if job.intent_at is not None:
            settled = job.intent_at + timedelta(seconds=pv.settle)
            if pv.listed_at is None or pv.listed_at < settled:
                # the first call may still land: never create again before a
                # listing read after that moment shows nothing
                message = job.last_error or "no answer to the create call"
                self.out.append(_note(job, Reason("create_unknown", {"message": message,
                                                                     "until": settled.isoformat()})))
                return
        if job.not_before and self.now < job.not_before:
            return
        self.out.append(Submit(job.id, job.client_token))

    def _retry_or_fail(self, job: JobView, why: str, *, outcome: str, provider_status: str | None = None) -> None:
        self.out.append(retry_or_fail(job, why, self.now, self.policy, self.rng, outcome=outcome,
                                      provider_status=provider_status))

    # -- admission ----------------------------------------------------------------

    def _admit(self, limit: int, paused: bool) -> None:
        pv = self.pv
        ids = {i for i, _ in self.inflight if i}
        tokens = {t for _, t in self.inflight if t}
        foreign = sum(1 for pj in pv.jobs if pj.active and pj.id not in ids and pj.id not in pv.quote_ids
                      and (not pj.client_token or pj.client_token not in tokens))
        used = len(self.inflight) + foreign
        waiting = [j for j in self.jobs if j.state == PREPARED]
        waiting.sort(key=lambda j: (j.created_at or self.now, j.id))
        told_to_wait = 0
        for job in waiting:
            if job.attempt >= self.policy.max_attempts:
                why = job.last_error or "no attempts left"
                self.out.append(Transition(job.id, job.state, "fail",
                                           Reason("attempts_exhausted", {"attempts": job.attempt, "why": why}), {}))
                continue
            if job.not_before and self.now < job.not_before:
                continue  # its reason says until when it backs off
            if paused:
                self.out.append(_note(job, Reason("paused", {"why": pv.paused_why, "message": pv.paused_message})))
                continue
            over = self.money.refuse(job)
            if over:
                self.out.append(_note(job, over))
            elif used < limit:
                used += 1
                self.money.commit(job)
                self.out.append(Submit(job.id))
            else:
                told_to_wait += 1
                self.out.append(_note(job, Reason("slot", {"provider": pv.name})))
        self.out.append(Slots(pv.name, used, limit, told_to_wait))


def _capacity_requeue(job: JobView, message: str, status: str) -> Transition:
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


# -- what follows a provider call ------------------------------------------------------


def begin_submit(job: JobView, token: str, now: datetime) -> Transition:
    """prepared -> queued with a fresh client token, stored before the create call."""
    updates = {"attempt": job.attempt + 1, "client_token": token, "intent_at": now, "provider_job_id": None,
               "not_before": None, "provider_status": None, "last_error": None}
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
    pause = pause_for(err, job.provider, arrived_at, policy)
    if pause is not None:
        reason = Reason("paused", {"why": pause.paused_why, "message": err.message})
        return [Transition(job.id, QUEUED, "requeue", reason, uncounted, attempt_outcome=(err.kind, False)), pause]
    if isinstance(err, PermanentError):
        return [Transition(job.id, QUEUED, "fail", Reason("refused", {"message": err.message}),
                           {"last_error": err.message}, attempt_outcome=("rejected", True))]
    # transient, or the provider lost a file: the job keeps its token and
    # tries again from the answer's arrival (Retry-After counts from there)
    until = arrived_at + timedelta(seconds=_retry_delay(err, job.attempt, policy, rng))
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
        return [pause, _note(job, Reason("paused", {"why": pause.paused_why, "message": err.message}))]
    if isinstance(err, PermanentError):
        return [Transition(job.id, PREPARED, "fail", Reason("rejected_data", {"message": err.message}),
                           {"last_error": err.message})]
    until = arrived_at + timedelta(seconds=_retry_delay(err, job.attempt + 1, policy, rng))
    reason = Reason("upload_retry", {"message": err.message, "until": until.isoformat()})
    return [d for d in (_note(job, reason, not_before=until, last_error=err.message),) if d]


def file_problem(job: JobView, reason: Reason) -> Transition:
    """The training file cannot be read, or changed since submit: nothing is sent."""
    return Transition(job.id, PREPARED, "fail", reason, {"last_error": reason.text()})


__all__ = ["CancelAtProvider", "CancelQuote", "Decision", "ForgetUpload", "JobState", "JobView", "Note", "Policy",
           "ProviderUpdate", "ProviderView", "QuoteSettled", "Slots", "Submit", "Transition", "after_create",
           "after_upload_error", "begin_submit", "decide", "effective_limit", "error_reason", "file_problem",
           "retry_or_fail"]
